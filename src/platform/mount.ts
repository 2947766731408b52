import { execFile } from 'node:child_process';
import path from 'node:path';
import { errors, KataError } from '../base/errors.js';
import { isMountPoint, mountsUnder } from './mountinfo.js';

/**
 * Mounts through util-linux mount(8)/umount(8): Node has no mount(2). Commands run with execFile and an
 * argument array (no shell), paths come after `--`, and every path must be absolute, so a hostile path
 * can neither inject options nor be taken for one.
 */

const MOUNT = '/usr/bin/mount';
const UMOUNT = '/usr/bin/umount';
const COMMAND_TIMEOUT_MS = 30_000;

export interface BindOptions {
  /** Make the new mount read-only (a bind followed by `-o remount,bind,ro`). */
  readonly?: boolean;
  /** Also bind the mounts below `source` (`--rbind`). */
  recursive?: boolean;
}

export interface UnmountOptions {
  /** Detach now, let the kernel finish when the mount is no longer busy (MNT_DETACH). */
  lazy?: boolean;
}

interface RunResult {
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      {
        timeout: COMMAND_TIMEOUT_MS,
        killSignal: 'SIGKILL',
        maxBuffer: 1 << 20,
        // Stable, untranslated messages in errors.
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
      },
      (err, stdout, stderr) => {
        if (!err) {
          resolve({ stdout, stderr });
          return;
        }
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') {
          reject(errors.unavailable('KATA_MOUNT_TOOL_MISSING', `${cmd} not found`, err));
          return;
        }
        const detail = stderr.trim() || err.message;
        reject(
          errors.internal('KATA_MOUNT_FAILED', `${path.basename(cmd)} ${args.join(' ')}: ${detail}`, err),
        );
      },
    );
  });
}

function checkPath(p: string, what: string): void {
  if (typeof p !== 'string' || p.length === 0) {
    throw errors.invalid('KATA_MOUNT_INVALID', `${what}: empty path`);
  }
  if (p.includes('\0')) throw errors.invalid('KATA_MOUNT_INVALID', `${what}: path contains NUL`);
  if (!path.isAbsolute(p)) throw errors.invalid('KATA_MOUNT_INVALID', `${what}: path must be absolute: ${p}`);
}

/** Options whose values are paths (overlay's and similar); colon-separated lists allowed for lowerdir. */
const PATH_OPTIONS = new Set(['lowerdir', 'upperdir', 'workdir', 'metacopy_dir']);

/** Validates mount options: one option per element, no comma smuggling a second one in. */
export function validateMountOptions(options: readonly string[]): void {
  for (const opt of options) {
    if (typeof opt !== 'string' || opt.length === 0) {
      throw errors.invalid('KATA_MOUNT_INVALID', 'mount option: empty option');
    }
    if (/[,\0\n\r]/.test(opt)) {
      throw errors.invalid('KATA_MOUNT_INVALID', `mount option ${JSON.stringify(opt)}: one option per element, no commas`);
    }
    const eq = opt.indexOf('=');
    if (eq > 0 && PATH_OPTIONS.has(opt.slice(0, eq))) {
      for (const part of opt.slice(eq + 1).split(':')) {
        if (!path.isAbsolute(part)) {
          throw errors.invalid('KATA_MOUNT_INVALID', `mount option ${opt}: paths must be absolute`);
        }
      }
    }
  }
}

/** Source of a pseudo filesystem (`tmpfs`, `overlay`, `none`) or an absolute path. */
function checkSource(source: string): void {
  if (path.isAbsolute(source)) {
    checkPath(source, 'mount source');
    return;
  }
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$/.test(source)) {
    throw errors.invalid('KATA_MOUNT_INVALID', `mount source ${JSON.stringify(source)}: not a path or fs name`);
  }
}

/** Binds `source` on `target` (both must exist and be of the same kind: file on file, dir on dir). */
export async function bindMount(source: string, target: string, opts: BindOptions = {}): Promise<void> {
  checkPath(source, 'bind source');
  checkPath(target, 'bind target');
  await run(MOUNT, [opts.recursive ? '--rbind' : '--bind', '--', source, target]);
  if (!opts.readonly) return;
  try {
    await remountReadOnly(target);
  } catch (err) {
    // Never leave a writable bind behind a failed read-only request.
    await unmount(target, { lazy: true }).catch(() => undefined);
    throw err;
  }
}

/**
 * Makes an existing bind mount read-only. The flag is per mount: it does not propagate to existing peers
 * or slaves (hence Kata's private staging for read-only shares).
 */
export async function remountReadOnly(target: string): Promise<void> {
  checkPath(target, 'remount target');
  await run(MOUNT, ['-o', 'remount,bind,ro', '--', target]);
}

async function setPropagation(flag: string, target: string, recursive: boolean): Promise<void> {
  checkPath(target, 'propagation target');
  await run(MOUNT, [`--make-${recursive ? 'r' : ''}${flag}`, '--', target]);
}

/** `target` must be a mount point. */
export function makeShared(target: string, opts: { recursive?: boolean } = {}): Promise<void> {
  return setPropagation('shared', target, opts.recursive ?? false);
}

export function makeSlave(target: string, opts: { recursive?: boolean } = {}): Promise<void> {
  return setPropagation('slave', target, opts.recursive ?? false);
}

export function makePrivate(target: string, opts: { recursive?: boolean } = {}): Promise<void> {
  return setPropagation('private', target, opts.recursive ?? false);
}

/** Mounts a filesystem of `type` (tmpfs, overlay, ext4, ...). Options are one per element. */
export async function mountFs(type: string, source: string, target: string, options: readonly string[]): Promise<void> {
  if (!/^[a-z0-9][a-z0-9._]*$/.test(type)) {
    throw errors.invalid('KATA_MOUNT_INVALID', `filesystem type ${JSON.stringify(type)} is not valid`);
  }
  checkSource(source);
  checkPath(target, 'mount target');
  validateMountOptions(options);
  const args = ['-t', type];
  if (options.length > 0) args.push('-o', options.join(','));
  args.push('--', source, target);
  await run(MOUNT, args);
}

/**
 * Unmounts the topmost mount at `target`. "Not mounted" (or a path that does not exist) is success; the
 * check is made against mountinfo, never by reading the command's message.
 */
export async function unmount(target: string, opts: UnmountOptions = {}): Promise<void> {
  checkPath(target, 'unmount target');
  const args = opts.lazy ? ['-l', '--', target] : ['--', target];
  try {
    await run(UMOUNT, args);
  } catch (err) {
    if (err instanceof KataError && err.code === 'KATA_MOUNT_FAILED' && !(await isMountPoint(target))) return;
    throw err;
  }
}

function depth(p: string): number {
  return p === '/' ? 0 : p.split('/').length - 1;
}

/**
 * Unmounts everything mounted at `prefix` or below, deepest first. mountinfo is re-read after each pass
 * because an unmount may propagate to (and remove) other mounts in the tree; each pass unmounts only leaves
 * (mounts with nothing mounted on or below them). A busy mount is detached lazily unless
 * `lazyFallback: false`, which throws instead. Returns how many unmount calls were made. The prefix is
 * taken literally (symlinks are not resolved, so a link can never widen the tree).
 */
export async function unmountTree(prefix: string, opts: { lazyFallback?: boolean } = {}): Promise<number> {
  checkPath(prefix, 'unmount prefix');
  if (path.resolve(prefix) === '/') throw errors.invalid('KATA_MOUNT_INVALID', 'unmount tree: refusing /');
  const lazyFallback = opts.lazyFallback ?? true;
  let count = 0;
  for (let pass = 0; pass < 64; pass++) {
    const mounts = await mountsUnder(prefix);
    if (mounts.length === 0) return count;
    // Only unmount leaves in this pass: parents come back in the next one.
    const parents = new Set(mounts.map((m) => m.parentId));
    const leaves = mounts
      .filter((m) => !parents.has(m.mountId))
      .sort((a, b) => depth(b.mountPoint) - depth(a.mountPoint));
    for (const m of leaves) {
      try {
        await unmount(m.mountPoint);
      } catch (err) {
        if (!lazyFallback) throw err;
        await unmount(m.mountPoint, { lazy: true });
      }
      count++;
    }
  }
  const left = await mountsUnder(prefix);
  if (left.length > 0) {
    throw errors.internal(
      'KATA_MOUNT_FAILED',
      `unmount tree ${prefix}: still mounted: ${left.map((m) => m.mountPoint).join(', ')}`,
    );
  }
  return count;
}
