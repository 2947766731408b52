/**
 * The QEMU command line, built by one pure function from a VmConfig. No I/O here: everything host-dependent
 * (TSC frequency, accelerator verdict) is decided before and passed in.
 */
import path from 'node:path';
import { errors } from '../../base/errors.js';
import type { VmConfig, VmDevice } from '../hypervisor.js';

export type MachineType = VmConfig['machineType'];

export interface QemuArgsOptions {
  /** Host TSC frequency: becomes `tsc_early_khz=` (microvm hangs in ~1 boot of 5 without it). */
  tscKhz?: number;
  /** q35 only: spare PCIe root ports for hotplug, `rp0`..`rpN-1` (default 2). */
  hotplugPorts?: number;
  /** TCG only: `thread=single|multi`; QEMU's default when unset. */
  tcgThread?: 'single' | 'multi';
}

/** Files the driver keeps in vmDir. */
export interface QemuPaths {
  qmpSocket: string;
  consoleLog: string;
  pidFile: string;
  /** QEMU's own stdout/stderr. */
  qemuLog: string;
}

export function qemuPaths(vmDir: string): QemuPaths {
  return {
    qmpSocket: path.join(vmDir, 'qmp.sock'),
    consoleLog: path.join(vmDir, 'console.log'),
    pidFile: path.join(vmDir, 'qemu.pid'),
    qemuLog: path.join(vmDir, 'qemu.log'),
  };
}

/** Guest kernel parameters measured on this platform (PLATFORM.md): fastest boot to /init under TCG. */
export const TUNED_KERNEL_PARAMS: readonly string[] = [
  'console=ttyS0',
  'quiet',
  'nokaslr',
  'tsc=reliable',
  'no_timer_check',
  'mitigations=off',
  'cryptomgr.notests',
  'random.trust_cpu=on',
  'i8042.noaux',
  'i8042.nomux',
  'i8042.nopnp',
  'i8042.dumbkbd',
  'rcupdate.rcu_expedited=1',
  'audit=0',
];

/** ids the driver itself uses; device ids from the config must not collide with them. */
const RESERVED_IDS = new Set(['image', 'drive-image', 'qmp', 'console', 'agent', 'mem', 'serial0', 'vsock0']);
const DEFAULT_Q35_HOTPLUG_PORTS = 2;
const MAX_VCPUS = 255;
const MIN_MEMORY_MIB = 16;

type DeviceKind = 'blk' | 'serial' | 'fs' | '9p' | 'net' | 'vsock' | 'rng';

const DEVICE_DRIVERS: Record<DeviceKind, { mmio: string; pci: string }> = {
  blk: { mmio: 'virtio-blk-device', pci: 'virtio-blk-pci' },
  serial: { mmio: 'virtio-serial-device', pci: 'virtio-serial-pci' },
  fs: { mmio: 'vhost-user-fs-device', pci: 'vhost-user-fs-pci' },
  '9p': { mmio: 'virtio-9p-device', pci: 'virtio-9p-pci' },
  net: { mmio: 'virtio-net-device', pci: 'virtio-net-pci' },
  vsock: { mmio: 'vhost-vsock-device', pci: 'vhost-vsock-pci' },
  rng: { mmio: 'virtio-rng-device', pci: 'virtio-rng-pci' },
};

/** microvm has virtio-mmio transports only; pc and q35 have PCI. */
export function deviceDriver(machine: MachineType, kind: DeviceKind): string {
  return machine === 'microvm' ? DEVICE_DRIVERS[kind].mmio : DEVICE_DRIVERS[kind].pci;
}

export function supportsHotplug(machine: MachineType): boolean {
  return machine !== 'microvm';
}

/** Ids of the q35 root ports reserved for hotplug, in order. */
export function hotplugPortIds(config: Pick<VmConfig, 'machineType'>, opts: QemuArgsOptions = {}): string[] {
  if (config.machineType !== 'q35') return [];
  const n = opts.hotplugPorts ?? DEFAULT_Q35_HOTPLUG_PORTS;
  return Array.from({ length: n }, (_, i) => `rp${i}`);
}

/** Block node name behind a block device id (cold- and hot-plugged alike). */
export const blockNodeName = (id: string): string => `drive-${id}`;
export const netdevId = (id: string): string => `netdev-${id}`;
const fsdevId = (id: string): string => `fsdev-${id}`;
const chardevId = (id: string): string => `char-${id}`;

/** Escapes a value for QEMU's `key=value,...` option syntax: a comma is written twice. */
export function optValue(v: string): string {
  return v.replaceAll(',', ',,');
}

function opts(head: string, kv: [string, string | number | undefined][]): string {
  const parts = [head];
  for (const [k, v] of kv) if (v !== undefined) parts.push(`${k}=${optValue(String(v))}`);
  return parts.join(',');
}

function invalid(msg: string): Error {
  return errors.invalid('KATA_VM_CONFIG_INVALID', `invalid vm config: ${msg}`);
}

function checkAbsolute(what: string, p: string | undefined): void {
  if (typeof p !== 'string' || p === '' || !path.isAbsolute(p)) throw invalid(`${what} must be an absolute path, got ${JSON.stringify(p)}`);
  if (/[\0\n]/.test(p)) throw invalid(`${what} contains a NUL or newline`);
}

function checkInt(what: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) throw invalid(`${what} must be an integer in [${min}, ${max}], got ${v}`);
}

/** QEMU ids: a letter first, then letters, digits, '-', '.', '_'. */
const ID_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,99}$/;
const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

function hasSharedMemory(config: VmConfig): boolean {
  const mb = config.memoryBackend;
  return mb.kind === 'memfd' || (mb.kind === 'file' && mb.share);
}

/** Rejects configurations QEMU cannot run (or would run wrongly), before anything touches the host. */
export function validateVmConfig(config: VmConfig, opts: QemuArgsOptions = {}): void {
  if (!config.sandboxId || /[\0\n]/.test(config.sandboxId)) throw invalid('sandboxId is empty or malformed');
  checkAbsolute('vmDir', config.vmDir);
  if (!config.hypervisorPath || /[\0\n]/.test(config.hypervisorPath)) throw invalid('hypervisorPath is empty');
  if (!['microvm', 'q35', 'pc'].includes(config.machineType)) throw invalid(`unknown machineType ${config.machineType}`);
  if (config.accel !== 'tcg' && config.accel !== 'kvm') throw invalid(`unknown accel ${String(config.accel)}`);
  checkInt('vcpus', config.vcpus, 1, MAX_VCPUS);
  checkInt('memoryMiB', config.memoryMiB, MIN_MEMORY_MIB, 1024 * 1024);
  if (config.kernelPath !== '') checkAbsolute('kernelPath', config.kernelPath);
  else if (config.initrdPath || config.kernelParams.length > 0) {
    throw invalid('initrdPath and kernelParams need a kernelPath');
  }
  if (config.initrdPath !== undefined) checkAbsolute('initrdPath', config.initrdPath);
  if (config.imagePath !== undefined) checkAbsolute('imagePath', config.imagePath);
  for (const p of config.kernelParams) {
    if (typeof p !== 'string' || p.trim() === '' || /[\0\n\r]/.test(p)) throw invalid(`bad kernel parameter ${JSON.stringify(p)}`);
  }
  if (opts.tscKhz !== undefined) checkInt('tscKhz', opts.tscKhz, 1, 100_000_000);
  if (opts.hotplugPorts !== undefined) checkInt('hotplugPorts', opts.hotplugPorts, 0, 30);
  if (opts.tcgThread !== undefined && config.accel !== 'tcg') throw invalid('tcgThread is only meaningful with accel=tcg');

  const mb = config.memoryBackend;
  if (mb.kind === 'file') checkAbsolute('memoryBackend.path', mb.path);
  else if (mb.kind !== 'anonymous' && mb.kind !== 'memfd') throw invalid(`unknown memory backend ${(mb as { kind: string }).kind}`);

  const ch = config.agentChannel;
  if (ch.kind === 'virtio-serial') checkAbsolute('agentChannel.socketPath', ch.socketPath);
  else if (ch.kind === 'vsock') {
    checkInt('agentChannel.guestCid', ch.guestCid, 3, 0xfffffffe);
    checkInt('agentChannel.port', ch.port, 0, 0xffffffff);
  } else throw invalid(`unknown agent channel ${(ch as { kind: string }).kind}`);

  if (config.incomingStatePath !== undefined) checkAbsolute('incomingStatePath', config.incomingStatePath);
  if (config.netnsPath !== undefined) checkAbsolute('netnsPath', config.netnsPath);

  const ids = new Set<string>();
  for (const d of config.devices) {
    validateDevice(config, d);
    if (ids.has(d.id)) throw invalid(`duplicate device id ${d.id}`);
    ids.add(d.id);
  }
  for (const x of config.extraArgs ?? []) {
    if (typeof x !== 'string' || x.includes('\0')) throw invalid('extraArgs must be strings without NUL');
  }
}

/** Checks one device on its own (also used before hotplug). */
export function validateDevice(config: VmConfig, d: VmDevice): void {
  if (!ID_RE.test(d.id) || RESERVED_IDS.has(d.id) || /^rp\d+$/.test(d.id)) {
    throw invalid(`device id ${JSON.stringify(d.id)} must match ${ID_RE} and not be reserved`);
  }
  switch (d.kind) {
    case 'virtio-fs':
      checkAbsolute(`device ${d.id} socketPath`, d.socketPath);
      if (!d.tag || Buffer.byteLength(d.tag) > 36) throw invalid(`device ${d.id}: virtio-fs tag must be 1..36 bytes`);
      if (d.queueSize !== undefined && (!Number.isInteger(d.queueSize) || d.queueSize < 1 || d.queueSize > 1024 || (d.queueSize & (d.queueSize - 1)) !== 0)) {
        throw invalid(`device ${d.id}: queueSize must be a power of two up to 1024`);
      }
      if (!hasSharedMemory(config)) {
        throw invalid(`device ${d.id}: virtio-fs needs shared guest memory (memoryBackend memfd, or file with share=true)`);
      }
      return;
    case '9p':
      checkAbsolute(`device ${d.id} hostPath`, d.hostPath);
      if (!d.tag || /[\0\n]/.test(d.tag) || Buffer.byteLength(d.tag) > 255) throw invalid(`device ${d.id}: bad 9p mount tag`);
      return;
    case 'block':
      checkAbsolute(`device ${d.id} path`, d.path);
      if (d.format !== undefined && d.format !== 'raw') throw invalid(`device ${d.id}: only raw images are supported`);
      return;
    case 'net-tap':
      if ((d.ifname === undefined) === (d.fdPath === undefined)) throw invalid(`device ${d.id}: exactly one of ifname and fdPath`);
      if (d.ifname !== undefined && !IFNAME_RE.test(d.ifname)) throw invalid(`device ${d.id}: bad tap name ${JSON.stringify(d.ifname)}`);
      if (d.fdPath !== undefined) checkAbsolute(`device ${d.id} fdPath`, d.fdPath);
      if (!MAC_RE.test(d.mac)) throw invalid(`device ${d.id}: bad MAC ${JSON.stringify(d.mac)}`);
      if ((parseInt(d.mac.slice(0, 2), 16) & 1) === 1) throw invalid(`device ${d.id}: MAC ${d.mac} is multicast`);
      if (d.netnsPath !== undefined && d.netnsPath !== config.netnsPath) {
        throw invalid(`device ${d.id}: tap lives in ${d.netnsPath} but QEMU runs in ${config.netnsPath ?? 'the host netns'}`);
      }
      return;
    default:
      throw invalid(`unknown device kind ${(d as { kind: string }).kind}`);
  }
}

/** The guest kernel command line: tuned defaults, TSC frequency, panic reboot (= QEMU exits), then the user's. */
export function kernelCmdline(config: Pick<VmConfig, 'kernelParams'>, opts: Pick<QemuArgsOptions, 'tscKhz'> = {}): string {
  const params = [...TUNED_KERNEL_PARAMS];
  if (opts.tscKhz !== undefined && opts.tscKhz > 0) params.push(`tsc_early_khz=${opts.tscKhz}`);
  params.push('panic=-1');
  params.push(...config.kernelParams);
  return params.join(' ');
}

/** Arguments (after `-device`, etc.) for one device; used for cold plug. */
/** The first descriptor QEMU inherits for fd-passed devices (0-2 are stdio). */
export const FIRST_PASSED_FD = 3;

/** Host paths the driver opens and passes to QEMU, in fd order (fd FIRST_PASSED_FD + index). */
export function passedFdPaths(config: Pick<VmConfig, 'devices'>): string[] {
  return config.devices.flatMap((d) => (d.kind === 'net-tap' && d.fdPath !== undefined ? [d.fdPath] : []));
}

/** `fdNumber`: the descriptor QEMU holds for an fd-passed device (see passedFdPaths). */
export function deviceArgs(machine: MachineType, d: VmDevice, fdNumber?: number): string[] {
  switch (d.kind) {
    case 'virtio-fs':
      return [
        '-chardev', opts('socket', [['id', chardevId(d.id)], ['path', d.socketPath]]),
        '-device', opts(deviceDriver(machine, 'fs'), [['id', d.id], ['chardev', chardevId(d.id)], ['tag', d.tag], ['queue-size', d.queueSize]]),
      ];
    case '9p':
      return [
        '-fsdev', opts('local', [['id', fsdevId(d.id)], ['path', d.hostPath], ['security_model', 'none'], ['readonly', d.readonly ? 'on' : undefined]]),
        '-device', opts(deviceDriver(machine, '9p'), [['id', d.id], ['fsdev', fsdevId(d.id)], ['mount_tag', d.tag]]),
      ];
    case 'block':
      return [
        '-blockdev', blockdevOpts(blockNodeName(d.id), d.path, d.readonly),
        '-device', opts(deviceDriver(machine, 'blk'), [['id', d.id], ['drive', blockNodeName(d.id)]]),
      ];
    case 'net-tap':
      return [
        '-netdev',
        d.fdPath !== undefined
          ? opts('tap', [['id', netdevId(d.id)], ['fd', String(fdNumber ?? -1)], ['vhost', 'off']])
          : opts('tap', [['id', netdevId(d.id)], ['ifname', d.ifname], ['script', 'no'], ['downscript', 'no'], ['vhost', 'off']]),
        '-device', opts(deviceDriver(machine, 'net'), [
          ['id', d.id],
          ['netdev', netdevId(d.id)],
          ['mac', d.mac.toLowerCase()],
          // Debian ships no efi-virtio.rom; a PXE ROM is useless here anyway and costs boot time.
          ['romfile', machine === 'microvm' ? undefined : ''],
        ]),
      ];
  }
}

/**
 * A raw image on a host file. Page cache on (no O_DIRECT): read-only images are shared by every VM, so the
 * host cache serves them all, and O_DIRECT fails on tmpfs.
 */
function blockdevOpts(nodeName: string, file: string, readonly: boolean): string {
  return opts('driver=raw', [
    ['node-name', nodeName],
    ['read-only', readonly ? 'on' : 'off'],
    ['file.driver', 'file'],
    ['file.filename', file],
    ['file.aio', 'threads'],
  ]);
}

/** The QMP `blockdev-add` arguments matching `blockdevOpts`, for hotplug. */
export function blockdevAddArgs(d: Extract<VmDevice, { kind: 'block' }>): Record<string, unknown> {
  return {
    driver: 'raw',
    'node-name': blockNodeName(d.id),
    'read-only': d.readonly,
    file: { driver: 'file', filename: d.path, aio: 'threads' },
  };
}

function machineArg(config: VmConfig): string {
  const shared = config.memoryBackend.kind !== 'anonymous' ? ',memory-backend=mem' : '';
  switch (config.machineType) {
    case 'microvm':
      // No option ROMs, no legacy PIT/PIC (the kernel uses the LAPIC timer with tsc=reliable); ttyS0 for the
      // console; ACPI stays on so that guest poweroff and system_powerdown work.
      return `microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on${shared}`;
    case 'q35':
      return `q35${shared}`;
    case 'pc':
      return `pc${shared}`;
  }
}

function memoryBackendArgs(config: VmConfig): string[] {
  const mb = config.memoryBackend;
  const size = `${config.memoryMiB}M`;
  switch (mb.kind) {
    case 'anonymous':
      return [];
    case 'memfd':
      return ['-object', opts('memory-backend-memfd', [['id', 'mem'], ['size', size], ['share', 'on']])];
    case 'file':
      return ['-object', opts('memory-backend-file', [['id', 'mem'], ['size', size], ['mem-path', mb.path], ['share', mb.share ? 'on' : 'off']])];
  }
}

function agentChannelArgs(config: VmConfig): string[] {
  const ch = config.agentChannel;
  if (ch.kind === 'vsock') {
    return ['-device', opts(deviceDriver(config.machineType, 'vsock'), [['id', 'vsock0'], ['guest-cid', ch.guestCid]])];
  }
  return [
    '-device', opts(deviceDriver(config.machineType, 'serial'), [['id', 'serial0']]),
    '-chardev', opts('socket', [['id', 'agent'], ['path', ch.socketPath], ['server', 'on'], ['wait', 'off']]),
    '-device', opts('virtserialport', [['chardev', 'agent'], ['name', 'agent']]),
  ];
}

/** The whole QEMU argument vector (without the binary itself). Throws InvalidArgument for impossible configs. */
export function buildQemuArgs(config: VmConfig, options: QemuArgsOptions = {}): string[] {
  validateVmConfig(config, options);
  const p = qemuPaths(config.vmDir);
  const args: string[] = [];

  args.push('-name', opts(`sandbox-${optValue(config.sandboxId)}`, []));
  args.push('-machine', machineArg(config));
  args.push('-accel', config.accel === 'tcg' && options.tcgThread ? `tcg,thread=${options.tcgThread}` : config.accel);
  // TCG: QEMU's default CPU model (`-cpu max` measured slower). KVM: pass the host CPU through.
  if (config.accel === 'kvm') args.push('-cpu', 'host,pmu=off');
  args.push('-smp', String(config.vcpus));
  args.push('-m', `${config.memoryMiB}M`);
  args.push(...memoryBackendArgs(config));

  // No default devices, no config files, no display, and a guest reboot ends QEMU (the runtime decides).
  args.push('-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot');
  args.push('-pidfile', p.pidFile);
  args.push('-chardev', opts('socket', [['id', 'qmp'], ['path', p.qmpSocket], ['server', 'on'], ['wait', 'off']]));
  args.push('-mon', 'chardev=qmp,mode=control');
  args.push('-chardev', opts('file', [['id', 'console'], ['path', p.consoleLog]]));
  args.push('-serial', 'chardev:console');
  // Modern virtio-mmio: legacy mode breaks vhost-user-fs (virtiofsd panics) and gains nothing.
  if (config.machineType === 'microvm') args.push('-global', 'virtio-mmio.force-legacy=false');

  if (config.kernelPath !== '') {
    args.push('-kernel', config.kernelPath);
    if (config.initrdPath) args.push('-initrd', config.initrdPath);
    args.push('-append', kernelCmdline(config, options));
  }

  // The root image first: the guest finds it at /dev/vda.
  if (config.imagePath) {
    args.push('-blockdev', blockdevOpts(blockNodeName('image'), config.imagePath, true));
    args.push('-device', opts(deviceDriver(config.machineType, 'blk'), [['id', 'image'], ['drive', blockNodeName('image')]]));
  }

  for (const [i, id] of hotplugPortIds(config, options).entries()) {
    args.push('-device', opts('pcie-root-port', [['id', id], ['bus', 'pcie.0'], ['chassis', i + 1]]));
  }

  args.push(...agentChannelArgs(config));
  // Entropy for the guest: without it Node's start-up blocks on the guest RNG (several seconds under TCG).
  args.push('-object', 'rng-random,id=rng0,filename=/dev/urandom');
  args.push('-device', opts(deviceDriver(config.machineType, 'rng'), [['id', 'rng'], ['rng', 'rng0']]));
  const fdPaths = passedFdPaths(config);
  for (const d of config.devices) {
    const fdIndex = d.kind === 'net-tap' && d.fdPath !== undefined ? fdPaths.indexOf(d.fdPath) : -1;
    args.push(...deviceArgs(config.machineType, d, fdIndex >= 0 ? FIRST_PASSED_FD + fdIndex : undefined));
  }

  // A clone loads its device state over QMP (`migrate-incoming`) and must stay paused afterwards: without -S
  // QEMU would resume by itself as soon as loading completes, before the runtime reconnects the agent.
  if (config.incomingStatePath !== undefined) args.push('-S', '-incoming', 'defer');

  args.push(...(config.extraArgs ?? []));
  return args;
}
