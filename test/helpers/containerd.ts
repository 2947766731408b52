import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A private containerd (its own root, state and sockets) started and stopped by a test. */
export class TestContainerd {
  private proc?: ChildProcess;
  readonly address: string;
  readonly ttrpcAddress: string;
  private constructor(
    readonly dir: string,
    private readonly configPath: string,
  ) {
    this.address = join(dir, 'containerd.sock');
    this.ttrpcAddress = join(dir, 'containerd.sock.ttrpc');
  }

  static async start(opts: { cri?: boolean; extraConfig?: string } = {}): Promise<TestContainerd> {
    const dir = await mkdtemp(join(tmpdir(), 'kata-ts-containerd-'));
    const config = [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${dir}/state"`,
      '[grpc]',
      `  address = "${dir}/containerd.sock"`,
      '[ttrpc]',
      `  address = "${dir}/containerd.sock.ttrpc"`,
      ...(opts.cri ? [] : ['disabled_plugins = ["io.containerd.grpc.v1.cri"]']),
      opts.extraConfig ?? '',
    ];
    // `disabled_plugins` must be a top-level key: put it before any table.
    const top = config.filter((l) => l.startsWith('disabled_plugins'));
    const rest = config.filter((l) => !l.startsWith('disabled_plugins'));
    const text = [rest[0], ...top, ...rest.slice(1)].join('\n') + '\n';
    const configPath = join(dir, 'config.toml');
    await writeFile(configPath, text);
    const c = new TestContainerd(dir, configPath);
    await c.launch();
    return c;
  }

  async launch(): Promise<void> {
    this.proc = spawn('containerd', ['--config', this.configPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, PATH: `/usr/local/bin:${process.env.PATH}` },
    });
    let log = '';
    this.proc.stderr!.on('data', (d) => {
      log += d;
      if (log.length > 1 << 20) log = log.slice(-(1 << 19));
    });
    this.logText = () => log;
    for (let i = 0; i < 200; i++) {
      if (existsSync(this.address)) {
        const r = await this.ctr(['version']);
        if (r.code === 0) return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`containerd did not start:\n${log.slice(-4000)}`);
  }

  logText: () => string = () => '';

  /** Stops containerd (SIGTERM) without touching running shims, as a restart would. */
  async stopDaemon(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await exited;
  }

  /** Removes every task and container left in `namespaces` (a failed test must not leave VMs behind). */
  async removeAll(namespaces: string[]): Promise<void> {
    for (const namespace of namespaces) {
      const tasks = await this.ctr(['task', 'ls', '-q'], { namespace });
      for (const id of tasks.stdout.split('\n').filter(Boolean)) {
        await this.ctr(['task', 'kill', '-a', '-s', 'SIGKILL', id], { namespace });
        await this.ctr(['task', 'rm', '-f', id], { namespace });
      }
      const containers = await this.ctr(['container', 'ls', '-q'], { namespace });
      for (const id of containers.stdout.split('\n').filter(Boolean)) await this.ctr(['container', 'rm', id], { namespace });
    }
  }

  async stop(namespaces: string[] = []): Promise<void> {
    if (this.proc && this.proc.exitCode === null) await this.removeAll(namespaces);
    await this.stopDaemon();
    await rm(this.dir, { recursive: true, force: true });
  }

  ctr(args: string[], opts: { input?: string; namespace?: string; timeoutMs?: number } = {}): Promise<CliResult> {
    return new Promise((resolve, reject) => {
      const child = spawn('ctr', ['--address', this.address, '-n', opts.namespace ?? 'kata-test', ...args], {
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(t);
        resolve({ code, stdout, stderr });
      });
      if (opts.input !== undefined) child.stdin.end(opts.input);
      else child.stdin.end();
    });
  }
}
