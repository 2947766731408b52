import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { errors } from '../base/errors.js';

/**
 * Runs short guest commands (ip, arp, mkfifo, kata-settime) through one long-lived busybox `sh` instead of a
 * spawn each: under TCG, Node forking itself costs about 0.1 s per command, a fork of the small shell a few
 * ms. The shell is started on first use, so a VM template's warm-up leaves it running in every clone.
 *
 * Protocol: each command is one line of single-quoted words with stdin from /dev/null; after it the shell
 * prints a marker line with the exit status on stdout and a marker line on stderr. Commands run one at a time.
 * A command that outlives its timeout takes the shell down with it (killed as a process group); the next
 * command starts a new one.
 */
export class CommandShell {
  private sh: ChildProcessWithoutNullStreams | undefined;
  private readonly marker = `__kata_done_${randomBytes(8).toString('hex')}__`;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly timeoutMs = 30_000) {}

  /** Runs `cmd args...`; resolves with its stdout, rejects with its stderr when it exits non-zero. */
  run(cmd: string, args: string[]): Promise<string> {
    for (const w of [cmd, ...args]) {
      if (w.includes('\0') || w.includes('\n')) {
        return Promise.reject(errors.invalid('KATA_GUEST_CMD', `${cmd}: argument ${JSON.stringify(w)} has a NUL or newline`));
      }
    }
    const next = this.tail.then(
      () => this.runNow(cmd, args),
      () => this.runNow(cmd, args),
    );
    this.tail = next.catch(() => undefined);
    return next;
  }

  private runNow(cmd: string, args: string[]): Promise<string> {
    const words = [cmd, ...args];
    const sh = this.shell();
    const line = `${words.map(quote).join(' ')} </dev/null; printf '\\n%s %d\\n' ${this.marker} $?; printf '\\n%s\\n' ${this.marker} >&2\n`;
    return new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      let status: number | undefined;
      let errDone = false;
      const outEnd = `\n${this.marker} `;
      const errEnd = `\n${this.marker}\n`;
      const finish = (fail?: Error) => {
        clearTimeout(timer);
        sh.stdout.off('data', onOut);
        sh.stderr.off('data', onErr);
        sh.off('exit', onExit);
        if (fail) return reject(fail);
        if (status === 0) resolve(out);
        else reject(errors.internal('KATA_GUEST_CMD', `${words.join(' ')}: ${err.trim() || `exit status ${status}`}`));
      };
      const check = () => {
        if (status !== undefined && errDone) finish();
      };
      const onOut = (d: Buffer) => {
        out += d.toString();
        const i = out.indexOf(outEnd);
        if (i >= 0 && out.indexOf('\n', i + outEnd.length) >= 0) {
          status = Number(out.slice(i + outEnd.length, out.indexOf('\n', i + outEnd.length)));
          out = out.slice(0, i);
          check();
        }
      };
      const onErr = (d: Buffer) => {
        err += d.toString();
        const i = err.indexOf(errEnd);
        if (i >= 0) {
          err = err.slice(0, i);
          errDone = true;
          check();
        }
      };
      const onExit = () => finish(errors.internal('KATA_GUEST_CMD', `${words.join(' ')}: the command shell exited`));
      const timer = setTimeout(() => {
        this.close();
        finish(errors.deadline('KATA_GUEST_CMD_TIMEOUT', `${words.join(' ')}: no answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      sh.stdout.on('data', onOut);
      sh.stderr.on('data', onErr);
      sh.once('exit', onExit);
      sh.stdin.write(line);
    });
  }

  private shell(): ChildProcessWithoutNullStreams {
    if (this.sh && this.sh.exitCode === null && this.sh.signalCode === null) return this.sh;
    const sh = spawn('sh', ['-s'], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    sh.on('error', () => undefined);
    sh.stdin.on('error', () => undefined);
    sh.once('exit', () => {
      if (this.sh === sh) this.sh = undefined;
    });
    this.sh = sh;
    return sh;
  }

  /** Stops the shell and the command it runs (a timeout; tests). The next command starts a new one. */
  close(): void {
    const sh = this.sh;
    this.sh = undefined;
    if (sh?.pid === undefined) return;
    try {
      process.kill(-sh.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** One shell word, single-quoted: nothing in it is expanded. */
function quote(w: string): string {
  return `'${w.replaceAll("'", `'\\''`)}'`;
}

/** The agent's shell for short commands (one per guest). */
export const commandShell = new CommandShell();
