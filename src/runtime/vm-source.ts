import type { Logger } from '../base/logger.js';
import type { Hypervisor, HypervisorFactory, VmConfig } from '../hypervisor/hypervisor.js';
import type { RuntimeConfig } from './config/types.js';

/** How the sandbox's VM came to be: booted cold, or cloned from a template (and why not, when not). */
export interface StartedVm {
  hypervisor: Hypervisor;
  origin: 'cold-boot' | 'template';
  /** Why a template was not used, when one was configured. */
  fallbackReason?: string;
  /**
   * NICs whose guest MAC is not the configured one yet (a clone wakes up with its template's): configured MAC
   * (lower case) -> the MAC the guest NIC has now. The agent's UpdateInterface sets the configured one.
   */
  guestNicMacs?: Map<string, string>;
}

/**
 * Where a sandbox gets its running VM. The sandbox start sequence calls this one step; a cold boot and a
 * template clone (VM factory) are interchangeable behind it. The returned VM runs (a clone is resumed).
 * On failure the source has removed whatever it started.
 */
export interface VmSource {
  start(
    vmConfig: VmConfig,
    config: RuntimeConfig,
    opts: { timeoutMs: number; signal?: AbortSignal; onCreated: (hv: Hypervisor) => void },
    log: Logger,
  ): Promise<StartedVm>;
}

/** Boots the VM from kernel, initrd and image. */
export function coldBoot(hypervisors: HypervisorFactory): VmSource {
  return {
    async start(vmConfig, _config, opts, log) {
      const hv = hypervisors.create(vmConfig, log);
      opts.onCreated(hv);
      await hv.start({ timeoutMs: opts.timeoutMs, signal: opts.signal });
      return { hypervisor: hv, origin: 'cold-boot' };
    },
  };
}
