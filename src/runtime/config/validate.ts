import { availableParallelism, totalmem } from 'node:os';
import { DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_SLOTS, DEFAULT_VIRTIO_FS_QUEUE_SIZE, MIN_MEMORY_MIB } from './defaults.js';
import type { Fail } from './schema.js';
import type { HostInfo, RuntimeConfig } from './types.js';

export function currentHost(): HostInfo {
  return { cpus: availableParallelism(), memoryMiB: Math.floor(totalmem() / (1024 * 1024)) };
}

/** Kata's "0 means default / the host's" rules, applied once after the file is read. Mutates `config`. */
export function resolveHostDefaults(config: RuntimeConfig, host: HostInfo): void {
  const h = config.hypervisor;
  if (h.defaultMaxVcpus === 0 || h.defaultMaxVcpus > host.cpus) h.defaultMaxVcpus = host.cpus;
  if (h.defaultVcpus === 0) h.defaultVcpus = 1;
  if (h.defaultVcpus < 0 || h.defaultVcpus > host.cpus) h.defaultVcpus = host.cpus;
  if (h.defaultVcpus > h.defaultMaxVcpus) h.defaultVcpus = h.defaultMaxVcpus;
  if (h.defaultMaxMemoryMiB === 0 || h.defaultMaxMemoryMiB > host.memoryMiB) h.defaultMaxMemoryMiB = host.memoryMiB;
  if (h.defaultMemoryMiB === 0) h.defaultMemoryMiB = DEFAULT_MEMORY_MIB;
  if (h.memorySlots === 0) h.memorySlots = DEFAULT_MEMORY_SLOTS;
  if (h.virtioFsQueueSize === 0) h.virtioFsQueueSize = DEFAULT_VIRTIO_FS_QUEUE_SIZE;
}

/**
 * Checks that hold across keys. Messages name the section and key; `fail` adds the file (or "annotations").
 */
export function validateConfig(config: RuntimeConfig, fail: Fail): void {
  const h = config.hypervisor;
  const hv = `[hypervisor.${h.hypervisorKind}]`;
  if (h.kernel === '') fail(`${hv} kernel: a guest kernel is required`);
  if (!h.image && !h.initrd) fail(`${hv} image, initrd: at least one of them is required`);
  if (h.path === '') fail(`${hv} path: the hypervisor binary is required`);
  if (h.defaultVcpus < 1) fail(`${hv} default_vcpus: must be at least 1, got ${h.defaultVcpus}`);
  if (h.defaultVcpus > h.defaultMaxVcpus) {
    fail(`${hv} default_vcpus: ${h.defaultVcpus} is more than default_maxvcpus (${h.defaultMaxVcpus})`);
  }
  if (h.defaultMemoryMiB < MIN_MEMORY_MIB) {
    fail(`${hv} default_memory: ${h.defaultMemoryMiB} MiB is below the minimum of ${MIN_MEMORY_MIB} MiB`);
  }
  if (h.defaultMemoryMiB > h.defaultMaxMemoryMiB) {
    fail(`${hv} default_memory: ${h.defaultMemoryMiB} MiB is more than default_maxmemory (${h.defaultMaxMemoryMiB} MiB)`);
  }
  if (h.memorySlots < 1) fail(`${hv} memory_slots: must be at least 1, got ${h.memorySlots}`);
  if (h.virtioFsQueueSize < 1) fail(`${hv} virtio_fs_queue_size: must be at least 1, got ${h.virtioFsQueueSize}`);
  if (h.sharedFs === 'virtio-fs' && h.virtioFsDaemon === '') {
    fail(`${hv} virtio_fs_daemon: required when shared_fs = "virtio-fs"`);
  }
  const r = config.runtime;
  if (r.disableNewNetns && r.internetworkingModel !== 'none') {
    fail(`[runtime] disable_new_netns: only works with internetworking_model = "none", got "${r.internetworkingModel}"`);
  }
  if (r.experimental.length > 0) {
    fail(`[runtime] experimental: unknown experimental feature "${r.experimental[0]}" (kata-ts has none)`);
  }
}
