import { isAbsolute } from 'node:path';
import { compileGlob } from './glob.js';

/**
 * Every key kata-ts knows, per section, with its type and constraints. The loader and the annotation
 * overrides both read values through `readValue`, so a key means the same thing whichever way it arrives.
 */

export type ValueSpec =
  | { type: 'bool' }
  | { type: 'int'; min: number; max: number; powerOfTwo?: boolean }
  | { type: 'string'; oneOf?: readonly string[]; path?: 'absolute' | 'absolute-or-empty' }
  | { type: 'strings'; item?: 'regex' | 'glob' | 'bind-mount' | 'kernel-module' }
  /** A string split on whitespace (`kernel_params`). */
  | { type: 'params' };

export interface KeySpec {
  /** Kata's TOML key. */
  key: string;
  value: ValueSpec;
  /** The camelCase field it sets; absent for Kata keys kata-ts accepts but does not use. */
  field?: string;
  /**
   * Annotation behaviour: a different annotation name (Kata renames a few), `false` when no annotation may
   * set it (the gates themselves), or `'unsupported'` when the annotation exists in Kata but kata-ts refuses it.
   */
  annotation?: string | false | 'unsupported';
  /** For path-valued keys: the field holding the globs that an annotation's value must match. */
  gate?: string;
}

const bool: ValueSpec = { type: 'bool' };
const str: ValueSpec = { type: 'string' };
const strs: ValueSpec = { type: 'strings' };
const absPath: ValueSpec = { type: 'string', path: 'absolute' };
const optPath: ValueSpec = { type: 'string', path: 'absolute-or-empty' };
const globs: ValueSpec = { type: 'strings', item: 'glob' };
const U32 = 4294967295;
const u32: ValueSpec = { type: 'int', min: 0, max: U32 };
/** 4 TiB in MiB: beyond any machine this runs on, small enough to stay exact. */
const MAX_MEMORY_MIB = 4 * 1024 * 1024;

function table(specs: KeySpec[]): ReadonlyMap<string, KeySpec> {
  return new Map(specs.map((s) => [s.key, s]));
}

export const HYPERVISOR_KEYS = table([
  // Assets.
  { key: 'path', value: absPath, field: 'path', gate: 'validHypervisorPaths' },
  { key: 'kernel', value: absPath, field: 'kernel', gate: 'validAssetPaths' },
  { key: 'image', value: optPath, field: 'image', gate: 'validAssetPaths' },
  { key: 'initrd', value: optPath, field: 'initrd', gate: 'validAssetPaths' },
  { key: 'rootfs_type', value: { type: 'string', oneOf: ['ext4', 'xfs', 'erofs'] }, field: 'rootfsType' },
  { key: 'machine_type', value: { type: 'string', oneOf: ['microvm', 'q35', 'pc'] }, field: 'machineType' },
  { key: 'kernel_params', value: { type: 'params' }, field: 'kernelParams' },
  // kata-ts keys.
  { key: 'accel', value: { type: 'string', oneOf: ['auto', 'kvm', 'tcg'] }, field: 'accel' },
  { key: 'boot_timeout', value: { type: 'int', min: 1, max: 3600 }, field: 'bootTimeoutSec' },
  { key: 'valid_asset_paths', value: globs, field: 'validAssetPaths', annotation: false },
  // Sizing. Negative vCPUs mean "the host's cores" in Kata.
  { key: 'default_vcpus', value: { type: 'int', min: -2147483648, max: 2147483647 }, field: 'defaultVcpus' },
  { key: 'default_maxvcpus', value: u32, field: 'defaultMaxVcpus', annotation: 'default_max_vcpus' },
  { key: 'default_memory', value: { type: 'int', min: 0, max: MAX_MEMORY_MIB }, field: 'defaultMemoryMiB' },
  { key: 'default_maxmemory', value: { type: 'int', min: 0, max: MAX_MEMORY_MIB }, field: 'defaultMaxMemoryMiB' },
  { key: 'memory_slots', value: { type: 'int', min: 0, max: 512 }, field: 'memorySlots' },
  // Shared filesystem.
  {
    key: 'shared_fs',
    value: { type: 'string', oneOf: ['virtio-fs', 'virtio-9p', 'none'] },
    field: 'sharedFs',
  },
  { key: 'virtio_fs_daemon', value: absPath, field: 'virtioFsDaemon', gate: 'validVirtioFsDaemonPaths' },
  { key: 'valid_virtio_fs_daemon_paths', value: globs, field: 'validVirtioFsDaemonPaths', annotation: false },
  {
    key: 'virtio_fs_cache',
    value: { type: 'string', oneOf: ['auto', 'always', 'metadata', 'never'] },
    field: 'virtioFsCache',
  },
  { key: 'virtio_fs_cache_size', value: { type: 'int', min: 0, max: 1048576 }, field: 'virtioFsCacheSizeMiB' },
  {
    key: 'virtio_fs_queue_size',
    value: { type: 'int', min: 0, max: 1024, powerOfTwo: true },
    field: 'virtioFsQueueSize',
  },
  { key: 'virtio_fs_extra_args', value: strs, field: 'virtioFsExtraArgs' },
  { key: 'msize_9p', value: { type: 'int', min: 4096, max: 1048576 }, field: 'msize9p' },
  // Block devices.
  {
    key: 'block_device_driver',
    value: { type: 'string', oneOf: ['virtio-blk', 'virtio-scsi', 'nvdimm'] },
    field: 'blockDeviceDriver',
  },
  {
    key: 'block_device_aio',
    value: { type: 'string', oneOf: ['threads', 'native', 'io_uring'] },
    field: 'blockDeviceAio',
  },
  { key: 'disable_block_device_use', value: bool, field: 'disableBlockDeviceUse' },
  // Debug, gates, devices.
  { key: 'enable_debug', value: bool, field: 'enableDebug' },
  { key: 'enable_annotations', value: { type: 'strings', item: 'regex' }, field: 'enableAnnotations', annotation: false },
  { key: 'valid_hypervisor_paths', value: globs, field: 'validHypervisorPaths', annotation: false },
  { key: 'entropy_source', value: absPath, field: 'entropySource', gate: 'validEntropySources' },
  { key: 'valid_entropy_sources', value: globs, field: 'validEntropySources', annotation: false },
  { key: 'disable_vhost_net', value: bool, field: 'disableVhostNet' },

  // Kata keys accepted and type-checked, not used by kata-ts.
  { key: 'firmware', value: optPath, annotation: 'unsupported' },
  { key: 'firmware_volume', value: optPath, annotation: 'unsupported' },
  { key: 'machine_accelerators', value: str },
  { key: 'seccompsandbox', value: str, annotation: 'unsupported' },
  { key: 'cpu_features', value: str },
  { key: 'kernel_verity_params', value: str },
  { key: 'default_bridges', value: { type: 'int', min: 0, max: 5 } },
  { key: 'memory_offset', value: { type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER } },
  { key: 'enable_virtio_mem', value: bool },
  { key: 'block_device_cache_set', value: bool },
  { key: 'block_device_cache_direct', value: bool },
  { key: 'block_device_cache_noflush', value: bool },
  { key: 'block_device_logical_sector_size', value: u32, annotation: 'blk_logical_sector_size' },
  { key: 'block_device_physical_sector_size', value: u32, annotation: 'blk_physical_sector_size' },
  { key: 'enable_iothreads', value: bool },
  { key: 'indep_iothreads', value: u32 },
  { key: 'disable_image_nvdimm', value: bool },
  { key: 'enable_mem_prealloc', value: bool },
  { key: 'reclaim_guest_freed_memory', value: bool },
  { key: 'enable_hugepages', value: bool },
  { key: 'enable_guest_swap', value: bool },
  { key: 'enable_vhost_user_store', value: bool },
  { key: 'vhost_user_store_path', value: optPath, annotation: 'unsupported' },
  { key: 'valid_vhost_user_store_paths', value: globs, annotation: false },
  { key: 'enable_iommu', value: bool },
  { key: 'enable_iommu_platform', value: bool },
  { key: 'enable_numa', value: bool },
  { key: 'hot_plug_vfio', value: str },
  { key: 'cold_plug_vfio', value: str },
  { key: 'pcie_root_port', value: u32 },
  { key: 'rx_rate_limiter_max_rate', value: { type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER } },
  { key: 'tx_rate_limiter_max_rate', value: { type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER } },
  { key: 'use_legacy_serial', value: bool },
  { key: 'extra_monitor_socket', value: { type: 'string', oneOf: ['', 'hmp', 'qmp', 'qmp-pretty'] }, annotation: false },
  { key: 'disable_nesting_checks', value: bool },
  { key: 'guest_hook_path', value: optPath, annotation: 'unsupported' },
  { key: 'disable_selinux', value: bool },
  { key: 'disable_guest_selinux', value: bool },
  { key: 'rootless', value: bool, annotation: false },
  { key: 'cc_init_data', value: str, annotation: 'unsupported' },
  // Firecracker's jailer.
  { key: 'jailer_path', value: optPath, annotation: 'unsupported' },
  { key: 'valid_jailer_paths', value: globs, annotation: false },
  // Keys of older Kata files (2.x, 1.x), still accepted so such files load.
  { key: 'enable_swap', value: bool },
  { key: 'file_mem_backend', value: optPath, annotation: 'unsupported' },
  { key: 'valid_file_mem_backends', value: globs, annotation: false },
  { key: 'hotplug_vfio_on_root_bus', value: bool },
  { key: 'confidential_guest', value: bool, annotation: false },
  { key: 'use_vsock', value: bool },
]);

export const AGENT_KEYS = table([
  { key: 'enable_debug', value: bool, field: 'enableDebug', annotation: false },
  { key: 'enable_tracing', value: bool, field: 'enableTracing' },
  { key: 'kernel_modules', value: { type: 'strings', item: 'kernel-module' }, field: 'kernelModules' },
  { key: 'debug_console_enabled', value: bool, field: 'debugConsoleEnabled', annotation: false },
  { key: 'dial_timeout', value: { type: 'int', min: 1, max: 3600 }, field: 'dialTimeoutSec', annotation: false },
  {
    key: 'agent_channel',
    value: { type: 'string', oneOf: ['auto', 'virtio-serial', 'vsock'] },
    field: 'agentChannel',
    annotation: false,
  },
  { key: 'cdh_api_timeout', value: u32, annotation: false },
  // Kata 2.x.
  { key: 'trace_mode', value: str, annotation: false },
  { key: 'trace_type', value: str, annotation: false },
]);

/** Kata agent annotations kata-ts refuses: a guest policy it would not enforce must not be accepted quietly. */
export const AGENT_UNSUPPORTED_ANNOTATIONS: ReadonlySet<string> = new Set(['policy', 'container_pipe_size']);

export const RUNTIME_KEYS = table([
  { key: 'enable_debug', value: bool, field: 'enableDebug', annotation: false },
  {
    key: 'internetworking_model',
    value: { type: 'string', oneOf: ['tcfilter', 'macvtap', 'none'] },
    field: 'internetworkingModel',
  },
  { key: 'disable_guest_seccomp', value: bool, field: 'disableGuestSeccomp' },
  { key: 'disable_new_netns', value: bool, field: 'disableNewNetns' },
  { key: 'sandbox_cgroup_only', value: bool, field: 'sandboxCgroupOnly' },
  { key: 'static_sandbox_resource_mgmt', value: bool, field: 'staticSandboxResourceMgmt', annotation: false },
  { key: 'create_container_timeout', value: { type: 'int', min: 1, max: 86400 }, field: 'createContainerTimeoutSec' },
  { key: 'enable_pprof', value: bool, field: 'enablePprof' },
  { key: 'experimental', value: strs, field: 'experimental' },
  { key: 'sandbox_bind_mounts', value: { type: 'strings', item: 'bind-mount' }, field: 'sandboxBindMounts', annotation: false },
  { key: 'disable_guest_empty_dir', value: bool, field: 'disableGuestEmptyDir', annotation: false },
  {
    key: 'emptydir_mode',
    value: { type: 'string', oneOf: ['shared-fs', 'block-encrypted'] },
    field: 'emptydirMode',
    annotation: false,
  },
  // Accepted, not used.
  { key: 'enable_vcpus_pinning', value: bool, annotation: false },
  { key: 'guest_selinux_label', value: str },
  { key: 'enable_tracing', value: bool, annotation: false },
  { key: 'jaeger_endpoint', value: str, annotation: false },
  { key: 'jaeger_user', value: str, annotation: false },
  { key: 'jaeger_password', value: str, annotation: false },
  { key: 'vfio_mode', value: { type: 'string', oneOf: ['guest-kernel', 'vfio'] } },
  { key: 'dan_conf', value: optPath, annotation: false },
  { key: 'kubelet_root_dir', value: optPath, annotation: false },
  { key: 'pod_resource_api_sock', value: optPath, annotation: false },
  // Kata 2.x.
  { key: 'service_offload', value: bool, annotation: false },
  { key: 'trace_mode', value: str, annotation: false },
  { key: 'trace_type', value: str, annotation: false },
]);

/** Kata runtime annotations kata-ts refuses (no such feature here). */
export const RUNTIME_UNSUPPORTED_ANNOTATIONS: ReadonlySet<string> = new Set(['experimental_force_guest_pull']);

export const FACTORY_KEYS = table([
  { key: 'enable_template', value: bool, field: 'enableTemplate', annotation: false },
  { key: 'template_path', value: absPath, field: 'templatePath', annotation: false },
  { key: 'vm_cache_number', value: { type: 'int', min: 0, max: 256 }, field: 'vmCacheNumber', annotation: false },
  { key: 'vm_cache_endpoint', value: absPath, field: 'vmCacheEndpoint', annotation: false },
]);

/** Sections of older Kata files that are accepted whole and ignored. */
export const LEGACY_SECTIONS: ReadonlySet<string> = new Set(['netmon', 'image', 'proxy.kata', 'shim.kata']);

/** Sets the field `spec` names; an empty optional path (`image = ""`) removes the field: the asset is off. */
export function setField(target: object, spec: KeySpec, value: unknown): void {
  const t = target as Record<string, unknown>;
  if (spec.value.type === 'string' && spec.value.path === 'absolute-or-empty' && value === '') {
    delete t[spec.field!];
  } else {
    t[spec.field!] = value;
  }
}

/** How a bad value is reported: the caller prefixes the location and picks the error code. */
export type Fail = (message: string) => never;

/** Checks `raw` (a TOML value, or an annotation already split into TOML-like types) against `spec`. */
export function readValue(spec: ValueSpec, raw: unknown, fail: Fail): unknown {
  switch (spec.type) {
    case 'bool':
      if (typeof raw !== 'boolean') fail(`expected true or false, got ${describe(raw)}`);
      return raw;
    case 'int':
      return readInt(spec, raw, fail);
    case 'string': {
      if (typeof raw !== 'string') fail(`expected a string, got ${describe(raw)}`);
      const s = raw as string;
      if (hasControlChars(s)) fail(`control characters are not allowed in ${describe(s)}`);
      if (spec.oneOf && !spec.oneOf.includes(s)) {
        fail(`expected one of ${spec.oneOf.map((v) => JSON.stringify(v)).join(', ')}, got ${describe(s)}`);
      }
      if (spec.path === 'absolute' || (spec.path === 'absolute-or-empty' && s !== '')) {
        if (!isAbsolute(s)) fail(`expected an absolute path, got ${describe(s)}`);
      }
      return s;
    }
    case 'strings': {
      if (!Array.isArray(raw)) fail(`expected an array of strings, got ${describe(raw)}`);
      const items = raw as unknown[];
      return items.map((item, i) => readItem(spec.item, item, (m) => fail(`[${i}]: ${m}`)));
    }
    case 'params': {
      if (typeof raw !== 'string') fail(`expected a string, got ${describe(raw)}`);
      const s = raw as string;
      // Whitespace (a multi-line TOML string) separates parameters; other control characters are refused.
      if (hasControlChars(s.replace(/[\t\n\r]/g, ' '))) fail(`control characters are not allowed in ${describe(s)}`);
      return s.split(/\s+/).filter((p) => p !== '');
    }
  }
}

function readInt(spec: { min: number; max: number; powerOfTwo?: boolean }, raw: unknown, fail: Fail): number {
  let n: bigint;
  // Integers arrive as bigint (the loader parses with integersAsBigInt; annotations convert digit strings),
  // so a TOML float such as 2.0 is told apart from 2.
  if (typeof raw === 'bigint') {
    n = raw;
  } else {
    // TOML floats arrive as numbers: 2.0 shows as "2.0" so the message does not look self-contradictory.
    const shown = typeof raw === 'number' && Number.isInteger(raw) ? raw.toFixed(1) : describe(raw);
    return fail(`expected an integer, got ${shown}`);
  }
  if (n < BigInt(spec.min) || n > BigInt(spec.max)) fail(`${n} is out of range (${spec.min} to ${spec.max})`);
  const v = Number(n);
  if (spec.powerOfTwo && v !== 0 && (v & (v - 1)) !== 0) fail(`${v} is not a power of two`);
  return v;
}

function readItem(item: (ValueSpec & { type: 'strings' })['item'], raw: unknown, fail: Fail): string {
  if (typeof raw !== 'string') fail(`expected a string, got ${describe(raw)}`);
  const s = raw as string;
  if (hasControlChars(s)) fail(`control characters are not allowed in ${describe(s)}`);
  switch (item) {
    case 'regex':
      try {
        new RegExp(s);
      } catch (err) {
        fail(`invalid regular expression ${describe(s)}: ${(err as Error).message}`);
      }
      break;
    case 'glob':
      if (!isAbsolute(s)) fail(`expected an absolute path pattern, got ${describe(s)}`);
      try {
        compileGlob(s);
      } catch (err) {
        fail((err as Error).message);
      }
      break;
    case 'bind-mount': {
      const hostPath = s.replace(/:(ro|rw)$/, '');
      if (!isAbsolute(hostPath)) fail(`expected an absolute path (optionally with :ro or :rw), got ${describe(s)}`);
      break;
    }
    case 'kernel-module': {
      const name = s.trim().split(/\s+/)[0] ?? '';
      if (!/^[A-Za-z0-9_-]+$/.test(name)) fail(`expected "module_name [param=value ...]", got ${describe(s)}`);
      break;
    }
    case undefined:
      break;
  }
  return s;
}

export function hasControlChars(s: string): boolean {
  return /[\u0000-\u001f\u007f]/.test(s);
}

/** A short, quoted rendering of a value for error messages. */
export function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 200 ? `${v.slice(0, 200)}...` : v);
  if (typeof v === 'bigint' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  if (v !== null && typeof v === 'object') return 'a table';
  return String(v);
}

/** The closest known name within edit distance 2, for "did you mean" hints. */
export function suggest(name: string, known: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}
