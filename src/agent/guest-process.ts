import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { errors } from '../base/errors.js';
import type { Logger } from '../base/logger.js';
import type { Socket } from 'node:net';
import { OutputBuffer } from './output-buffer.js';
import { makeStdioPipes } from './stdio-pipes.js';

/** The subset of node-pty the agent uses (loaded lazily: only terminal processes need it). */
interface Pty {
  pid: number;
  onData(cb: (data: string) => void): void;
  onExit(cb: (e: { exitCode: number; signal?: number }) => void): void;
  write(data: string | Buffer): void;
  resize(columns: number, rows: number): void;
  kill(signal?: string): void;
}
interface PtyModule {
  spawn(file: string, args: string[], opts: Record<string, unknown>): Pty;
}

let ptyModule: PtyModule | undefined;
function loadPty(): PtyModule {
  if (!ptyModule) {
    const require = createRequire(import.meta.url);
    ptyModule = require('node-pty') as PtyModule;
  }
  return ptyModule;
}

export type ProcessState = 'created' | 'running' | 'exited';

/**
 * One process the agent runs for the host: the `crun run` of a container's init process or a `crun exec`.
 * Its stdio is either three pipes or, for terminal processes, one PTY (stdout carries both streams).
 */
export class GuestProcess {
  readonly stdout = new OutputBuffer();
  readonly stderr = new OutputBuffer();
  private child?: ChildProcess;
  private stdinPipe?: Socket;
  private pty?: Pty;
  private status?: number;
  private state: ProcessState = 'created';
  private exitWaiters: ((status: number) => void)[] = [];
  private stdinClosed = false;

  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly terminal: boolean,
    private readonly log: Logger,
    private readonly consoleSize?: { rows: number; columns: number },
  ) {}

  get processState(): ProcessState {
    return this.state;
  }

  /** Pid of the crun process that runs it (the container process's pid comes from crun's pid file). */
  get launcherPid(): number | undefined {
    return this.pty?.pid ?? this.child?.pid;
  }

  get exitStatus(): number | undefined {
    return this.status;
  }

  /** `fifoDir`: where the stdio FIFOs are made for a moment (see stdio-pipes.ts). */
  async start(file: string, args: string[], env: NodeJS.ProcessEnv, fifoDir: string): Promise<void> {
    if (this.state !== 'created') {
      throw errors.precondition('KATA_PROCESS_STATE', `process ${this.execId} is ${this.state}, cannot start`);
    }
    this.state = 'running';
    if (this.terminal) {
      const pty = loadPty().spawn(file, args, {
        name: 'xterm',
        cols: this.consoleSize?.columns || 80,
        rows: this.consoleSize?.rows || 24,
        cwd: '/',
        env,
        encoding: null,
      });
      this.pty = pty;
      pty.onData((d: string | Buffer) => this.stdout.push(typeof d === 'string' ? Buffer.from(d) : d));
      pty.onExit(({ exitCode, signal }) => {
        this.stdout.end();
        this.finish(signal ? 128 + signal : exitCode);
      });
      this.stderr.end();
      return;
    }
    const pipes = await makeStdioPipes(fifoDir, this.execId);
    let child: ChildProcess;
    try {
      child = spawn(file, args, { env, stdio: pipes.childFds, detached: false });
    } finally {
      pipes.closeChildFds();
    }
    this.child = child;
    this.stdinPipe = pipes.stdin;
    this.stdout.attach(pipes.stdout);
    this.stderr.attach(pipes.stderr);
    pipes.stdin.on('error', (err) => this.log.debug({ err, execId: this.execId }, 'stdin closed by process'));
    child.on('error', (err) => {
      this.log.error({ err, execId: this.execId }, 'spawn failed');
      this.stdout.end();
      this.stderr.end();
      this.finish(127);
    });
    child.on('exit', (code, signal) => {
      this.finish(code ?? 128 + signalNumber(signal));
    });
  }

  async writeStdin(data: Buffer): Promise<number> {
    if (this.stdinClosed) throw errors.precondition('KATA_STDIN_CLOSED', `stdin of ${this.execId} is closed`);
    if (this.pty) {
      this.pty.write(data);
      return data.length;
    }
    const stdin = this.stdinPipe;
    if (!stdin || stdin.destroyed) throw errors.precondition('KATA_STDIN_CLOSED', `stdin of ${this.execId} is closed`);
    await new Promise<void>((resolve, reject) => stdin.write(data, (err) => (err ? reject(err) : resolve())));
    return data.length;
  }

  closeStdin(): void {
    if (this.stdinClosed) return;
    this.stdinClosed = true;
    if (this.pty) {
      // EOT at the start of a line is how a terminal says end of input.
      this.pty.write('\x04');
      return;
    }
    this.stdinPipe?.end();
  }

  resize(rows: number, columns: number): void {
    if (!this.pty) throw errors.precondition('KATA_NO_TTY', `process ${this.execId} has no terminal`);
    if (rows > 0 && columns > 0) this.pty.resize(columns, rows);
  }

  /** Resolves with the exit status (128+N when killed by signal N). */
  wait(): Promise<number> {
    if (this.status !== undefined) return Promise.resolve(this.status);
    return new Promise((resolve) => this.exitWaiters.push(resolve));
  }

  /** Kills the launcher itself (used at teardown when the container is already gone). */
  killLauncher(): void {
    if (this.state !== 'running') return;
    try {
      if (this.pty) this.pty.kill('SIGKILL');
      else this.child?.kill('SIGKILL');
    } catch {
      // already gone
    }
  }

  /** A process killed before it started never runs: it exits with 128+signal. */
  killBeforeStart(signal: number): void {
    if (this.state !== 'created') return;
    this.stdout.end();
    this.stderr.end();
    this.finish(128 + signal);
  }

  private finish(status: number): void {
    if (this.state === 'exited') return;
    this.state = 'exited';
    this.status = status;
    this.log.debug({ containerId: this.containerId, execId: this.execId, status }, 'process exited');
    const w = this.exitWaiters;
    this.exitWaiters = [];
    for (const f of w) f(status);
  }
}

const SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9,
  SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15,
};

export function signalNumber(signal: NodeJS.Signals | null): number {
  return signal ? (SIGNALS[signal] ?? 0) : 0;
}
