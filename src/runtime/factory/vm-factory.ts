/**
 * The VM factory's operations outside a sandbox start: `kata-runtime factory init | status | destroy`.
 */
import { errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { HypervisorFactory, VmConfig, VmDevice } from '../../hypervisor/hypervisor.js';
import { KATA_SHARED_TAG, SHARE_FS_DEVICE_ID } from '../../resource/sharefs/share-fs.js';
import type { RuntimeConfig } from '../config/types.js';
import { sandboxVmConfig } from '../vm-config.js';
import { describeMismatch, templateIneligibility, templateKey } from './template-key.js';
import { TemplateStore, type DestroyResult, type StoreMount, type TemplateListing, type TemplateMeta } from './template-store.js';
import { buildBudgetMs, obtainTemplate } from './template-vm-source.js';

/**
 * The VM config a sandbox of this configuration would start, as far as a template is concerned (what
 * Sandbox.create builds, with placeholder per-sandbox paths). If the two ever drift apart, the sandbox's key
 * differs and it builds its own template: a wasted `factory init`, never a wrong clone.
 */
export function sandboxVmConfigFor(config: RuntimeConfig, accel: VmConfig['accel']): VmConfig {
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
  return sandboxVmConfig('factory', vmDir, config, [share], accel);
}

export interface InitResult {
  meta: TemplateMeta;
  dir: string;
  /** False when a matching template already existed. */
  built: boolean;
}

/** `factory init`: makes sure the template for this configuration exists. */
export async function initTemplate(
  config: RuntimeConfig,
  accel: VmConfig['accel'],
  hypervisors: HypervisorFactory,
  opts: { signal?: AbortSignal },
  log: Logger,
): Promise<InitResult> {
  if (!config.factory.enableTemplate) {
    throw errors.precondition('KATA_TEMPLATE_DISABLED', 'VM templates are not enabled ([factory] enable_template = false)');
  }
  const vmConfig = sandboxVmConfigFor(config, accel);
  const why = templateIneligibility(vmConfig);
  if (why) throw errors.precondition('KATA_TEMPLATE_UNSUPPORTED', `VM templates cannot be used: ${why}`);
  const { template, built } = await obtainTemplate(vmConfig, config, hypervisors, { ...opts, retryFailedBuild: true }, log);
  await template.release();
  return { meta: template.meta, dir: template.dir, built };
}

export interface TemplateStatus {
  enabled: boolean;
  templatePath: string;
  lockPath: string;
  mount: StoreMount;
  templates: TemplateListing[];
  /** The key this configuration needs, or why it has none. */
  currentKey?: string;
  currentKeyProblem?: string;
  /** A complete template for the current configuration exists. */
  matches: boolean;
  /** For templates of other keys: what differs from the current configuration. */
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
    matches: false,
    differences: {},
  };
  try {
    const vmConfig = sandboxVmConfigFor(config, accel);
    const why = templateIneligibility(vmConfig);
    if (why) throw errors.precondition('KATA_TEMPLATE_UNSUPPORTED', why);
    const { key, inputs } = templateKey(vmConfig);
    status.currentKey = key;
    for (const t of status.templates) {
      if (!t.meta) continue;
      if (t.meta.key === key && !t.problem) status.matches = true;
      else if (t.meta.key !== key) status.differences[t.dir] = describeMismatch(t.meta.inputs, inputs);
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
