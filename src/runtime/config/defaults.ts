import type { AgentConfig, FactoryConfig, QemuConfig, RuntimeOptions } from './types.js';

/**
 * Values used for keys the file leaves out. Kata's shipped x86 QEMU defaults, except where this machine kind
 * (TCG only, no vhost-vsock, see PLATFORM.md) needs otherwise; each exception says why.
 */

export const KATA_ASSET_DIR = '/usr/share/kata-containers';

/**
 * 512 MiB, not Kata's 2048: under TCG a bigger `-m` costs 0.1 to 0.2 s of boot, the memfd/template file in
 * tmpfs is sized by it, and the guest (Node agent about 40 MB RSS plus crun) fits with room for small pods.
 */
export const DEFAULT_MEMORY_MIB = 512;
export const MIN_MEMORY_MIB = 64;
/** Kata's default when `memory_slots` is 0. */
export const DEFAULT_MEMORY_SLOTS = 10;
/** Kata's default and QEMU's largest virtqueue. */
export const DEFAULT_VIRTIO_FS_QUEUE_SIZE = 1024;

export function defaultHypervisorConfig(): QemuConfig {
  return {
    hypervisorKind: 'qemu',
    path: '/usr/bin/qemu-system-x86_64',
    kernel: `${KATA_ASSET_DIR}/vmlinux.container`,
    // Both: Debian's kernel has every driver as a module, so the initrd loads them before the image is mounted.
    image: `${KATA_ASSET_DIR}/kata-containers.img`,
    initrd: `${KATA_ASSET_DIR}/kata-containers-initrd.img`,
    rootfsType: 'ext4',
    // microvm, not Kata's q35: it boots in 1.4 s wall against 1.7 s (PVH vmlinux, TCG); it has no hotplug.
    machineType: 'microvm',
    accel: 'auto',
    // QMP answers well under 2 s even on a loaded 2-core machine; 30 s is ample and leaves the agent its
    // own `dial_timeout`.
    bootTimeoutSec: 30,
    kernelParams: ['cgroup_no_v1=all', 'systemd.unified_cgroup_hierarchy=1'],
    defaultVcpus: 1,
    defaultMaxVcpus: 0,
    defaultMemoryMiB: DEFAULT_MEMORY_MIB,
    defaultMaxMemoryMiB: 0,
    memorySlots: DEFAULT_MEMORY_SLOTS,
    sharedFs: 'virtio-fs',
    // Debian's QEMU ships the C virtiofsd here (Kata's /usr/libexec/virtiofsd does not exist on Debian 12).
    virtioFsDaemon: '/usr/lib/qemu/virtiofsd',
    validVirtioFsDaemonPaths: ['/usr/lib/qemu/virtiofsd', '/usr/libexec/virtiofsd'],
    // `always`, not Kata's `auto`: with `auto` the guest drops its page cache on every open, so each run of a
    // large binary from the share is read again (1.4 to 1.8 s for node).
    virtioFsCache: 'always',
    virtioFsCacheSizeMiB: 0,
    virtioFsQueueSize: DEFAULT_VIRTIO_FS_QUEUE_SIZE,
    // Kata passes `--thread-pool-size=1 --announce-submounts` to the Rust virtiofsd; the C virtiofsd spells
    // options differently (`-o ...`), so nothing extra by default.
    virtioFsExtraArgs: [],
    msize9p: 8192,
    // virtio-blk, not Kata's virtio-scsi: measured here, and microvm has no PCI for a SCSI controller.
    blockDeviceDriver: 'virtio-blk',
    // threads, not Kata's io_uring: the measured setting on this machine kind.
    blockDeviceAio: 'threads',
    disableBlockDeviceUse: true,
    enableDebug: false,
    enableAnnotations: ['enable_iommu', 'kernel_params', 'kernel_verity_params'],
    validHypervisorPaths: ['/usr/bin/qemu-system-x86_64'],
    validAssetPaths: [`${KATA_ASSET_DIR}/*`],
    entropySource: '/dev/urandom',
    validEntropySources: ['/dev/urandom', '/dev/random'],
    disableVhostNet: false,
  };
}

export function defaultAgentConfig(): AgentConfig {
  return {
    enableDebug: false,
    enableTracing: false,
    kernelModules: [],
    debugConsoleEnabled: false,
    dialTimeoutSec: 45,
    agentChannel: 'auto',
  };
}

export function defaultRuntimeOptions(): RuntimeOptions {
  return {
    enableDebug: false,
    internetworkingModel: 'tcfilter',
    disableGuestSeccomp: true,
    disableNewNetns: false,
    sandboxCgroupOnly: false,
    staticSandboxResourceMgmt: false,
    createContainerTimeoutSec: 60,
    enablePprof: false,
    experimental: [],
    sandboxBindMounts: [],
    disableGuestEmptyDir: true,
    emptydirMode: 'shared-fs',
  };
}

export function defaultFactoryConfig(): FactoryConfig {
  return {
    enableTemplate: false,
    templatePath: '/run/vc/vm/template',
    vmCacheNumber: 0,
    vmCacheEndpoint: '/var/run/kata-containers/cache.sock',
  };
}
