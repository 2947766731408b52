import { cpus } from 'node:os';
import { errors } from '../base/errors.js';
import type { RuntimeConfig } from './config/types.js';

const MiB = 1024 * 1024;

/**
 * Sizes the VM from containerd's sandbox annotations (the pod's CPU quota/period and memory limit), on top of
 * the configured defaults, as Kata's static sandbox sizing does. kata-ts always sizes statically: microvm has no
 * CPU or memory hotplug. Values that cannot be honoured are refused clearly.
 */
export function sizeSandbox(config: RuntimeConfig, annotations: Record<string, string> = {}): RuntimeConfig {
  const num = (key: string): number => {
    const raw = annotations[`io.kubernetes.cri.${key}`];
    if (raw === undefined || raw === '') return 0;
    if (!/^-?\d+$/.test(raw)) throw errors.invalid('KATA_BAD_ANNOTATION', `annotation io.kubernetes.cri.${key}=${JSON.stringify(raw)} is not an integer`);
    return Number(raw);
  };
  const quota = num('sandbox-cpu-quota');
  const period = num('sandbox-cpu-period');
  const memory = num('sandbox-memory');
  let vcpus = config.hypervisor.defaultVcpus;
  if (quota > 0 && period > 0) vcpus += Math.ceil(quota / period);
  // Like Kata, vCPUs are capped at default_maxvcpus (at most the host's cores); the pod's cgroup quota in the
  // guest still limits it to what it asked for.
  vcpus = Math.min(vcpus, Math.min(config.hypervisor.defaultMaxVcpus || cpus().length, cpus().length));
  let memoryMiB = config.hypervisor.defaultMemoryMiB;
  if (memory > 0) memoryMiB += Math.ceil(memory / MiB);
  if (memoryMiB > config.hypervisor.defaultMaxMemoryMiB) {
    throw errors.invalid('KATA_SANDBOX_TOO_BIG', `pod needs ${memoryMiB} MiB (memory limit + default_memory), above the limit of ${config.hypervisor.defaultMaxMemoryMiB} MiB`);
  }
  return { ...config, hypervisor: { ...config.hypervisor, defaultVcpus: vcpus, defaultMemoryMiB: memoryMiB } };
}
