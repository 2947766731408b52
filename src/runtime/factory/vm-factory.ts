/**
 * The VM factory's operations outside a sandbox start: `kata-runtime factory init | status | destroy`.
 */
import { errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { HypervisorFactory, VmConfig, VmDevice } from '../../hypervisor/hypervisor.js';
import { KATA_SHARED_TAG, SHARE_FS_DEVICE_ID } from '../../resource/sharefs/share-fs.js';
import type { RuntimeConfig } from '../config/types.js';
import { sandboxVmConfig } from '../vm-config.js';
import { vmDeviceId } from '../../resource/network/endpoint.js';
import { tapName } from '../../resource/network/tc-filter-endpoint.js';
import { describeMismatch, templateIneligibility, templateKey, templateNicMac } from './template-key.js';
import { TemplateStore, type DestroyResult, type StoreMount, type TemplateListing, type TemplateMeta } from './template-store.js';
import { buildBudgetMs, obtainTemplate } from './template-vm-source.js';

/**
 * The shapes `factory init` prepares: a pod without network (`kata-runtime run`, `ctr run`) and a pod with
 * one interface (every CRI pod). Other shapes (more NICs, other sizes) get their template on first use.
 */
export const TEMPLATE_VARIANTS = [
  { name: 'no network', nics: 0 },
  { name: 'one network interface', nics: 1 },
] as const;

/**
 * The VM config a sandbox of this configuration with `nics` interfaces would start, as far as a template
 * is concerned (what Sandbox.create builds, with placeholder per-sandbox paths and MACs). If the two ever
 * drift apart, the sandbox's key differs and it builds its own template: a wasted `factory init`, never a
 * wrong clone.
 */
export function sandboxVmConfigFor(config: RuntimeConfig, accel: VmConfig['accel'], nics = 0): VmConfig {
  const hv = config.hypervisor;
  if (hv.sharedFs !== 'virtio-9p') {
    throw errors.precondition(
      'KATA_TEMPLATE_UNSUPPORTED',
      `VM templates need shared_fs = "virtio-9p" (this configuration has ${JSON.stringify(hv.sharedFs)}): ` +
        'virtio-fs devices cannot be migrated by QEMU 7.2',
    );
  }
  const vmDir = '/run/vc/vm/factory';
  const share: VmDevice = { kind: '9p', id: SHARE_FS_DEVICE_ID, hostPath: '/run/kata-containers/shared/sandboxes/factory/shared', tag: KATA_SHARED_TAG, readonly: false };
  const nicDevices = Array.from({ length: nics }, (_, i): VmDevice => ({ kind: 'net-tap', id: vmDeviceId(i), ifname: tapName(i), mac: templateNicMac(vmDeviceId(i)) }));
  return sandboxVmConfig('factory', vmDir, config, [share, ...nicDevices], accel);
}

/** The VM config of each TEMPLATE_VARIANTS shape; throws when this configuration cannot use templates. */
function variantConfigs(config: RuntimeConfig, accel: VmConfig['accel']): { variant: string; vmConfig: VmConfig }[] {
  return TEMPLATE_VARIANTS.map((v) => {
    const vmConfig = sandboxVmConfigFor(config, accel, v.nics);
    const why = templateIneligibility(vmConfig);
    if (why) throw errors.precondition('KATA_TEMPLATE_UNSUPPORTED', `VM templates cannot be used: ${why}`);
    return { variant: v.name, vmConfig };
  });
}

export interface InitResult {
  variant: string;
  meta: TemplateMeta;
  dir: string;
  /** False when a matching template already existed. */
  built: boolean;
}

/** `factory init`: makes sure the templates for this configuration (TEMPLATE_VARIANTS) exist. */
export async function initTemplates(
  config: RuntimeConfig,
  accel: VmConfig['accel'],
  hypervisors: HypervisorFactory,
  opts: { signal?: AbortSignal },
  log: Logger,
): Promise<InitResult[]> {
  if (!config.factory.enableTemplate) {
    throw errors.precondition('KATA_TEMPLATE_DISABLED', 'VM templates are not enabled ([factory] enable_template = false)');
  }
  const out: InitResult[] = [];
  for (const v of variantConfigs(config, accel)) {
    const { template, built } = await obtainTemplate(v.vmConfig, config, hypervisors, { ...opts, retryFailedBuild: true }, log);
    await template.release();
    out.push({ variant: v.variant, meta: template.meta, dir: template.dir, built });
  }
  return out;
}

export interface TemplateStatus {
  enabled: boolean;
  templatePath: string;
  lockPath: string;
  mount: StoreMount;
  templates: TemplateListing[];
  /** The keys this configuration needs (per TEMPLATE_VARIANTS), or why it has none. */
  currentKeys: { variant: string; key: string }[];
  currentKeyProblem?: string;
  /** Per variant: a complete template for it exists. */
  matches: Record<string, boolean>;
  /** For templates of no current key: what differs from the closest variant of the configuration. */
  differences: Record<string, string[]>;
}

export async function templateStatus(config: RuntimeConfig, accel: VmConfig['accel'], log: Logger): Promise<TemplateStatus> {
  const store = new TemplateStore(config.factory.templatePath, log);
  const status: TemplateStatus = {
    enabled: config.factory.enableTemplate,
    templatePath: store.root,
    lockPath: store.lockPath,
    mount: await store.mountState(),
    templates: await store.list(),
    currentKeys: [],
    matches: {},
    differences: {},
  };
  try {
    const ids = variantConfigs(config, accel).map((v) => ({ variant: v.variant, ...templateKey(v.vmConfig) }));
    status.currentKeys = ids.map(({ variant, key }) => ({ variant, key }));
    for (const id of ids) status.matches[id.variant] = status.templates.some((t) => t.meta?.key === id.key && !t.problem);
    for (const t of status.templates) {
      if (!t.meta || ids.some((id) => id.key === t.meta!.key)) continue;
      // Compared with the variant of the same NIC count when there is one.
      const nics = t.meta.inputs.qemuArgs.filter((a) => a.startsWith('tap,')).length;
      const closest = ids[Math.min(nics, ids.length - 1)]!;
      status.differences[t.dir] = describeMismatch(t.meta.inputs, closest.inputs);
    }
  } catch (err) {
    status.currentKeyProblem = (err as Error).message;
  }
  return status;
}

/** `factory destroy`: removes the templates and unmounts the tmpfs. */
export function destroyTemplates(config: RuntimeConfig, opts: { signal?: AbortSignal }, log: Logger): Promise<DestroyResult> {
  const store = new TemplateStore(config.factory.templatePath, log);
  return store.destroy({ timeoutMs: buildBudgetMs(config), signal: opts.signal });
}
