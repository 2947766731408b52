import { randomBytes } from 'node:crypto';
import { lstat, mkdir, open, readdir, realpath, rmdir, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { CleanupStack } from '../../base/cleanup.js';
import { errors, KataError, wrapError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import { bindMount, makePrivate, makeShared, makeSlave, remountReadOnly, unmount, unmountTree } from '../../platform/mount.js';
import { listMounts, mountsUnder } from '../../platform/mountinfo.js';
import { checkId } from '../../base/ids.js';

/** Kata's `shared_fs` values this runtime implements. */
export type ShareFsKind = 'virtio-fs' | 'virtio-9p';

/** The mount tag the guest agent looks for. */
export const KATA_SHARED_TAG = 'kataShared';
/** Where the agent mounts the share in the guest (trailing slash as Kata sends it). */
export const GUEST_SHARED_DIR = '/run/kata-containers/shared/containers/';
export const DEFAULT_SHARED_ROOT = '/run/kata-containers/shared/sandboxes';
/** QEMU device id of the share. */
export const SHARE_FS_DEVICE_ID = 'kata-shared-fs';

/** What the agent mounts: the fields of the agent's `Storage` message (camelCase). */
export interface GuestStorage {
  driver: string;
  driverOptions: string[];
  source: string;
  fstype: string;
  /** One option per element; the agent joins them with commas. */
  options: string[];
  mountPoint: string;
}

/**
 * The sandbox's shared filesystem: Kata's host directory layout plus the transport that exports it.
 *
 * Lifecycle: `prepare()` before the VM starts (returns the device to cold-plug), then `shareRootfs` /
 * `shareMount` / `unshareContainer` per container, then `cleanup()` after the VM is gone.
 */
export interface ShareFs {
  readonly kind: ShareFsKind;
  /** `<sharedRoot>/<sandboxId>`; the host side of the guest's shared dir is its `shared/`. */
  readonly sandboxDir: string;
  /**
   * Creates `mounts/` (a shared bind mount of itself), `shared/` (a read-only slave bind of `mounts/`,
   * the exported dir), `private/` (staging for read-only binds) and starts the daemon if the kind has one.
   * Fails with AlreadyExists when the sandbox dir exists; undoes everything it made on failure.
   */
  prepare(opts?: { signal?: AbortSignal }): Promise<VmDevice>;
  /** The storage the agent must mount in CreateSandbox. */
  guestStorage(): GuestStorage;
  /** Binds the container's host rootfs to `mounts/<cid>/rootfs`; returns its guest path. */
  shareRootfs(containerId: string, hostRootfsDir: string): Promise<string>;
  /** Shares a host file as `mounts/<cid>-<16 hex>-<basename(destination)>`; returns its guest path. */
  shareFile(containerId: string, hostSource: string, destination: string, readonly: boolean): Promise<string>;
  /** Same naming for a file or directory (OCI bind mounts). Read-only ones go through `private/`. */
  shareMount(containerId: string, hostSource: string, destination: string, readonly: boolean): Promise<string>;
  /** Unmounts and removes everything shared for the container. Idempotent. */
  unshareContainer(containerId: string): Promise<void>;
  /** Host process ids of the daemon serving the share (empty for 9p, which QEMU serves). */
  pids(): number[];
  /**
   * Stops the daemon, unmounts everything under the sandbox dir and removes it. Idempotent, works on a
   * fresh instance too (after a restart), never follows a symlink out of the sandbox dir.
   */
  cleanup(): Promise<void>;
}

/** The last component of an OCI mount destination, refused if it could name anything but one entry. */
export function shareNameComponent(destination: string): string {
  if (typeof destination !== 'string' || destination.includes('\0')) {
    throw errors.invalid('KATA_INVALID_MOUNT', `mount destination ${JSON.stringify(destination)} is not valid`);
  }
  const base = path.posix.basename(destination);
  if (base === '' || base === '.' || base === '..' || /[\n\r/]/.test(base) || base.length > 200) {
    throw errors.invalid('KATA_INVALID_MOUNT', `mount destination ${JSON.stringify(destination)} has no usable name`);
  }
  return base;
}

function absolute(p: string, what: string): string {
  if (typeof p !== 'string' || p.includes('\0') || !path.isAbsolute(p)) {
    throw errors.invalid('KATA_INVALID_PATH', `${what} ${JSON.stringify(p)} must be an absolute path`);
  }
  return p;
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
}

/** Creates an empty file to bind a file on; O_EXCL, so an existing entry (or symlink) is never reused. */
async function createFileMountPoint(p: string): Promise<void> {
  const fh = await open(p, 'wx', 0o600);
  await fh.close();
}

/**
 * Removes `p` and what is below it without crossing a mount point or following a symlink (lstat only;
 * links are unlinked, not followed).
 */
async function removeTree(p: string, mountPoints: ReadonlySet<string>): Promise<void> {
  let st;
  try {
    st = await lstat(p);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  if (mountPoints.has(p)) {
    throw errors.precondition('KATA_SHAREFS_BUSY', `${p} is still a mount point; not removing it`);
  }
  if (st.isDirectory()) {
    for (const name of await readdir(p)) await removeTree(path.join(p, name), mountPoints);
    await rmdir(p);
  } else {
    await unlink(p);
  }
}

/** Unmounts everything at or below `p`, then removes it; refuses to delete through a leftover mount. */
async function unmountAndRemove(p: string): Promise<void> {
  await unmountTree(p);
  const mounts = await listMounts();
  await removeTree(p, new Set(mounts.map((m) => m.mountPoint)));
}

/**
 * Kata's host-side directory layout for one sandbox (`kata_agent.go` setupSharedPath and
 * mountSharedDirMounts), shared by every ShareFs kind.
 *
 *   mounts/   bind of itself, own shared peer group: the runtime binds into it
 *   shared/   read-only slave bind of mounts/: what is exported to the guest. New binds in mounts/
 *             propagate into it (and into virtiofsd's mount namespace, which holds a slave copy).
 *   private/  bind of itself, private: read-only staging that must not propagate anywhere
 */
export class KataSharedDir {
  readonly sandboxId: string;
  private readonly sharedRoot: string;
  private readonly log: Logger;
  /** Resolved at prepare (mountinfo shows resolved paths). */
  private resolvedRoot: string | undefined;
  /** Per container: the names under mounts/ it owns. */
  private readonly shared = new Map<string, Set<string>>();

  constructor(opts: { sandboxId: string; sharedRoot?: string }, log: Logger) {
    checkId(opts.sandboxId, 'sandbox id');
    this.sandboxId = opts.sandboxId;
    this.sharedRoot = absolute(opts.sharedRoot ?? DEFAULT_SHARED_ROOT, 'sharedRoot');
    this.log = log;
  }

  get sandboxDir(): string {
    return path.join(this.resolvedRoot ?? path.resolve(this.sharedRoot), this.sandboxId);
  }
  get mountsDir(): string {
    return path.join(this.sandboxDir, 'mounts');
  }
  get sharedDir(): string {
    return path.join(this.sandboxDir, 'shared');
  }
  get privateDir(): string {
    return path.join(this.sandboxDir, 'private');
  }

  private async resolveRoot(create: boolean): Promise<void> {
    if (create) await mkdir(this.sharedRoot, { recursive: true, mode: 0o700 });
    try {
      this.resolvedRoot = await realpath(this.sharedRoot);
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
    }
  }

  async prepare(): Promise<void> {
    await this.resolveRoot(true);
    const dir = this.sandboxDir;
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (err) {
      if (isErrno(err, 'EEXIST')) {
        throw new KataError('AlreadyExists', 'KATA_SHAREFS_EXISTS', `shared dir ${dir} already exists (clean it up first)`);
      }
      throw wrapError(`create ${dir}`, err);
    }
    try {
      await mkdir(this.mountsDir, { mode: 0o750 });
      await mkdir(this.sharedDir, { mode: 0o750 });
      await mkdir(this.privateDir, { mode: 0o700 });
      // Own peer group: binds made in mounts/ reach shared/ and its copies, and nothing of the host.
      await bindMount(this.mountsDir, this.mountsDir);
      await makePrivate(this.mountsDir);
      await makeShared(this.mountsDir);
      await bindMount(this.mountsDir, this.sharedDir);
      await makeSlave(this.sharedDir);
      await remountReadOnly(this.sharedDir);
      await bindMount(this.privateDir, this.privateDir);
      await makePrivate(this.privateDir);
      this.log.debug({ dir }, 'shared dir layout created');
    } catch (err) {
      await this.cleanup().catch((e: unknown) => this.log.warn({ err: e }, 'undo shared dir layout failed'));
      throw wrapError('prepare shared dir', err);
    }
  }

  private track(containerId: string, name: string): void {
    let names = this.shared.get(containerId);
    if (!names) this.shared.set(containerId, (names = new Set()));
    names.add(name);
  }

  private async ensurePrepared(): Promise<void> {
    if (this.resolvedRoot === undefined) await this.resolveRoot(false);
    try {
      const st = await lstat(this.mountsDir);
      if (st.isDirectory()) return;
    } catch {
      // fall through
    }
    throw errors.precondition('KATA_SHAREFS_NOT_PREPARED', `shared dir ${this.sandboxDir} is not prepared`);
  }

  async shareRootfs(containerId: string, hostRootfsDir: string): Promise<string> {
    checkId(containerId, 'container id');
    absolute(hostRootfsDir, 'rootfs');
    await this.ensurePrepared();
    const cdir = path.join(this.mountsDir, containerId);
    const target = path.join(cdir, 'rootfs');
    const undo = new CleanupStack(this.log);
    try {
      try {
        await mkdir(cdir, { mode: 0o750 });
        undo.push(`rmdir ${cdir}`, () => rmdir(cdir));
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
      }
      this.track(containerId, containerId);
      try {
        await mkdir(target, { mode: 0o755 });
      } catch (err) {
        if (!isErrno(err, 'EEXIST')) throw err;
        throw new KataError('AlreadyExists', 'KATA_SHAREFS_EXISTS', `rootfs of ${containerId} is already shared`);
      }
      undo.push(`rmdir ${target}`, () => rmdir(target));
      await bindMount(hostRootfsDir, target);
    } catch (err) {
      await undo.run();
      throw wrapError(`share rootfs of ${containerId}`, err);
    }
    this.log.debug({ containerId, hostRootfsDir }, 'rootfs shared');
    return path.posix.join(GUEST_SHARED_DIR, containerId, 'rootfs');
  }

  async shareMount(
    containerId: string,
    hostSource: string,
    destination: string,
    readonly: boolean,
    requireFile = false,
  ): Promise<string> {
    checkId(containerId, 'container id');
    absolute(hostSource, 'mount source');
    const base = shareNameComponent(destination);
    await this.ensurePrepared();
    const name = `${containerId}-${randomBytes(8).toString('hex')}-${base}`;
    const target = path.join(this.mountsDir, name);
    const undo = new CleanupStack(this.log);
    try {
      let isDir: boolean;
      try {
        isDir = (await stat(hostSource)).isDirectory();
      } catch (err) {
        throw errors.notFound('KATA_SHAREFS_SOURCE', `mount source ${hostSource}: ${(err as Error).message}`, err);
      }
      if (requireFile && isDir) {
        throw errors.invalid('KATA_INVALID_MOUNT', `${hostSource} is a directory, not a file`);
      }
      const makePoint = (p: string) => (isDir ? mkdir(p, { mode: 0o750 }) : createFileMountPoint(p));
      const removePoint = (p: string) => (isDir ? rmdir(p) : unlink(p));
      await makePoint(target);
      undo.push(`remove ${target}`, () => removePoint(target));
      if (readonly) {
        // A ro remount does not propagate into virtiofsd's namespace: make the ro mount privately in
        // private/, then bind it (flags and all) into mounts/ so every propagated copy is born read-only.
        const staging = path.join(this.privateDir, name);
        await makePoint(staging);
        try {
          await bindMount(hostSource, staging, { readonly: true });
          try {
            await bindMount(staging, target);
          } finally {
            await unmount(staging).catch(() => unmount(staging, { lazy: true }));
          }
        } finally {
          await removePoint(staging).catch((e: unknown) => this.log.warn({ err: e, staging }, 'remove staging failed'));
        }
      } else {
        await bindMount(hostSource, target);
      }
      this.track(containerId, name);
    } catch (err) {
      await undo.run();
      throw wrapError(`share ${hostSource} for ${containerId}`, err);
    }
    this.log.debug({ containerId, hostSource, name, readonly }, 'mount shared');
    return path.posix.join(GUEST_SHARED_DIR, name);
  }

  async unshareContainer(containerId: string): Promise<void> {
    checkId(containerId, 'container id');
    if (this.resolvedRoot === undefined) await this.resolveRoot(false);
    const names = new Set(this.shared.get(containerId) ?? []);
    // The rootfs dir name is unambiguous even without our in-memory record (e.g. after a restart).
    names.add(containerId);
    const failures: unknown[] = [];
    for (const name of names) {
      try {
        await unmountAndRemove(path.join(this.mountsDir, name));
        // Normally gone by propagation; a copy left in shared/ would still be exported.
        await unmountTree(path.join(this.sharedDir, name));
      } catch (err) {
        failures.push(err);
      }
    }
    if (failures.length > 0) {
      throw wrapError(`unshare container ${containerId}`, failures[0]);
    }
    this.shared.delete(containerId);
  }

  async cleanup(): Promise<void> {
    if (this.resolvedRoot === undefined) await this.resolveRoot(false);
    const dir = this.sandboxDir;
    let st;
    try {
      st = await lstat(dir);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return;
      throw err;
    }
    if (!st.isDirectory()) {
      // A symlink or file where our dir should be: remove the entry itself, never what it points to.
      this.log.warn({ dir }, 'sandbox shared dir is not a directory; removing the entry only');
      await unlink(dir);
      return;
    }
    try {
      await unmountAndRemove(dir);
    } catch (err) {
      const left = await mountsUnder(dir).catch(() => []);
      throw wrapError(
        `clean up shared dir ${dir}` + (left.length > 0 ? ` (still mounted: ${left.map((m) => m.mountPoint).join(', ')})` : ''),
        err,
      );
    }
    this.shared.clear();
    this.log.debug({ dir }, 'shared dir removed');
  }
}
