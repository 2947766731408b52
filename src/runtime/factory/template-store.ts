/**
 * Templates on the host. Layout (Kata keeps one template in `template_path`; kata-ts names it by its key so a
 * template can never be taken for another configuration's):
 *
 *   <template_path>/                 a tmpfs (size: memory + 8 MiB, grown when a rebuild needs room)
 *     tpl-<key 16 hex>/              one complete template, published by an atomic rename
 *       memory                       guest RAM as the template left it; 0444, never written again
 *       state                        device state (QEMU migration stream without RAM); 0444
 *       template.json                key, inputs, sizes, and the identity (inode, size, mtime) of both files
 *     .build-<random>/               a template being built (removed by the next build if its builder died)
 *   /run/kata-ts/template-locks/<hash of template_path>.lock
 *                                    builders and destroy hold it exclusively (outside the tmpfs, which
 *                                    may not be mounted yet, and outside the runtime's state dirs)
 *
 * Clones never take the lock: they pin a template by opening its two files and checking them against
 * template.json, then hand QEMU `/proc/<our pid>/fd/<n>` paths. A template removed or rebuilt after that
 * cannot affect them (tmpfs keeps unlinked pages while they are open or mapped).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, readFile, realpath, rename, rm, rmdir, statfs, writeFile, type FileHandle } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { Logger } from '../../base/logger.js';
import { mountFs, unmount } from '../../platform/mount.js';
import { listMounts } from '../../platform/mountinfo.js';
import { FileLock } from './file-lock.js';
import type { TemplateInputs } from './template-key.js';

export const TEMPLATE_LOCK_DIR = '/run/kata-ts/template-locks';
/** Templates kept per template path (of one family: the VM shapes built last). Each costs its touched RAM in tmpfs. */
export const MAX_TEMPLATES = 3;
/** Room for the device state and the build's sockets and logs, on top of guest RAM (Kata: 8 MiB). */
export const TEMPLATE_EXTRA_MIB = 8;
const TMPFS_MAGIC = 0x01021994;
const MIB = 1024 * 1024;

export interface FileStamp {
  ino: number;
  size: number;
  mtimeMs: number;
}

/** template.json */
export interface TemplateMeta {
  schema: 1;
  key: string;
  /** The guest assets and QEMU the template was made from: templates of one family differ only in VM shape (see templateKey). */
  family: string;
  inputs: TemplateInputs;
  memoryMiB: number;
  createdAt: string;
  /** From starting the template VM to the published template. */
  buildMs: number;
  qemuVersion: string;
  memory: FileStamp;
  state: FileStamp;
}

/** A template held open for one clone start. */
export interface PinnedTemplate {
  dir: string;
  meta: TemplateMeta;
  /** `/proc/<pid>/fd/<n>`: valid while pinned, whatever happens to the template's names. */
  memoryPath: string;
  statePath: string;
  /** Closes the files; call once QEMU has mapped the memory and read the state. */
  release(): Promise<void>;
}

export type PinResult =
  | { kind: 'pinned'; template: PinnedTemplate }
  | { kind: 'missing' }
  /** Present but not usable (changed after creation, incomplete, other format): rebuild it. */
  | { kind: 'invalid'; reason: string };

export interface TemplateListing {
  dir: string;
  /** Undefined for a build in progress (or abandoned). */
  meta?: TemplateMeta;
  building: boolean;
  /** Bytes of tmpfs the memory file really uses (guest pages the template touched). */
  memoryAllocatedBytes?: number;
  stateBytes?: number;
  problem?: string;
}

/** `.failed-<key>.json`: the last failed build of a key. */
export interface BuildFailure {
  key: string;
  at: string;
  reason: string;
}

/** How long a failed build keeps sandboxes of its key on cold boots before one tries again. */
export const BUILD_RETRY_AFTER_MS = 10 * 60_000;

export interface StoreMount {
  path: string;
  exists: boolean;
  mounted: boolean;
  fsType?: string;
  sizeBytes?: number;
  usedBytes?: number;
}

export interface DestroyResult {
  removed: string[];
  /** The tmpfs was unmounted. */
  unmounted: boolean;
  /** The tmpfs was busy (running clones map its files): detached, freed when the last clone exits. */
  detached: boolean;
}

function stampOf(st: { ino: number; size: number; mtimeMs: number }): FileStamp {
  return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs;
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
}

export class TemplateStore {
  readonly root: string;
  private readonly log: Logger;

  constructor(templatePath: string, log: Logger) {
    this.root = resolve(templatePath);
    this.log = log.child({ subsystem: 'vm-template' });
  }

  static dirName(key: string): string {
    return `tpl-${key.slice(0, 16)}`;
  }

  dirFor(key: string): string {
    return join(this.root, TemplateStore.dirName(key));
  }

  get lockPath(): string {
    const h = createHash('sha256').update(this.root).digest('hex').slice(0, 16);
    return join(TEMPLATE_LOCK_DIR, `${h}.lock`);
  }

  /** The builders' lock: building, pruning and destroying happen under it. */
  lock(opts: { timeoutMs: number; signal?: AbortSignal }): Promise<FileLock> {
    return FileLock.acquire(this.lockPath, { mode: 'exclusive', ...opts });
  }

  /** Opens the template for `key` and checks it is complete and unchanged since it was made. No lock needed. */
  async pin(key: string): Promise<PinResult> {
    const dir = this.dirFor(key);
    let meta: TemplateMeta;
    try {
      meta = JSON.parse(await readFile(join(dir, 'template.json'), 'utf8')) as TemplateMeta;
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return { kind: 'missing' };
      return { kind: 'invalid', reason: `template.json unreadable: ${(err as Error).message}` };
    }
    if (meta.schema !== 1 || meta.key !== key) return { kind: 'invalid', reason: 'template.json names another key or format' };
    const handles: FileHandle[] = [];
    const closeAll = async () => {
      for (const h of handles.splice(0)) await h.close().catch(() => undefined);
    };
    try {
      const mem = await open(join(dir, 'memory'), 'r');
      handles.push(mem);
      const state = await open(join(dir, 'state'), 'r');
      handles.push(state);
      const [ms, ss] = await Promise.all([mem.stat(), state.stat()]);
      // Same inodes as recorded: the pair comes from one build even if the dir was replaced meanwhile.
      // Same size and mtime: nothing wrote the files after creation (clones map memory privately).
      if (!sameStamp(stampOf(ms), meta.memory) || !sameStamp(stampOf(ss), meta.state)) {
        await closeAll();
        const why = ms.ino !== meta.memory.ino || ss.ino !== meta.state.ino ? 'replaced while being opened' : 'modified after creation';
        return { kind: 'invalid', reason: `template files ${why}` };
      }
      const pinned: PinnedTemplate = {
        dir,
        meta,
        memoryPath: `/proc/${process.pid}/fd/${mem.fd}`,
        statePath: `/proc/${process.pid}/fd/${state.fd}`,
        release: closeAll,
      };
      return { kind: 'pinned', template: pinned };
    } catch (err) {
      await closeAll();
      if (isErrno(err, 'ENOENT')) return { kind: 'missing' };
      return { kind: 'invalid', reason: `cannot open template files: ${(err as Error).message}` };
    }
  }

  /** Where the tmpfs stands (for status and for sizing). */
  async mountState(): Promise<StoreMount> {
    const out: StoreMount = { path: this.root, exists: false, mounted: false };
    try {
      await lstat(this.root);
      out.exists = true;
    } catch {
      return out;
    }
    // mountinfo shows resolved paths.
    const real = await realpath(this.root).catch(() => this.root);
    const m = (await listMounts()).filter((e) => e.mountPoint === real).at(-1);
    if (m) {
      out.mounted = true;
      out.fsType = m.fsType;
      const st = await statfs(this.root);
      out.sizeBytes = st.blocks * st.bsize;
      out.usedBytes = (st.blocks - st.bfree) * st.bsize;
    }
    return out;
  }

  /**
   * Makes `template_path` a tmpfs with room for one more template of `memoryMiB`. An existing tmpfs is
   * grown when old templates still hold pages (running clones keep removed files alive). If mounting is
   * not possible and the directory already lives on a tmpfs, the directory is used as it is.
   */
  async prepare(memoryMiB: number): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    const need = (memoryMiB + TEMPLATE_EXTRA_MIB) * MIB;
    const m = await this.mountState();
    if (!m.mounted) {
      try {
        await mountFs('tmpfs', 'tmpfs', this.root, [`size=${memoryMiB + TEMPLATE_EXTRA_MIB}m`, 'mode=0700', 'nodev', 'nosuid']);
        this.log.info({ path: this.root, sizeMiB: memoryMiB + TEMPLATE_EXTRA_MIB }, 'template tmpfs mounted');
        return;
      } catch (err) {
        const st = await statfs(this.root);
        if (st.type !== TMPFS_MAGIC) throw err;
        this.log.warn({ err, path: this.root }, 'cannot mount a tmpfs for templates; using the directory (it is on a tmpfs)');
        return;
      }
    }
    if (m.fsType !== 'tmpfs') return;
    const st = await statfs(this.root);
    const free = st.bavail * st.bsize;
    if (free >= need) return;
    const sizeMiB = Math.ceil((st.blocks * st.bsize + (need - free)) / MIB);
    await mountFs('tmpfs', 'tmpfs', this.root, ['remount', `size=${sizeMiB}m`]);
    this.log.info({ path: this.root, sizeMiB }, 'template tmpfs grown (removed templates are still mapped by clones)');
  }

  /** A fresh build directory (under the lock). */
  async newBuildDir(): Promise<string> {
    const dir = join(this.root, `.build-${randomBytes(6).toString('hex')}`);
    await mkdir(dir, { mode: 0o700 });
    return dir;
  }

  /**
   * Seals a finished build and makes it the template for its key: files read-only, identity recorded,
   * then one rename. Under the lock.
   */
  async publish(buildDir: string, meta: Omit<TemplateMeta, 'memory' | 'state' | 'schema'>): Promise<TemplateMeta> {
    const memory = join(buildDir, 'memory');
    const state = join(buildDir, 'state');
    await chmod(memory, 0o444);
    await chmod(state, 0o444);
    const full: TemplateMeta = {
      schema: 1,
      ...meta,
      memory: stampOf(await lstat(memory)),
      state: stampOf(await lstat(state)),
    };
    const metaPath = join(buildDir, 'template.json');
    await writeFile(metaPath, JSON.stringify(full, null, 2) + '\n', { mode: 0o444 });
    const target = this.dirFor(meta.key);
    await rm(target, { recursive: true, force: true });
    await rename(buildDir, target);
    this.log.info({ dir: target, key: meta.key, buildMs: meta.buildMs }, 'template published');
    return full;
  }

  /**
   * Removes abandoned builds, templates of other families (made from other guest assets or QEMU: they can
   * never match again), and the oldest of `keep.family` beyond MAX_TEMPLATES (the VM shapes last built:
   * with and without a NIC, other sizes). `keep.key`'s template always stays; without `keep` everything
   * goes. Under the lock, so no build is running; a builder that died may have left its QEMU behind, which
   * is killed. Running clones are unaffected.
   */
  async prune(keep?: { key: string; family: string }): Promise<string[]> {
    const removed: string[] = [];
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return removed;
      throw err;
    }
    const keepDir = keep ? TemplateStore.dirName(keep.key) : undefined;
    const keepFailure = keep ? basename(this.failurePath(keep.key)) : undefined;
    const doomed: string[] = [];
    const sameFamily: { dir: string; createdAt: string }[] = [];
    for (const name of names) {
      if (name === keepDir || name === keepFailure) continue;
      if (name.startsWith('.failed-')) {
        await rm(join(this.root, name), { force: true });
        continue;
      }
      if (!name.startsWith('tpl-') && !name.startsWith('.build-')) continue;
      const dir = join(this.root, name);
      if (name.startsWith('.build-')) {
        killAbandonedBuilder(dir, this.log);
        doomed.push(dir);
        continue;
      }
      const meta = keep ? await this.metaOf(dir) : undefined;
      if (keep && meta?.family === keep.family) sameFamily.push({ dir, createdAt: meta.createdAt ?? '' });
      else doomed.push(dir);
    }
    // Newest first; the kept key takes one of the places.
    sameFamily.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    doomed.push(...sameFamily.slice(MAX_TEMPLATES - 1).map((t) => t.dir));
    for (const dir of doomed) {
      await rm(dir, { recursive: true, force: true });
      removed.push(dir);
    }
    if (removed.length > 0) this.log.info({ removed }, 'templates removed');
    return removed;
  }

  private async metaOf(dir: string): Promise<Partial<TemplateMeta> | undefined> {
    try {
      return JSON.parse(await readFile(join(dir, 'template.json'), 'utf8')) as Partial<TemplateMeta>;
    } catch {
      return undefined;
    }
  }

  private failurePath(key: string): string {
    return join(this.root, `.failed-${key.slice(0, 16)}.json`);
  }

  /**
   * Remembers that building `key` failed, so that starts in the next `BUILD_RETRY_AFTER_MS` boot cold at once
   * instead of each waiting for a build that fails again. Under the lock.
   */
  async recordFailure(key: string, reason: string): Promise<void> {
    const f: BuildFailure = { key, at: new Date().toISOString(), reason };
    await writeFile(this.failurePath(key), JSON.stringify(f) + '\n').catch((err) => this.log.warn({ err }, 'cannot record the template build failure'));
  }

  /** The last build failure of `key` if it is recent enough to skip building. */
  async recentFailure(key: string, now = Date.now()): Promise<BuildFailure | undefined> {
    try {
      const f = JSON.parse(await readFile(this.failurePath(key), 'utf8')) as BuildFailure;
      return f.key === key && now - Date.parse(f.at) < BUILD_RETRY_AFTER_MS ? f : undefined;
    } catch {
      return undefined;
    }
  }

  async clearFailure(key: string): Promise<void> {
    await rm(this.failurePath(key), { force: true });
  }

  /** Removes the template of `key` (found invalid). Under the lock. */
  async remove(key: string): Promise<void> {
    await rm(this.dirFor(key), { recursive: true, force: true });
  }

  async list(): Promise<TemplateListing[]> {
    let names: string[];
    try {
      names = (await readdir(this.root)).sort();
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
    const out: TemplateListing[] = [];
    for (const name of names) {
      if (name.startsWith('.failed-')) {
        try {
          const f = JSON.parse(await readFile(join(this.root, name), 'utf8')) as BuildFailure;
          out.push({ dir: join(this.root, name), building: false, problem: `build of key ${f.key.slice(0, 16)} failed at ${f.at}: ${f.reason}` });
        } catch {
          // being written or removed
        }
        continue;
      }
      if (!name.startsWith('tpl-') && !name.startsWith('.build-')) continue;
      const dir = join(this.root, name);
      const item: TemplateListing = { dir, building: name.startsWith('.build-') };
      try {
        const ms = await lstat(join(dir, 'memory'));
        item.memoryAllocatedBytes = ms.blocks * 512;
        item.stateBytes = (await lstat(join(dir, 'state')).catch(() => undefined))?.size;
      } catch {
        // a build that has not created its memory file yet
      }
      if (!item.building) {
        try {
          item.meta = JSON.parse(await readFile(join(dir, 'template.json'), 'utf8')) as TemplateMeta;
          const ms = await lstat(join(dir, 'memory'));
          if (!sameStamp(stampOf(ms), item.meta.memory)) item.problem = 'memory file modified after creation';
        } catch (err) {
          item.problem = `incomplete: ${(err as Error).message}`;
        }
      }
      out.push(item);
    }
    return out;
  }

  /**
   * Removes all templates and unmounts the tmpfs. Clones that run keep working: their memory stays mapped,
   * so a busy tmpfs is detached (lazy unmount) and freed by the kernel when the last clone exits.
   */
  async destroy(opts: { timeoutMs: number; signal?: AbortSignal }): Promise<DestroyResult> {
    const lock = await this.lock(opts);
    try {
      const result: DestroyResult = { removed: await this.prune(), unmounted: false, detached: false };
      const m = await this.mountState();
      if (m.mounted && m.fsType === 'tmpfs') {
        try {
          await unmount(this.root);
          result.unmounted = true;
        } catch (err) {
          this.log.warn({ err, path: this.root }, 'template tmpfs busy (clones map it); detaching it');
          await unmount(this.root, { lazy: true });
          result.detached = true;
        }
      }
      try {
        await rmdir(this.root);
      } catch (err) {
        if (!isErrno(err, 'ENOENT') && !isErrno(err, 'ENOTEMPTY') && !isErrno(err, 'EBUSY')) throw err;
      }
      return result;
    } finally {
      await lock.release();
    }
  }
}

/** A builder killed before it finished may have left its template QEMU running: its pid file says which. */
function killAbandonedBuilder(buildDir: string, log: Logger): void {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(join(buildDir, 'vm', 'qemu.pid'), 'utf8').trim(), 10);
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1) return;
  try {
    // Only a process whose command line names this build dir (the pid may have been reused).
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.includes(basename(buildDir))) return;
    process.kill(pid, 'SIGKILL');
    log.warn({ pid, buildDir }, 'killed the QEMU of an abandoned template build');
  } catch {
    // gone already
  }
}
