/**
 * What a template VM must share with its clones, and the key that names it. A clone is the template's RAM
 * plus its saved device state under a new command line: everything the guest saw at boot (QEMU, machine,
 * CPUs, memory, kernel, initrd, image, kernel command line, the device set and its order) must be identical,
 * and only host-side backends (sockets, the 9p export dir, log files) may differ. The key is a hash of the
 * QEMU argument vector with those backends replaced by placeholders, plus the identity of every file the
 * guest was booted from, so a change to any of them builds a new template instead of cloning a stale one.
 */
import { createHash } from 'node:crypto';
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { errors } from '../../base/errors.js';
import type { VmConfig, VmDevice } from '../../hypervisor/hypervisor.js';
import { buildQemuArgs } from '../../hypervisor/qemu/cmdline.js';

/** Bump when the template layout or the build recipe changes: old templates then no longer match. */
export const TEMPLATE_FORMAT = 2;

/** Placeholder backend paths used for the key (never touched on the host). */
const PLACEHOLDER_ROOT = '/kata-template';

/** The guest asset manifest the guest image builder writes next to the assets. */
const GUEST_MANIFEST = 'kata-ts-guest.json';

/**
 * Why this VM cannot be a template clone, or undefined when it can. Templates need every device to be
 * migratable and free of per-sandbox guest-visible identity.
 */
export function templateIneligibility(config: VmConfig): string | undefined {
  if (config.incomingStatePath !== undefined) return 'the VM config already restores a saved state';
  if (config.agentChannel.kind !== 'virtio-serial') return `agent channel ${config.agentChannel.kind} is not supported by templates`;
  if (config.kernelPath === '') return 'templates need a guest kernel';
  for (const d of config.devices) {
    switch (d.kind) {
      case '9p':
        // Migratable while the guest has not mounted it: the template never mounts it, each clone does.
        continue;
      case 'virtio-fs':
        return (
          'virtio-fs (vhost-user-fs) devices cannot be migrated by QEMU 7.2, so a template cannot carry one, ' +
          'and a copy-on-write clone cannot share its RAM with virtiofsd; set shared_fs = "virtio-9p" to use templates'
        );
      case 'net-tap':
        // The template has the NIC with its own MAC on a throwaway tap; a clone gets the pod's tap as the
        // backend and the agent gives the guest NIC the pod's MAC (see templateNicMac).
        continue;
      case 'block':
        return `block device ${d.id}: cold-plugged per-sandbox disks are not supported by templates`;
      default:
        return `device kind ${(d as { kind: string }).kind} is not supported by templates`;
    }
  }
  return undefined;
}

/**
 * The MAC address a template gives the NIC with VM device id `deviceId` (locally administered, unicast,
 * derived from the id). Clones wake up with it; the agent then sets the pod's MAC (UpdateInterface with
 * `devicePath` = `mac=<this>`).
 */
export function templateNicMac(deviceId: string): string {
  const h = createHash('sha256').update(`kata-ts template nic ${deviceId}`).digest();
  return ['02', '6b', ...[...h.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The tap name in the key: a NIC's backend (tap by name or fd, its netns) is not guest-visible. */
const TEMPLATE_TAP_PLACEHOLDER = 'kt-template';

/**
 * The devices as the guest sees them: host-side backends replaced by placeholders, NICs with the template's
 * MAC (their backend, a tap by name or by fd, in the pod's netns or not, is the clone's business).
 */
function guestVisibleDevices(devices: VmDevice[]): VmDevice[] {
  return devices.map((d): VmDevice => {
    if (d.kind === '9p') return { ...d, hostPath: `${PLACEHOLDER_ROOT}/share/${d.id}` };
    if (d.kind === 'net-tap') return { kind: 'net-tap', id: d.id, ifname: TEMPLATE_TAP_PLACEHOLDER, mac: templateNicMac(d.id) };
    return d;
  });
}

/**
 * The VM config reduced to what template and clones share: per-sandbox names and host paths replaced by
 * placeholders, guest RAM backed by a file (as in the template).
 */
export function normalizeForTemplate(config: VmConfig): VmConfig {
  return {
    sandboxId: 'template',
    vmDir: `${PLACEHOLDER_ROOT}/vm`,
    hypervisorPath: config.hypervisorPath,
    kernelPath: config.kernelPath,
    initrdPath: config.initrdPath,
    imagePath: config.imagePath,
    kernelParams: [...config.kernelParams],
    machineType: config.machineType,
    accel: config.accel,
    vcpus: config.vcpus,
    memoryMiB: config.memoryMiB,
    memoryBackend: { kind: 'file', path: `${PLACEHOLDER_ROOT}/memory`, share: true },
    agentChannel: { kind: 'virtio-serial', socketPath: `${PLACEHOLDER_ROOT}/vm/agent.sock` },
    devices: guestVisibleDevices(config.devices),
    extraArgs: config.extraArgs ? [...config.extraArgs] : undefined,
  };
}

/** Identity of one file the guest is booted from (or QEMU itself). */
export interface FileIdentity {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
  /** Content hash from the guest manifest, when the manifest lists this file with this size. */
  sha256?: string;
}

interface ManifestEntry {
  file?: string;
  sha256?: string;
  size?: number;
}

function manifestHashes(dir: string): Map<string, ManifestEntry> {
  const out = new Map<string, ManifestEntry>();
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(join(dir, GUEST_MANIFEST), 'utf8')) as Record<string, unknown>;
  } catch {
    return out;
  }
  for (const v of Object.values(doc)) {
    if (v && typeof v === 'object' && typeof (v as ManifestEntry).file === 'string') {
      out.set((v as ManifestEntry).file!, v as ManifestEntry);
    }
  }
  return out;
}

/**
 * Size, mtime and inode of the file (any rebuild or package upgrade changes them), plus its content hash
 * from the guest manifest when there is one. Hashing the 60 to 120 MB assets on every sandbox start would
 * cost more than the template saves.
 */
export function fileIdentity(path: string): FileIdentity {
  let real: string;
  try {
    real = realpathSync(path);
  } catch (err) {
    throw errors.notFound('KATA_TEMPLATE_ASSET', `template input ${path}: ${(err as Error).message}`, err);
  }
  const st = statSync(real);
  const id: FileIdentity = { path: real, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
  const entry = manifestHashes(dirname(real)).get(basename(real));
  if (entry?.sha256 && entry.size === st.size) id.sha256 = entry.sha256;
  return id;
}

/** Everything the key is computed from; stored with the template so `factory status` can explain a mismatch. */
export interface TemplateInputs {
  format: number;
  /** The normalized QEMU argument vector. */
  qemuArgs: string[];
  files: Record<'qemu' | 'kernel' | 'initrd' | 'image', FileIdentity | null>;
}

export function templateInputs(config: VmConfig): TemplateInputs {
  return {
    format: TEMPLATE_FORMAT,
    // Without tsc_early_khz: a clone's kernel command line is never read (its kernel booted in the template),
    // and the value read from /proc/cpuinfo may drift with CPU frequency scaling.
    qemuArgs: buildQemuArgs(normalizeForTemplate(config), {}),
    files: {
      qemu: fileIdentity(resolveBinary(config.hypervisorPath)),
      kernel: fileIdentity(config.kernelPath),
      initrd: config.initrdPath ? fileIdentity(config.initrdPath) : null,
      image: config.imagePath ? fileIdentity(config.imagePath) : null,
    },
  };
}

/** sha256 (hex) of the canonical JSON of the inputs. */
export function keyOf(inputs: TemplateInputs): string {
  return createHash('sha256').update(JSON.stringify(inputs)).digest('hex');
}

/**
 * The template key of a VM config: equal keys mean a clone of one can run as the other. The family names
 * the guest assets and QEMU the key was made with (format, files): templates of one family differ only in
 * the VM's shape (memory, vCPUs, NICs, kernel parameters) and may be kept side by side; a template of
 * another family can never match again.
 */
export interface TemplateId {
  key: string;
  family: string;
  inputs: TemplateInputs;
}

export function templateKey(config: VmConfig): TemplateId {
  const inputs = templateInputs(config);
  return { key: keyOf(inputs), family: keyOf({ format: inputs.format, qemuArgs: [], files: inputs.files }), inputs };
}

/** Names which inputs differ between two input sets (for `factory status`). */
export function describeMismatch(a: TemplateInputs, b: TemplateInputs): string[] {
  const out: string[] = [];
  if (a.format !== b.format) out.push(`template format ${a.format} != ${b.format}`);
  for (const k of Object.keys(a.files) as (keyof TemplateInputs['files'])[]) {
    if (JSON.stringify(a.files[k]) !== JSON.stringify(b.files[k])) out.push(`${k} file changed`);
  }
  const argsA = new Set(a.qemuArgs);
  const argsB = new Set(b.qemuArgs);
  for (const x of a.qemuArgs) if (!argsB.has(x)) out.push(`QEMU argument ${JSON.stringify(x)} is gone`);
  for (const x of b.qemuArgs) if (!argsA.has(x)) out.push(`QEMU argument ${JSON.stringify(x)} is new`);
  if (out.length === 0 && JSON.stringify(a.qemuArgs) !== JSON.stringify(b.qemuArgs)) out.push('QEMU argument order changed');
  return out;
}

/** `hypervisorPath` may be a bare name found on PATH (tests and odd setups). */
function resolveBinary(p: string): string {
  if (p.includes('/')) return p;
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const candidate = join(dir, p);
    try {
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return p;
}
