/**
 * An advisory lock on a file, held by a util-linux `flock` child process: Node has no flock(2). The kernel
 * drops the lock when the holder dies, so a crashed runtime never leaves a stale lock behind (an O_EXCL
 * lock file would), and waiting is done by the kernel, not by polling.
 *
 * The child runs `flock <mode> -w <sec> FILE -c 'echo locked; exec cat'`: "locked" on its stdout means
 * the lock is held; ending its stdin (or our own death, which closes the pipe) makes `cat` exit and
 * releases it.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { errors } from '../../base/errors.js';

const FLOCK = '/usr/bin/flock';
/** flock's exit status when `-w` expires (`-E`), chosen to be distinct from a command failure. */
const TIMEOUT_STATUS = 75;

export interface FileLockOptions {
  /** `shared` (many holders) or `exclusive` (one holder, no shared ones). */
  mode: 'shared' | 'exclusive';
  /** Give up after this long with DeadlineExceeded. */
  timeoutMs: number;
  signal?: AbortSignal;
}

export class FileLock {
  private released = false;

  private constructor(
    readonly path: string,
    private readonly child: ChildProcessByStdio<Writable, Readable, Readable>,
    private readonly gone: Promise<void>,
  ) {}

  /** Waits for the lock on `path` (created if missing, along with its folder). */
  static acquire(path: string, opts: FileLockOptions): Promise<FileLock> {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const seconds = Math.max(0, opts.timeoutMs / 1000).toFixed(3);
    const child = spawn(
      FLOCK,
      [opts.mode === 'shared' ? '--shared' : '--exclusive', '--timeout', seconds, '--conflict-exit-code', String(TIMEOUT_STATUS), path, '-c', 'echo locked; exec cat'],
      { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } },
    );
    const gone = new Promise<void>((resolve) => child.once('close', () => resolve()));
    return new Promise<FileLock>((resolve, reject) => {
      let out = '';
      let err = '';
      let settled = false;
      const finish = (e?: Error) => {
        if (settled) return;
        settled = true;
        opts.signal?.removeEventListener('abort', onAbort);
        if (e) {
          child.kill('SIGKILL');
          reject(e);
        } else {
          resolve(new FileLock(path, child, gone));
        }
      };
      const onAbort = () => finish(errors.cancelled('KATA_CANCELLED', `lock ${path}: cancelled`));
      if (opts.signal?.aborted) onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (d: string) => {
        out += d;
        if (out.includes('locked\n')) finish();
      });
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (d: string) => (err += d));
      child.once('error', (e) => finish(errors.unavailable('KATA_LOCK_FAILED', `lock ${path}: cannot run ${FLOCK}: ${e.message}`, e)));
      child.once('close', (code) => {
        if (code === TIMEOUT_STATUS) {
          finish(errors.deadline('KATA_LOCK_TIMEOUT', `lock ${path}: still held by another process after ${opts.timeoutMs} ms`));
        } else {
          finish(errors.unavailable('KATA_LOCK_FAILED', `lock ${path}: flock exited with status ${code}: ${err.trim()}`));
        }
      });
    });
  }

  /** Releases the lock and waits until the holder process is gone. Idempotent. */
  async release(): Promise<void> {
    if (!this.released) {
      this.released = true;
      this.child.stdin.end();
    }
    await this.gone;
  }
}

/** Runs `fn` while holding the lock on `path`. */
export async function withFileLock<T>(path: string, opts: FileLockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await FileLock.acquire(path, opts);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
