/**
 * The fast path (Kata's `BootFromTemplate`): a sandbox's VM is started as a copy-on-write clone of a
 * template VM in which the guest kernel and agent already run. QEMU starts with the sandbox's own command
 * line, except that guest RAM is the template's memory file mapped privately (`share=off`: pages stay
 * shared until the clone writes them) and the device state is loaded from the template's state file; then
 * the clone is resumed. The sandbox goes on as after a cold boot: it dials the agent (a new host connection
 * for it), reseeds the guest RNG, sets the clock and creates the sandbox (hostname, 9p share mount).
 *
 * The first sandbox that finds no template for its configuration builds one (under a lock: concurrent
 * starters wait for it and then clone). Whatever prevents a clone falls back to a cold boot, with the reason.
 */
import { errors, isKind, KataError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { Hypervisor, HypervisorFactory, VmConfig } from '../../hypervisor/hypervisor.js';
import type { RuntimeConfig } from '../config/types.js';
import { coldBoot, type StartedVm, type VmSource } from '../vm-source.js';
import { buildTemplate } from './template-builder.js';
import { templateIneligibility, templateKey, templateNicMac } from './template-key.js';
import { BUILD_RETRY_AFTER_MS, TemplateStore, type PinnedTemplate, type TemplateMeta } from './template-store.js';

export interface TemplateVmSourceOptions {
  /** Passed to the builder (time for the template's agent to see the host disconnect). */
  settleMs?: number;
  /** Passed to the builder (run a sandbox start's agent calls once in the template; default true). */
  warmUp?: boolean;
}

/** Extra time for pausing and saving the template, on top of boot and agent timeouts. */
const SAVE_BUDGET_MS = 30_000;

/** Budget of a whole template build: also how long a starter waits for another's build before booting cold. */
export function buildBudgetMs(config: RuntimeConfig): number {
  return config.hypervisor.bootTimeoutSec * 1000 + config.agent.dialTimeoutSec * 1000 + SAVE_BUDGET_MS;
}

/**
 * Pins the template for `vmConfig`, building it first when there is none (or it is stale). Returns whether
 * this call built it.
 */
export async function obtainTemplate(
  vmConfig: VmConfig,
  config: RuntimeConfig,
  hypervisors: HypervisorFactory,
  opts: { signal?: AbortSignal; settleMs?: number; warmUp?: boolean; retryFailedBuild?: boolean },
  log: Logger,
): Promise<{ template: PinnedTemplate; built: boolean }> {
  const id = templateKey(vmConfig);
  const { key } = id;
  const store = new TemplateStore(config.factory.templatePath, log);
  const first = await store.pin(key);
  if (first.kind === 'pinned') return { template: first.template, built: false };

  const budget = buildBudgetMs(config);
  const lock = await store.lock({ timeoutMs: budget, signal: opts.signal });
  try {
    // Someone else may have built it while we waited for the lock.
    const again = await store.pin(key);
    if (again.kind === 'pinned') return { template: again.template, built: false };
    const failed = opts.retryFailedBuild ? undefined : await store.recentFailure(key);
    if (failed) {
      throw errors.unavailable('KATA_TEMPLATE_BUILD_FAILED', `building the template failed at ${failed.at} (retried after ${BUILD_RETRY_AFTER_MS / 60_000} min, or by factory init): ${failed.reason}`);
    }
    if (again.kind === 'invalid') log.warn({ reason: again.reason, key }, 'template unusable; rebuilding it');
    // Templates of other configurations go (clones of them keep running); those of this configuration
    // with other NICs stay.
    await store.prune(id);
    await store.remove(key);
    await store.prepare(vmConfig.memoryMiB);
    try {
      await buildTemplate(
        store,
        id,
        vmConfig,
        hypervisors,
        {
          bootTimeoutMs: config.hypervisor.bootTimeoutSec * 1000,
          dialTimeoutMs: config.agent.dialTimeoutSec * 1000,
          settleMs: opts.settleMs,
          warmUp: opts.warmUp,
          signal: opts.signal,
        },
        log,
      );
    } catch (err) {
      if (!isKind(err, 'Cancelled')) await store.recordFailure(key, (err as Error).message);
      throw err;
    }
    await store.clearFailure(key);
    const built = await store.pin(key);
    if (built.kind !== 'pinned') {
      throw errors.internal('KATA_TEMPLATE_BROKEN', `template ${key.slice(0, 16)} unusable right after building it: ${built.kind === 'invalid' ? built.reason : 'missing'}`);
    }
    return { template: built.template, built: true };
  } finally {
    await lock.release();
  }
}

/** The clone's config: the sandbox's own command line, RAM from the template file (private), state loaded. */
export function cloneConfig(vmConfig: VmConfig, template: Pick<PinnedTemplate, 'memoryPath' | 'statePath'>): VmConfig {
  return {
    ...vmConfig,
    memoryBackend: { kind: 'file', path: template.memoryPath, share: false },
    incomingStatePath: template.statePath,
  };
}

/**
 * The VM source for a runtime configuration: clones from a template when `[factory] enable_template` is on
 * (building the template on demand), a cold boot otherwise or when a clone is not possible.
 */
export function templateVmSource(hypervisors: HypervisorFactory, options: TemplateVmSourceOptions = {}): VmSource {
  const cold = coldBoot(hypervisors);
  return {
    async start(vmConfig, config, opts, log): Promise<StartedVm> {
      const coldWith = async (reason: string | undefined): Promise<StartedVm> => {
        const started = await cold.start(vmConfig, config, opts, log);
        return reason ? { ...started, fallbackReason: reason } : started;
      };
      if (!config.factory.enableTemplate) {
        return coldWith(config.factory.vmCacheNumber > 0 ? 'vm_cache_number > 0: the VM cache is not implemented by kata-ts' : undefined);
      }
      if (config.factory.vmCacheNumber > 0) log.warn({ vmCacheNumber: config.factory.vmCacheNumber }, 'vm_cache_number > 0: the VM cache is not implemented by kata-ts; cloning from the template');
      const ineligible = templateIneligibility(vmConfig);
      if (ineligible) return coldWith(ineligible);

      let template: PinnedTemplate;
      try {
        ({ template } = await obtainTemplate(vmConfig, config, hypervisors, { signal: opts.signal, settleMs: options.settleMs, warmUp: options.warmUp }, log));
      } catch (err) {
        if (isKind(err, 'Cancelled')) throw err;
        log.warn({ err }, 'no VM template');
        return coldWith(`no template: ${(err as Error).message}`);
      }

      let hv: Hypervisor | undefined;
      try {
        hv = hypervisors.create(cloneConfig(vmConfig, template), log);
        opts.onCreated(hv);
        await hv.start({ timeoutMs: opts.timeoutMs, signal: opts.signal });
        // QEMU has mapped the RAM and read the state: the template may now go away without harm.
        await template.release();
        await hv.resume();
      } catch (err) {
        await template.release();
        // A clone left paused must not hold the sandbox's QMP and agent socket paths for the cold boot.
        await hv?.kill().catch(() => undefined);
        if (isKind(err, 'Cancelled')) throw err;
        log.warn({ err }, 'starting a clone of the VM template failed');
        if (err instanceof KataError && err.code === 'KATA_VM_RESTORE_FAILED') {
          await invalidate(config, template.meta, log);
        }
        return coldWith(`clone start failed: ${(err as Error).message}`);
      }
      log.debug({ template: template.dir }, 'VM cloned from template');
      const guestNicMacs = new Map(vmConfig.devices.flatMap((d) => (d.kind === 'net-tap' ? [[d.mac.toLowerCase(), templateNicMac(d.id)] as const] : [])));
      return { hypervisor: hv, origin: 'template', guestNicMacs };
    },
  };
}

/** A template whose state does not load is removed (if it is still the same build) so the next start rebuilds. */
async function invalidate(config: RuntimeConfig, meta: TemplateMeta, log: Logger): Promise<void> {
  const store = new TemplateStore(config.factory.templatePath, log);
  try {
    const lock = await store.lock({ timeoutMs: 5_000 });
    try {
      const now = await store.pin(meta.key);
      if (now.kind === 'pinned') {
        const same = now.template.meta.createdAt === meta.createdAt;
        await now.template.release();
        if (!same) return;
      }
      await store.remove(meta.key);
      log.warn({ key: meta.key }, 'template removed: its state did not load');
    } finally {
      await lock.release();
    }
  } catch (err) {
    log.warn({ err }, 'could not remove the broken template');
  }
}
