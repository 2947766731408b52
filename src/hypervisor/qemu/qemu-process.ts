/**
 * The QEMU process: spawned detached (its own session and process group, so one signal reaches QEMU and any
 * helper it forks, e.g. the `cat` of a migration), stdio to a log file (no pipe ties QEMU's life to ours), and
 * optionally inside a network namespace through util-linux `nsenter` (it execs, so the pid stays QEMU's).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type { VmExit } from '../hypervisor.js';

export interface SpawnQemuOptions {
  binary: string;
  args: string[];
  /** QEMU's stdout and stderr go here (appended). */
  logPath: string;
  netnsPath?: string;
  nsenterPath?: string;
  /** Opened read-write and passed to QEMU as fds 3, 4, ... (e.g. macvtap tap nodes). */
  passFdPaths?: string[];
}

export class QemuProcess {
  readonly pid: number | undefined;
  /** Resolves once, when the process is gone (or could not be started). */
  readonly exit: Promise<VmExit>;
  private exitInfo: VmExit | undefined;
  private spawnErr: Error | undefined;
  private readonly child: ChildProcess;

  constructor(opts: SpawnQemuOptions) {
    let cmd = opts.binary;
    let argv = opts.args;
    if (opts.netnsPath) {
      cmd = opts.nsenterPath ?? 'nsenter';
      argv = [`--net=${opts.netnsPath}`, '--', opts.binary, ...opts.args];
    }
    const fd = fs.openSync(opts.logPath, 'a', 0o600);
    const passed: number[] = [];
    let settle!: (e: VmExit) => void;
    this.exit = new Promise<VmExit>((resolve) => (settle = resolve));
    try {
      for (const p of opts.passFdPaths ?? []) passed.push(fs.openSync(p, 'r+'));
      this.child = spawn(cmd, argv, { stdio: ['ignore', fd, fd, ...passed], detached: true });
    } finally {
      fs.closeSync(fd);
      // QEMU has its own copies now (nsenter keeps them across its exec).
      for (const p of passed) fs.closeSync(p);
    }
    this.pid = this.child.pid;
    const finish = (e: VmExit) => {
      if (this.exitInfo) return;
      this.exitInfo = e;
      settle(e);
    };
    this.child.on('exit', (code, signal) => finish({ code, signal }));
    this.child.on('error', (err) => {
      // Only a failed spawn ends the process here; other errors (a failed signal) do not mean it exited.
      if (this.child.pid === undefined) {
        this.spawnErr = err;
        finish({ code: null, signal: null });
      }
    });
  }

  get exited(): boolean {
    return this.exitInfo !== undefined;
  }

  get exitStatus(): VmExit | undefined {
    return this.exitInfo;
  }

  /** Set when the binary could not be executed at all (e.g. ENOENT). */
  get spawnError(): Error | undefined {
    return this.spawnErr;
  }

  /** Signals the whole process group. A no-op once the process has exited (its pid may be reused). */
  signalGroup(signal: NodeJS.Signals): void {
    if (this.exited || this.pid === undefined) return;
    try {
      process.kill(-this.pid, signal);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  /** SIGKILL the group and wait until the process is reaped. */
  async kill(): Promise<VmExit> {
    this.signalGroup('SIGKILL');
    return this.exit;
  }
}
