import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readFile, rmdir, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { sleep } from '../../base/deadline.js';
import { errors, wrapError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import {
  GUEST_SHARED_DIR,
  KATA_SHARED_TAG,
  KataSharedDir,
  SHARE_FS_DEVICE_ID,
  type GuestStorage,
  type ShareFs,
} from './share-fs.js';

export const DEFAULT_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
/**
 * `always`: the guest keeps its page cache across opens. PLATFORM.md measured `auto` re-reading a 99 MB
 * binary on every exec (1.4 to 1.8 s each); the price is that host-side changes to a shared file may be
 * seen late by the guest.
 */
export const DEFAULT_VIRTIOFS_CACHE = 'always';
export const DEFAULT_VIRTIOFS_QUEUE_SIZE = 1024;

export interface VirtioFsOptions {
  sandboxId: string;
  /** Per-VM host dir (Kata: /run/vc/vm/<sandboxId>): holds vhost-fs.sock, virtiofsd.log, virtiofsd.pid. */
  vmDir: string;
  sharedRoot?: string;
  /** Kata `virtio_fs_daemon`. */
  daemonPath?: string;
  /** Kata `virtio_fs_cache`: auto | always | none (`never` is accepted as Kata's name for none). */
  cache?: string;
  /** Kata `virtio_fs_extra_args`, appended as-is (they may not override source or socket). */
  extraArgs?: string[];
  /** Kata `virtio_fs_queue_size`. */
  queueSize?: number;
  /** How long the daemon has to create its listening socket. */
  startTimeoutMs?: number;
  /** How long the daemon has to exit on SIGTERM before SIGKILL. */
  stopTimeoutMs?: number;
}

const CACHE_MODES: Record<string, string> = { auto: 'auto', always: 'always', none: 'none', never: 'none' };
const LOG_TAIL_BYTES = 4096;
const POLL_MS = 10;

/** Maps Kata's cache names onto the C virtiofsd's; throws InvalidArgument for the others (`metadata`). */
export function virtiofsdCacheMode(cache: string): string {
  const mode = CACHE_MODES[cache];
  if (!mode) {
    throw errors.invalid('KATA_CONFIG_INVALID', `virtio_fs_cache ${JSON.stringify(cache)}: the C virtiofsd knows auto, always, none`);
  }
  return mode;
}

/** The daemon's argument list (pure, so it can be checked without starting anything). */
export function virtiofsdArgs(opts: { socketPath: string; sourceDir: string; cache: string; extraArgs: readonly string[] }): string[] {
  for (const arg of opts.extraArgs) {
    if (typeof arg !== 'string' || arg.includes('\0')) {
      throw errors.invalid('KATA_CONFIG_INVALID', `virtio_fs_extra_args: ${JSON.stringify(arg)} is not valid`);
    }
    if (/(^|[\s,])source=|--socket-path|--fd|--daemonize|--shared-dir/.test(arg)) {
      throw errors.invalid('KATA_CONFIG_INVALID', `virtio_fs_extra_args may not override ${JSON.stringify(arg)}`);
    }
  }
  return [
    `--socket-path=${opts.socketPath}`,
    '-o',
    `source=${opts.sourceDir}`,
    '-o',
    `cache=${virtiofsdCacheMode(opts.cache)}`,
    ...opts.extraArgs,
  ];
}

/** True when a unix socket bound at `socketPath` is listening (seen in /proc/net/unix). */
async function isListening(socketPath: string): Promise<boolean> {
  try {
    if (!(await lstat(socketPath)).isSocket()) return false;
  } catch {
    return false;
  }
  const table = await readFile('/proc/net/unix', 'utf8').catch(() => '');
  for (const line of table.split('\n')) {
    if (!line.endsWith(` ${socketPath}`)) continue;
    const flags = parseInt(line.trim().split(/\s+/)[3] ?? '0', 16);
    if (flags & 0x10000) return true; // __SO_ACCEPTCON: listen() was called
  }
  return false;
}

async function tail(file: string): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.slice(-LOG_TAIL_BYTES).trim();
  } catch {
    return '';
  }
}

/** Process state letter from /proc/<pid>/stat, or undefined when the pid is gone. */
async function procState(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

async function isGone(pid: number): Promise<boolean> {
  const s = await procState(pid);
  return s === undefined || s === 'Z' || s === 'X';
}

function killGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // Already gone.
  }
}

/**
 * virtio-fs through QEMU's C virtiofsd. The daemon exports `shared/`; once QEMU connects it moves into
 * its own mount namespace (a slave copy of the host's), pivots into `shared/`, and forks a worker. Binds
 * made later in `mounts/` reach it by propagation (mounts/ shared -> shared/ slave -> its copy).
 */
export class VirtioFs implements ShareFs {
  readonly kind = 'virtio-fs' as const;
  private readonly dir: KataSharedDir;
  private readonly log: Logger;
  private readonly vmDir: string;
  private readonly daemonPath: string;
  private readonly cache: string;
  private readonly extraArgs: string[];
  private readonly queueSize: number;
  private readonly startTimeoutMs: number;
  private readonly stopTimeoutMs: number;
  private child: ChildProcess | undefined;
  private childExit: Promise<void> | undefined;
  private stopping = false;

  constructor(opts: VirtioFsOptions, log: Logger) {
    this.log = log.child({ subsystem: 'sharefs', kind: 'virtio-fs', sandboxId: opts.sandboxId });
    this.dir = new KataSharedDir(opts, this.log);
    if (typeof opts.vmDir !== 'string' || !path.isAbsolute(opts.vmDir) || /[\0\n]/.test(opts.vmDir)) {
      throw errors.invalid('KATA_CONFIG_INVALID', `vmDir ${JSON.stringify(opts.vmDir)} must be an absolute path`);
    }
    this.vmDir = opts.vmDir;
    this.daemonPath = opts.daemonPath ?? DEFAULT_VIRTIOFSD;
    if (!path.isAbsolute(this.daemonPath)) {
      throw errors.invalid('KATA_CONFIG_INVALID', `virtio_fs_daemon ${this.daemonPath} must be an absolute path`);
    }
    this.cache = opts.cache ?? DEFAULT_VIRTIOFS_CACHE;
    virtiofsdCacheMode(this.cache);
    this.extraArgs = [...(opts.extraArgs ?? [])];
    this.queueSize = opts.queueSize ?? DEFAULT_VIRTIOFS_QUEUE_SIZE;
    this.startTimeoutMs = opts.startTimeoutMs ?? 5000;
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 2000;
  }

  get sandboxDir(): string {
    return this.dir.sandboxDir;
  }
  get socketPath(): string {
    return path.join(this.vmDir, 'vhost-fs.sock');
  }
  get logPath(): string {
    return path.join(this.vmDir, 'virtiofsd.log');
  }
  get pidPath(): string {
    return path.join(this.vmDir, 'virtiofsd.pid');
  }

  async prepare(opts: { signal?: AbortSignal } = {}): Promise<VmDevice> {
    await this.dir.prepare();
    try {
      await this.startDaemon(opts.signal);
    } catch (err) {
      await this.cleanup().catch((e: unknown) => this.log.warn({ err: e }, 'undo failed prepare'));
      throw wrapError('prepare virtio-fs', err);
    }
    return { kind: 'virtio-fs', id: SHARE_FS_DEVICE_ID, socketPath: this.socketPath, tag: KATA_SHARED_TAG, queueSize: this.queueSize };
  }

  private async startDaemon(signal?: AbortSignal): Promise<void> {
    if (this.child) throw errors.precondition('KATA_VIRTIOFSD_RUNNING', 'virtiofsd already started');
    this.stopping = false;
    await mkdir(this.vmDir, { recursive: true, mode: 0o750 });
    await this.removeSocket();
    const args = virtiofsdArgs({ socketPath: this.socketPath, sourceDir: this.dir.sharedDir, cache: this.cache, extraArgs: this.extraArgs });
    const logFile = await open(
      this.logPath,
      constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
      0o600,
    );
    let exitInfo: string | undefined;
    let spawnError: Error | undefined;
    let child: ChildProcess;
    try {
      // Own process group: cleanup signals the daemon and the worker it forks in one go.
      child = spawn(this.daemonPath, args, {
        stdio: ['ignore', logFile.fd, logFile.fd],
        detached: true,
        env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' },
      });
      // Listeners before any await: a failed spawn reports 'error' on the next tick.
      this.childExit = new Promise<void>((resolve) => {
        child.once('exit', (code, sig) => {
          exitInfo = sig ? `killed by ${sig}` : `exit code ${code}`;
          resolve();
        });
        child.on('error', (err) => {
          spawnError = err;
          if (child.pid === undefined) resolve(); // never started: no exit event will come
        });
      });
    } finally {
      await logFile.close();
    }
    this.child = child;
    const deadline = Date.now() + this.startTimeoutMs;
    for (;;) {
      if (spawnError && child.pid === undefined) {
        throw errors.unavailable('KATA_VIRTIOFSD_START', `start ${this.daemonPath}: ${spawnError.message}`, spawnError);
      }
      if (exitInfo !== undefined) {
        const out = await tail(this.logPath);
        throw errors.unavailable('KATA_VIRTIOFSD_EXITED', `virtiofsd exited early (${exitInfo})${out ? `: ${out}` : ''}`);
      }
      if (signal?.aborted) throw errors.cancelled('KATA_CANCELLED', 'start virtiofsd: cancelled');
      if (await isListening(this.socketPath)) break;
      if (Date.now() > deadline) {
        const out = await tail(this.logPath);
        throw errors.deadline(
          'KATA_VIRTIOFSD_TIMEOUT',
          `virtiofsd did not listen on ${this.socketPath} within ${this.startTimeoutMs} ms${out ? `: ${out}` : ''}`,
        );
      }
      await sleep(POLL_MS);
    }
    await writeFile(this.pidPath, `${child.pid}\n`, { mode: 0o600 });
    child.once('exit', (code, sig) => {
      if (this.stopping) return;
      // A clean exit is virtiofsd following QEMU out (the VM stopped first); anything else is a failure.
      void tail(this.logPath).then((out) =>
        (code === 0 ? this.log.debug.bind(this.log) : this.log.warn.bind(this.log))(
          { pid: child.pid, code, signal: sig, stderr: out },
          'virtiofsd exited while the sandbox runs',
        ),
      );
    });
    this.log.info({ pid: child.pid, socket: this.socketPath, cache: this.cache }, 'virtiofsd started');
  }

  guestStorage(): GuestStorage {
    // No "dax": QEMU 7.2 has no DAX window for virtio-fs.
    return { driver: 'virtio-fs', driverOptions: [], source: KATA_SHARED_TAG, fstype: 'virtiofs', options: [], mountPoint: GUEST_SHARED_DIR };
  }

  shareRootfs(containerId: string, hostRootfsDir: string): Promise<string> {
    return this.dir.shareRootfs(containerId, hostRootfsDir);
  }

  shareFile(containerId: string, hostSource: string, destination: string, readonly: boolean): Promise<string> {
    return this.dir.shareMount(containerId, hostSource, destination, readonly, true);
  }

  shareMount(containerId: string, hostSource: string, destination: string, readonly: boolean): Promise<string> {
    return this.dir.shareMount(containerId, hostSource, destination, readonly);
  }

  unshareContainer(containerId: string): Promise<void> {
    return this.dir.unshareContainer(containerId);
  }

  pids(): number[] {
    const c = this.child;
    return c?.pid !== undefined && c.exitCode === null && c.signalCode === null ? [c.pid] : [];
  }

  async cleanup(): Promise<void> {
    const failures: unknown[] = [];
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        failures.push(wrapError(what, err));
      }
    };
    await step('stop virtiofsd', () => this.stopDaemon());
    await step('remove virtiofsd files', () => this.removeFiles());
    await step('remove shared dir', () => this.dir.cleanup());
    if (failures.length > 0) throw wrapError('clean up virtio-fs', failures[0]);
  }

  private async stopDaemon(): Promise<void> {
    this.stopping = true;
    const child = this.child;
    if (child?.pid !== undefined) {
      const pid = child.pid;
      if (child.exitCode === null && child.signalCode === null) {
        killGroup(pid, 'SIGTERM');
        const exited = await Promise.race([this.childExit!.then(() => true), sleep(this.stopTimeoutMs).then(() => false)]);
        if (!exited) {
          killGroup(pid, 'SIGKILL');
          await this.childExit;
        }
      }
      this.log.info({ pid }, 'virtiofsd stopped');
    } else if (!child) {
      await this.stopStrayDaemon();
    }
    this.child = undefined;
  }

  /** After a restart: the pid file names a daemon we no longer hold; stop it if it is really ours. */
  private async stopStrayDaemon(): Promise<void> {
    let pid: number;
    try {
      pid = parseInt(await readFile(this.pidPath, 'utf8'), 10);
    } catch {
      return;
    }
    if (!Number.isInteger(pid) || pid <= 1) return;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.split('\0').includes(`--socket-path=${this.socketPath}`)) return;
    killGroup(pid, 'SIGTERM');
    const deadline = Date.now() + this.stopTimeoutMs;
    while (!(await isGone(pid))) {
      if (Date.now() > deadline) {
        killGroup(pid, 'SIGKILL');
        break;
      }
      await sleep(POLL_MS);
    }
    this.log.info({ pid }, 'stray virtiofsd stopped');
  }

  private async removeSocket(): Promise<void> {
    try {
      const st = await lstat(this.socketPath);
      if (!st.isSocket()) {
        throw errors.precondition('KATA_VIRTIOFSD_SOCKET', `${this.socketPath} exists and is not a socket`);
      }
      await unlink(this.socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  private async removeFiles(): Promise<void> {
    await this.removeSocket();
    for (const f of [this.pidPath, this.logPath]) {
      await unlink(f).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    // vmDir belongs to the hypervisor driver; remove it only if nothing else is in it.
    await rmdir(this.vmDir).catch(() => undefined);
  }
}
