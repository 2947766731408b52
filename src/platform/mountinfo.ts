import { readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { errors } from '../base/errors.js';

/** One line of /proc/<pid>/mountinfo (see proc(5)), with the kernel's octal escapes decoded. */
export interface MountEntry {
  mountId: number;
  parentId: number;
  major: number;
  minor: number;
  /** Path inside the filesystem that forms this mount's root (for bind mounts, the bound subtree). */
  root: string;
  mountPoint: string;
  /** Per-mount options, e.g. ['ro', 'nosuid', 'relatime']. */
  mountOptions: string[];
  /** Optional fields, e.g. ['shared:1', 'master:2']. */
  optionalFields: string[];
  fsType: string;
  source: string;
  superOptions: string[];
}

export type Propagation = {
  /** Peer group id when the mount is shared. */
  shared?: number;
  /** Peer group this mount receives from when it is a slave. */
  master?: number;
  unbindable: boolean;
};

/** Decodes the kernel's `\ooo` escapes (space, tab, newline and backslash are escaped in mountinfo). */
export function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parses one mountinfo line; throws InvalidArgument on a malformed line. */
export function parseMountInfoLine(line: string): MountEntry {
  const fields = line.split(' ');
  const sep = fields.indexOf('-', 6);
  if (fields.length < 10 || sep < 0 || fields.length < sep + 4) {
    throw errors.invalid('KATA_MOUNTINFO_MALFORMED', `malformed mountinfo line: ${JSON.stringify(line)}`);
  }
  const [major, minor] = fields[2]!.split(':').map((n) => parseInt(n, 10));
  const mountId = parseInt(fields[0]!, 10);
  const parentId = parseInt(fields[1]!, 10);
  if (![mountId, parentId, major, minor].every((n) => Number.isInteger(n))) {
    throw errors.invalid('KATA_MOUNTINFO_MALFORMED', `malformed mountinfo line: ${JSON.stringify(line)}`);
  }
  return {
    mountId,
    parentId,
    major: major!,
    minor: minor!,
    root: unescapeMountField(fields[3]!),
    mountPoint: unescapeMountField(fields[4]!),
    mountOptions: fields[5]!.split(','),
    optionalFields: fields.slice(6, sep),
    fsType: unescapeMountField(fields[sep + 1]!),
    source: unescapeMountField(fields[sep + 2]!),
    superOptions: fields.slice(sep + 3).join(' ').split(','),
  };
}

/** Parses a whole mountinfo text (empty lines ignored). */
export function parseMountInfo(text: string): MountEntry[] {
  return text
    .split('\n')
    .filter((l) => l.length > 0)
    .map(parseMountInfoLine);
}

export function propagationOf(entry: MountEntry): Propagation {
  const p: Propagation = { unbindable: false };
  for (const f of entry.optionalFields) {
    if (f.startsWith('shared:')) p.shared = parseInt(f.slice(7), 10);
    else if (f.startsWith('master:')) p.master = parseInt(f.slice(7), 10);
    else if (f === 'unbindable') p.unbindable = true;
  }
  return p;
}

/** All mounts visible to `pid` (default: this process), in mountinfo order (parents before children). */
export async function listMounts(pid: number | 'self' = 'self'): Promise<MountEntry[]> {
  const file = `/proc/${pid}/mountinfo`;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw errors.unavailable('KATA_MOUNTINFO_READ', `read ${file}: ${(err as Error).message}`, err);
  }
  return parseMountInfo(text);
}

/** Normalises to an absolute path without a trailing slash (except '/'). Does not touch the disk. */
function normalize(p: string): string {
  return path.resolve(p);
}

/** True when `p` is `prefix` or lies below it, comparing whole path components. */
export function isUnder(p: string, prefix: string): boolean {
  const pre = normalize(prefix);
  if (pre === '/') return true;
  return p === pre || p.startsWith(pre + '/');
}

/**
 * Mounts whose mount point is `prefix` itself or below it. The prefix is taken literally (mountinfo shows
 * resolved paths: pass a path without symlinks, e.g. from `realpath`).
 */
export async function mountsUnder(prefix: string, pid: number | 'self' = 'self'): Promise<MountEntry[]> {
  return (await listMounts(pid)).filter((m) => isUnder(m.mountPoint, prefix));
}

/** True when something is mounted at `p` (symlinks in `p` are resolved first, as mount(8) does). */
export async function isMountPoint(p: string): Promise<boolean> {
  let resolved: string;
  try {
    resolved = await realpath(p);
  } catch {
    resolved = normalize(p);
  }
  return (await listMounts()).some((m) => m.mountPoint === resolved);
}
