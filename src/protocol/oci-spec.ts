import { errors } from '../base/errors.js';
import type * as pb from './gen/oci.js';

/**
 * The OCI runtime spec as JSON (config.json), the subset kata-ts reads and writes, and its translation to and
 * from the agent API's protobuf form. Host and guest both use this module; it holds no I/O.
 */

export interface OciUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
  username?: string;
}

export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user: OciUser;
  args: string[];
  env?: string[];
  cwd: string;
  capabilities?: {
    bounding?: string[];
    effective?: string[];
    inheritable?: string[];
    permitted?: string[];
    ambient?: string[];
  };
  rlimits?: { type: string; hard: number; soft: number }[];
  noNewPrivileges?: boolean;
  apparmorProfile?: string;
  oomScoreAdj?: number;
  selinuxLabel?: string;
}

export interface OciMount {
  destination: string;
  source?: string;
  type?: string;
  options?: string[];
}

export interface OciLinuxResources {
  devices?: { allow: boolean; type?: string; major?: number; minor?: number; access?: string }[];
  memory?: { limit?: number; reservation?: number; swap?: number; swappiness?: number; disableOOMKiller?: boolean };
  cpu?: { shares?: number; quota?: number; period?: number; cpus?: string; mems?: string };
  pids?: { limit: number };
  hugepageLimits?: { pageSize: string; limit: number }[];
}

export interface OciLinux {
  uidMappings?: { containerID: number; hostID: number; size: number }[];
  gidMappings?: { containerID: number; hostID: number; size: number }[];
  sysctl?: Record<string, string>;
  resources?: OciLinuxResources;
  cgroupsPath?: string;
  namespaces?: { type: string; path?: string }[];
  devices?: {
    path: string;
    type: string;
    major?: number;
    minor?: number;
    fileMode?: number;
    uid?: number;
    gid?: number;
  }[];
  seccomp?: unknown;
  rootfsPropagation?: string;
  maskedPaths?: string[];
  readonlyPaths?: string[];
  mountLabel?: string;
}

export interface OciSpec {
  ociVersion: string;
  process?: OciProcess;
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  hooks?: unknown;
  annotations?: Record<string, string>;
  linux?: OciLinux;
}

const fail = (field: string, what: string) =>
  errors.invalid('KATA_SPEC_INVALID', `invalid OCI spec: ${field}: ${what}`);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkStringArray(v: unknown, field: string, opts: { nonEmpty?: boolean } = {}): void {
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw fail(field, 'expected an array of strings');
  if (opts.nonEmpty && v.length === 0) throw fail(field, 'must not be empty');
  if (v.some((s: string) => s.includes('\0'))) throw fail(field, 'contains a NUL byte');
}

function checkUint(v: unknown, field: string): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw fail(field, 'expected an unsigned 32-bit integer');
  }
}

/** Checks a parsed process object; `field` names its place in error messages. */
export function validateProcess(p: unknown, field = 'process'): OciProcess {
  if (!isObject(p)) throw fail(field, 'expected an object');
  checkStringArray(p.args, `${field}.args`, { nonEmpty: true });
  if (p.env !== undefined) checkStringArray(p.env, `${field}.env`);
  if (typeof p.cwd !== 'string' || !p.cwd.startsWith('/')) throw fail(`${field}.cwd`, 'expected an absolute path');
  if (!isObject(p.user)) throw fail(`${field}.user`, 'expected an object with uid and gid');
  checkUint(p.user.uid, `${field}.user.uid`);
  checkUint(p.user.gid, `${field}.user.gid`);
  if (p.terminal !== undefined && typeof p.terminal !== 'boolean') throw fail(`${field}.terminal`, 'expected a boolean');
  return p as unknown as OciProcess;
}

/** Parses and checks config.json text. Errors name the field. */
export function parseOciSpec(text: string): OciSpec {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw errors.invalid('KATA_SPEC_INVALID', `invalid OCI spec: not valid JSON: ${(err as Error).message}`);
  }
  return validateOciSpec(raw);
}

export function validateOciSpec(raw: unknown): OciSpec {
  if (!isObject(raw)) throw fail('(top level)', 'expected a JSON object');
  if (typeof raw.ociVersion !== 'string') throw fail('ociVersion', 'expected a string');
  if (!isObject(raw.root) || typeof raw.root.path !== 'string' || raw.root.path === '') {
    throw fail('root.path', 'expected a non-empty string');
  }
  if (raw.process !== undefined) validateProcess(raw.process);
  if (raw.hostname !== undefined && typeof raw.hostname !== 'string') throw fail('hostname', 'expected a string');
  if (raw.mounts !== undefined) {
    if (!Array.isArray(raw.mounts)) throw fail('mounts', 'expected an array');
    raw.mounts.forEach((m, i) => {
      if (!isObject(m) || typeof m.destination !== 'string' || !m.destination.startsWith('/')) {
        throw fail(`mounts[${i}].destination`, 'expected an absolute path');
      }
      if (m.options !== undefined) checkStringArray(m.options, `mounts[${i}].options`);
    });
  }
  if (raw.annotations !== undefined) {
    if (!isObject(raw.annotations) || !Object.values(raw.annotations).every((v) => typeof v === 'string')) {
      throw fail('annotations', 'expected an object of strings');
    }
  }
  if (raw.linux !== undefined && !isObject(raw.linux)) throw fail('linux', 'expected an object');
  return raw as unknown as OciSpec;
}

// ---- JSON -> protobuf (host side) ----

export function processToProto(p: OciProcess): pb.Process {
  return {
    Terminal: p.terminal ?? false,
    ConsoleSize: p.consoleSize ? { Height: p.consoleSize.height, Width: p.consoleSize.width } : undefined,
    User: {
      UID: p.user.uid,
      GID: p.user.gid,
      AdditionalGids: p.user.additionalGids ?? [],
      Username: p.user.username ?? '',
    },
    Args: p.args,
    Env: p.env ?? [],
    Cwd: p.cwd,
    Capabilities: p.capabilities
      ? {
          Bounding: p.capabilities.bounding ?? [],
          Effective: p.capabilities.effective ?? [],
          Inheritable: p.capabilities.inheritable ?? [],
          Permitted: p.capabilities.permitted ?? [],
          Ambient: p.capabilities.ambient ?? [],
        }
      : undefined,
    Rlimits: (p.rlimits ?? []).map((r) => ({ Type: r.type, Hard: r.hard, Soft: r.soft })),
    NoNewPrivileges: p.noNewPrivileges ?? false,
    ApparmorProfile: p.apparmorProfile ?? '',
    OOMScoreAdj: p.oomScoreAdj ?? 0,
    SelinuxLabel: p.selinuxLabel ?? '',
  };
}

export function resourcesToProto(r: OciLinuxResources): pb.LinuxResources {
  return {
    Devices: (r.devices ?? []).map((d) => ({
      Allow: d.allow,
      Type: d.type ?? '',
      Major: d.major ?? -1,
      Minor: d.minor ?? -1,
      Access: d.access ?? '',
    })),
    Memory: r.memory
      ? {
          Limit: r.memory.limit ?? 0,
          Reservation: r.memory.reservation ?? 0,
          Swap: r.memory.swap ?? 0,
          Kernel: 0,
          KernelTCP: 0,
          Swappiness: r.memory.swappiness ?? 0,
          DisableOOMKiller: r.memory.disableOOMKiller ?? false,
        }
      : undefined,
    CPU: r.cpu
      ? {
          Shares: r.cpu.shares ?? 0,
          Quota: r.cpu.quota ?? 0,
          Period: r.cpu.period ?? 0,
          RealtimeRuntime: 0,
          RealtimePeriod: 0,
          Cpus: r.cpu.cpus ?? '',
          Mems: r.cpu.mems ?? '',
        }
      : undefined,
    Pids: r.pids ? { Limit: r.pids.limit } : undefined,
    BlockIO: undefined,
    HugepageLimits: (r.hugepageLimits ?? []).map((h) => ({ Pagesize: h.pageSize, Limit: h.limit })),
    Network: undefined,
  };
}

export function specToProto(s: OciSpec): pb.Spec {
  const l = s.linux;
  return {
    Version: s.ociVersion,
    Process: s.process ? processToProto(s.process) : undefined,
    Root: s.root ? { Path: s.root.path, Readonly: s.root.readonly ?? false } : undefined,
    Hostname: s.hostname ?? '',
    Mounts: (s.mounts ?? []).map((m) => ({
      destination: m.destination,
      source: m.source ?? '',
      type: m.type ?? '',
      options: m.options ?? [],
    })),
    // Host hooks cannot run inside the guest: never forwarded.
    Hooks: undefined,
    Annotations: s.annotations ?? {},
    Linux: l
      ? {
          UIDMappings: (l.uidMappings ?? []).map((m) => ({ HostID: m.hostID, ContainerID: m.containerID, Size: m.size })),
          GIDMappings: (l.gidMappings ?? []).map((m) => ({ HostID: m.hostID, ContainerID: m.containerID, Size: m.size })),
          Sysctl: l.sysctl ?? {},
          Resources: l.resources ? resourcesToProto(l.resources) : undefined,
          CgroupsPath: l.cgroupsPath ?? '',
          Namespaces: (l.namespaces ?? []).map((n) => ({ Type: n.type, Path: n.path ?? '' })),
          Devices: (l.devices ?? []).map((d) => ({
            Path: d.path,
            Type: d.type,
            Major: d.major ?? 0,
            Minor: d.minor ?? 0,
            FileMode: d.fileMode ?? 0,
            UID: d.uid ?? 0,
            GID: d.gid ?? 0,
          })),
          // Guest seccomp is off (disable_guest_seccomp = true, Kata's default).
          Seccomp: undefined,
          RootfsPropagation: l.rootfsPropagation ?? '',
          MaskedPaths: l.maskedPaths ?? [],
          ReadonlyPaths: l.readonlyPaths ?? [],
          MountLabel: l.mountLabel ?? '',
        }
      : undefined,
  };
}

// ---- protobuf -> JSON (guest side, for crun) ----

const nonEmpty = <T>(a: T[]): T[] | undefined => (a.length > 0 ? a : undefined);

export function processFromProto(p: pb.Process): OciProcess {
  const caps = p.Capabilities;
  return {
    terminal: p.Terminal,
    consoleSize: p.ConsoleSize ? { height: p.ConsoleSize.Height, width: p.ConsoleSize.Width } : undefined,
    user: {
      uid: p.User?.UID ?? 0,
      gid: p.User?.GID ?? 0,
      additionalGids: nonEmpty(p.User?.AdditionalGids ?? []),
    },
    args: p.Args,
    env: p.Env,
    cwd: p.Cwd || '/',
    capabilities: caps
      ? {
          bounding: caps.Bounding,
          effective: caps.Effective,
          inheritable: caps.Inheritable,
          permitted: caps.Permitted,
          ambient: caps.Ambient,
        }
      : undefined,
    rlimits: nonEmpty(p.Rlimits.map((r) => ({ type: r.Type, hard: r.Hard, soft: r.Soft }))),
    noNewPrivileges: p.NoNewPrivileges || undefined,
    oomScoreAdj: p.OOMScoreAdj || undefined,
  };
}

export function resourcesFromProto(r: pb.LinuxResources): OciLinuxResources {
  return {
    devices: nonEmpty(
      r.Devices.map((d) => ({
        allow: d.Allow,
        type: d.Type || undefined,
        major: d.Major >= 0 ? d.Major : undefined,
        minor: d.Minor >= 0 ? d.Minor : undefined,
        access: d.Access || undefined,
      })),
    ),
    memory: r.Memory
      ? {
          limit: r.Memory.Limit || undefined,
          reservation: r.Memory.Reservation || undefined,
          swap: r.Memory.Swap || undefined,
        }
      : undefined,
    cpu: r.CPU
      ? {
          shares: r.CPU.Shares || undefined,
          quota: r.CPU.Quota || undefined,
          period: r.CPU.Period || undefined,
          cpus: r.CPU.Cpus || undefined,
          mems: r.CPU.Mems || undefined,
        }
      : undefined,
    pids: r.Pids && r.Pids.Limit !== 0 ? { limit: r.Pids.Limit } : undefined,
  };
}

export function specFromProto(s: pb.Spec): OciSpec {
  const l = s.Linux;
  return {
    ociVersion: s.Version || '1.0.2',
    process: s.Process ? processFromProto(s.Process) : undefined,
    root: s.Root ? { path: s.Root.Path, readonly: s.Root.Readonly } : undefined,
    hostname: s.Hostname || undefined,
    mounts: s.Mounts.map((m) => ({
      destination: m.destination,
      source: m.source || undefined,
      type: m.type || undefined,
      options: m.options,
    })),
    annotations: s.Annotations,
    linux: l
      ? {
          uidMappings: nonEmpty(l.UIDMappings.map((m) => ({ containerID: m.ContainerID, hostID: m.HostID, size: m.Size }))),
          gidMappings: nonEmpty(l.GIDMappings.map((m) => ({ containerID: m.ContainerID, hostID: m.HostID, size: m.Size }))),
          sysctl: Object.keys(l.Sysctl).length > 0 ? l.Sysctl : undefined,
          resources: l.Resources ? resourcesFromProto(l.Resources) : undefined,
          cgroupsPath: l.CgroupsPath || undefined,
          namespaces: l.Namespaces.map((n) => ({ type: n.Type, path: n.Path || undefined })),
          devices: nonEmpty(
            l.Devices.map((d) => ({
              path: d.Path,
              type: d.Type,
              major: d.Major,
              minor: d.Minor,
              fileMode: d.FileMode || undefined,
              uid: d.UID,
              gid: d.GID,
            })),
          ),
          rootfsPropagation: l.RootfsPropagation || undefined,
          maskedPaths: nonEmpty(l.MaskedPaths),
          readonlyPaths: nonEmpty(l.ReadonlyPaths),
        }
      : undefined,
  };
}
