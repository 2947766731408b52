/**
 * The runtime configuration, read from Kata's `configuration.toml`. Field names are camelCase versions of
 * Kata's snake_case keys (units added where Kata leaves them implicit); kata-ts's own keys are marked.
 * A loaded config is always complete and validated: every field holds a usable value.
 */

/** Which `[hypervisor.*]` section the file had. Only qemu runs on this machine kind. */
export type HypervisorKind = 'qemu' | 'firecracker' | 'clh';
export type MachineType = 'microvm' | 'q35' | 'pc';
/** kata-ts: `auto` tries KVM and falls back to TCG with a warning. */
export type Accel = 'auto' | 'kvm' | 'tcg';
export type SharedFs = 'virtio-fs' | 'virtio-9p' | 'none';
export type VirtioFsCache = 'auto' | 'always' | 'metadata' | 'never';
export type BlockDeviceDriver = 'virtio-blk' | 'virtio-scsi' | 'nvdimm';
export type BlockDeviceAio = 'threads' | 'native' | 'io_uring';
export type RootfsType = 'ext4' | 'xfs' | 'erofs';
/** kata-ts: `auto` prefers vsock and falls back to virtio-serial when vhost-vsock is missing. */
export type AgentChannelKind = 'auto' | 'virtio-serial' | 'vsock';
export type InternetworkingModel = 'tcfilter' | 'macvtap' | 'none';
export type EmptyDirMode = 'shared-fs' | 'block-encrypted';

/** `[hypervisor.qemu]` (or `[hypervisor.firecracker]` / `[hypervisor.clh]`, same shape). */
export interface QemuConfig {
  /** Which hypervisor section this came from. */
  hypervisorKind: HypervisorKind;
  /** `path`: the VMM binary. */
  path: string;
  /** `kernel`: uncompressed guest kernel (vmlinux with a PVH note boots fastest). */
  kernel: string;
  /** `image`: root filesystem image. kata-ts uses it together with `initrd`. */
  image?: string;
  /** `initrd`: initramfs. kata-ts's guest needs it to load modules before mounting `image`. */
  initrd?: string;
  /** `rootfs_type`: filesystem of `image`. */
  rootfsType: RootfsType;
  /** `machine_type`. */
  machineType: MachineType;
  /** `accel` (kata-ts). */
  accel: Accel;
  /** `boot_timeout` (kata-ts): seconds from launching the VMM until the VM runs (QMP answers, clone resumed). */
  bootTimeoutSec: number;
  /** `kernel_params`, split on whitespace; appended after the driver's own parameters. */
  kernelParams: string[];
  /** `default_vcpus`, resolved: 0 becomes 1, negative or above the host's cores becomes the host's cores. */
  defaultVcpus: number;
  /** `default_maxvcpus`, resolved: 0 or above the host's cores becomes the host's cores. */
  defaultMaxVcpus: number;
  /** `default_memory`, MiB; 0 in the file means the default. */
  defaultMemoryMiB: number;
  /** `default_maxmemory`, MiB, resolved: 0 or above host RAM becomes host RAM. */
  defaultMaxMemoryMiB: number;
  /** `memory_slots`; 0 in the file means 10. */
  memorySlots: number;
  /** `shared_fs`. */
  sharedFs: SharedFs;
  /** `virtio_fs_daemon`. */
  virtioFsDaemon: string;
  /** `valid_virtio_fs_daemon_paths`: globs gating the `virtio_fs_daemon` annotation. */
  validVirtioFsDaemonPaths: string[];
  /** `virtio_fs_cache`. */
  virtioFsCache: VirtioFsCache;
  /** `virtio_fs_cache_size`: DAX window, MiB (0 = none; QEMU 7.2 has no DAX). */
  virtioFsCacheSizeMiB: number;
  /** `virtio_fs_queue_size`: a power of two, at most 1024. */
  virtioFsQueueSize: number;
  /** `virtio_fs_extra_args`: passed to virtiofsd as they are. */
  virtioFsExtraArgs: string[];
  /** `msize_9p`, bytes. */
  msize9p: number;
  /** `block_device_driver`. */
  blockDeviceDriver: BlockDeviceDriver;
  /** `block_device_aio`. */
  blockDeviceAio: BlockDeviceAio;
  /** `disable_block_device_use`: never use block devices for container rootfs. */
  disableBlockDeviceUse: boolean;
  /** `enable_debug`. */
  enableDebug: boolean;
  /** `enable_annotations`: regexes (unanchored) that hypervisor annotation names must match. */
  enableAnnotations: string[];
  /** `valid_hypervisor_paths`: globs gating the `path` annotation. */
  validHypervisorPaths: string[];
  /** `valid_asset_paths` (kata-ts): globs gating the `kernel`, `image` and `initrd` annotations. */
  validAssetPaths: string[];
  /** `entropy_source`. */
  entropySource: string;
  /** `valid_entropy_sources`: globs gating the `entropy_source` annotation. */
  validEntropySources: string[];
  /** `disable_vhost_net`. */
  disableVhostNet: boolean;
}

/** The hypervisor section under a name that does not say "qemu". */
export type HypervisorConfig = QemuConfig;

/** `[agent.kata]`. */
export interface AgentConfig {
  /** `enable_debug`. */
  enableDebug: boolean;
  /** `enable_tracing`. */
  enableTracing: boolean;
  /** `kernel_modules`: each entry is "name param=value ...", loaded in the guest in this order. */
  kernelModules: string[];
  /** `debug_console_enabled`. */
  debugConsoleEnabled: boolean;
  /** `dial_timeout`: seconds to wait for the agent to answer after the VM starts. */
  dialTimeoutSec: number;
  /** `agent_channel` (kata-ts). */
  agentChannel: AgentChannelKind;
}

/** `[runtime]`. */
export interface RuntimeOptions {
  /** `enable_debug`. */
  enableDebug: boolean;
  /** `internetworking_model`. */
  internetworkingModel: InternetworkingModel;
  /** `disable_guest_seccomp`. */
  disableGuestSeccomp: boolean;
  /** `disable_new_netns`: only with `internetworking_model = "none"`. */
  disableNewNetns: boolean;
  /** `sandbox_cgroup_only`. */
  sandboxCgroupOnly: boolean;
  /** `static_sandbox_resource_mgmt`. */
  staticSandboxResourceMgmt: boolean;
  /** `create_container_timeout`, seconds. */
  createContainerTimeoutSec: number;
  /** `enable_pprof`. */
  enablePprof: boolean;
  /** `experimental`: feature names; kata-ts has no experimental features, so any entry is refused. */
  experimental: string[];
  /** `sandbox_bind_mounts`: host paths, optionally suffixed `:ro` or `:rw`. */
  sandboxBindMounts: string[];
  /** `disable_guest_empty_dir`. */
  disableGuestEmptyDir: boolean;
  /** `emptydir_mode`. */
  emptydirMode: EmptyDirMode;
}

/** `[factory]`. */
export interface FactoryConfig {
  /** `enable_template`. */
  enableTemplate: boolean;
  /** `template_path`. */
  templatePath: string;
  /** `vm_cache_number`. */
  vmCacheNumber: number;
  /** `vm_cache_endpoint`: unix socket path. */
  vmCacheEndpoint: string;
}

export interface RuntimeConfig {
  /** The file this came from (or a label such as `<defaults>`). */
  sourcePath: string;
  hypervisor: QemuConfig;
  agent: AgentConfig;
  runtime: RuntimeOptions;
  factory: FactoryConfig;
  /**
   * Kata keys, sections and annotations that were accepted and type-checked but that kata-ts does not act on,
   * e.g. `[hypervisor.qemu] enable_iommu`, `[netmon]`, `annotation io.katacontainers.config.hypervisor.enable_iommu`.
   * Callers log them once so that nothing is ignored silently.
   */
  ignoredKeys: string[];
}

/** What the host offers; resolves Kata's "0 means the host's" rules and caps annotations. */
export interface HostInfo {
  cpus: number;
  memoryMiB: number;
}
