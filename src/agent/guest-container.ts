import { readFile, rm, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errors } from '../base/errors.js';
import { checkId } from '../base/ids.js';
import type { Logger } from '../base/logger.js';
import type { CreateContainerRequest } from '../protocol/gen/agent.js';
import type { Process as PbProcess } from '../protocol/gen/oci.js';
import { processFromProto, specFromProto, type OciProcess, type OciSpec } from '../protocol/oci-spec.js';
import type { Crun } from './crun.js';
import { GuestProcess } from './guest-process.js';
import { guestUnmount, run } from './guest-mount.js';
import { checkGuestPath, type SandboxStorages } from './storage.js';
import { GUEST_WARMUP_ROOTFS } from '../protocol/guest-paths.js';

export const CONTAINERS_DIR = '/run/kata-containers';
const CRUN_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/**
 * A container inside the guest: its crun bundle, its storages, its init process and its execs.
 * The init process runs as `crun run` in the foreground so its exit status reaches the agent directly.
 */
export class GuestContainer {
  private readonly processes = new Map<string, GuestProcess>();
  private readonly mounts: string[] = [];

  private constructor(
    readonly id: string,
    readonly bundleDir: string,
    private readonly crun: Crun,
    private readonly log: Logger,
  ) {}

  static async create(
    req: CreateContainerRequest,
    crun: Crun,
    sandboxStorages: SandboxStorages,
    log: Logger,
  ): Promise<GuestContainer> {
    const id = checkId(req.containerId, 'container id');
    if (!req.OCI) throw errors.invalid('KATA_SPEC_MISSING', `container ${id}: no OCI spec`);
    const spec = specFromProto(req.OCI);
    if (!spec.process) throw errors.invalid('KATA_SPEC_INVALID', `container ${id}: spec has no process`);
    if (!spec.root) throw errors.invalid('KATA_SPEC_INVALID', `container ${id}: spec has no root`);
    if (!(spec.root.path === GUEST_WARMUP_ROOTFS && spec.root.readonly)) checkGuestPath(spec.root.path, 'root.path');

    const bundleDir = join(CONTAINERS_DIR, 'bundles', id);
    const c = new GuestContainer(id, bundleDir, crun, log.child({ containerId: id }));
    try {
      await mkdir(bundleDir, { recursive: true, mode: 0o700 });
      for (const s of req.storages) {
        const shared = sandboxStorages.has(s.mountPoint);
        const mp = await sandboxStorages.mount(s);
        if (!shared && !sandboxStorages.has(s.mountPoint)) c.mounts.push(mp);
      }
      const terminal = spec.process.terminal ?? false;
      await writeFile(join(bundleDir, 'config.json'), JSON.stringify(adaptSpec(spec, id)));
      c.processes.set(id, c.newProcess(id, terminal, spec.process));
      return c;
    } catch (err) {
      await c.cleanupFiles();
      throw err;
    }
  }

  get init(): GuestProcess {
    return this.processes.get(this.id)!;
  }

  process(execId: string): GuestProcess {
    const p = this.processes.get(execId || this.id);
    if (!p) throw errors.notFound('KATA_PROCESS_NOT_FOUND', `container ${this.id}: no process ${execId}`);
    return p;
  }

  /**
   * Runs the init process (`crun run` in the foreground) and returns once crun has created the container
   * (its pid file exists), so that an exec right after start finds it. Fails if crun exits first.
   */
  async start(timeoutMs = 30_000): Promise<void> {
    const init = this.init;
    await init.start(this.crun.binary, this.crun.runArgs(this.bundleDir, this.id, this.pidFile(this.id)), CRUN_ENV, this.bundleDir);
    const deadline = Date.now() + timeoutMs;
    let delay = 2;
    while (Date.now() < deadline) {
      if (await this.readPid(this.id).then(() => true, () => false)) return;
      if (init.processState === 'exited') {
        // No pid file and crun is gone: crun failed before the container existed. Its message is on stderr.
        if (await this.readPid(this.id).then(() => true, () => false)) return;
        const why = init.stderr.peek(2000).trim() || init.stdout.peek(2000).trim();
        throw errors.precondition('KATA_CRUN_RUN', `container ${this.id} failed to start: ${why || `crun exited ${init.exitStatus}`}`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 50);
    }
    throw errors.deadline('KATA_START_TIMEOUT', `container ${this.id} was not created by crun within ${timeoutMs} ms`);
  }

  async exec(execId: string, pbProcess: PbProcess): Promise<GuestProcess> {
    checkId(execId, 'exec id');
    if (this.processes.has(execId)) throw errors.precondition('KATA_EXEC_EXISTS', `exec ${execId} already exists`);
    if (this.init.processState !== 'running') {
      throw errors.precondition('KATA_CONTAINER_STATE', `container ${this.id} is not running`);
    }
    const proc = withDefaultPath(processFromProto(pbProcess));
    const file = join(this.bundleDir, `exec-${execId}.json`);
    await writeFile(file, JSON.stringify(proc));
    const p = this.newProcess(execId, proc.terminal ?? false, proc);
    this.processes.set(execId, p);
    await p.start(this.crun.binary, this.crun.execArgs(this.id, file, this.pidFile(execId)), CRUN_ENV, this.bundleDir);
    return p;
  }

  /**
   * Resizes a terminal process: the agent's PTY (crun's side) and the container's console itself, which the
   * agent reaches through the process's stdin (`/proc/<pid>/fd/0`) since it lives in the container's devpts.
   */
  async resize(execId: string, rows: number, columns: number): Promise<void> {
    const p = this.process(execId);
    p.resize(rows, columns);
    if (rows === 0 || columns === 0 || p.processState !== 'running') return;
    const pid = await this.readPid(execId || this.id).catch(() => undefined);
    if (pid === undefined) return;
    await run('stty', ['-F', `/proc/${pid}/fd/0`, 'rows', String(rows), 'cols', String(columns)]).catch((err) =>
      this.log.debug({ err, execId }, 'resizing the container console failed'),
    );
  }

  /** Delivers a signal. An empty execId means every process of the container. */
  async signal(execId: string, signal: number): Promise<void> {
    if (!execId || execId === this.id) {
      if (this.init.processState === 'created') {
        this.init.killBeforeStart(signal);
        return;
      }
      if (this.init.processState !== 'running') {
        // Kata answers OK for a stopped process so that repeated kills stay idempotent.
        return;
      }
      await this.crun.kill(this.id, signal, !execId);
      return;
    }
    const p = this.process(execId);
    if (p.processState !== 'running') return;
    const pid = await this.readPid(execId);
    try {
      process.kill(pid, signal);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  /** Kills everything, waits up to `timeoutMs` for the init process, removes crun state, mounts and files. */
  async remove(timeoutMs: number): Promise<void> {
    this.init.killBeforeStart(9);
    if (this.init.processState === 'running') {
      await this.crun.kill(this.id, 9, true).catch((err) => this.log.debug({ err }, 'kill at remove'));
      const exited = await Promise.race([
        this.init.wait().then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs)),
      ]);
      if (!exited) this.init.killLauncher();
    }
    for (const p of this.processes.values()) p.killLauncher();
    // Whatever the container wrote and the guest still caches goes to the shares before the host undoes them.
    await run('sync', []).catch((err) => this.log.debug({ err }, 'sync'));
    await this.crun.delete(this.id).catch((err) => this.log.debug({ err }, 'crun delete'));
    await this.cleanupFiles();
  }

  private newProcess(execId: string, terminal: boolean, p: OciProcess): GuestProcess {
    const size = p.consoleSize ? { rows: p.consoleSize.height, columns: p.consoleSize.width } : undefined;
    return new GuestProcess(this.id, execId, terminal, this.log, size);
  }

  private pidFile(execId: string): string {
    return join(this.bundleDir, `${execId}.pid`);
  }

  private async readPid(execId: string): Promise<number> {
    const text = await readFile(this.pidFile(execId), 'utf8').catch(() => '');
    const pid = Number.parseInt(text.trim(), 10);
    if (!Number.isInteger(pid) || pid <= 1) {
      throw errors.precondition('KATA_PROCESS_STATE', `exec ${execId} has no pid yet`);
    }
    return pid;
  }

  private async cleanupFiles(): Promise<void> {
    for (const m of this.mounts.reverse()) await guestUnmount(m);
    this.mounts.length = 0;
    await rm(this.bundleDir, { recursive: true, force: true });
  }
}

const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** A process without PATH gets the conventional default, as Docker and runc give it. */
export function withDefaultPath(p: OciProcess): OciProcess {
  const env = p.env ?? [];
  return env.some((e) => e.startsWith('PATH=')) ? p : { ...p, env: [...env, DEFAULT_PATH] };
}

/** Turns the host's spec into what crun runs in the guest. */
export function adaptSpec(spec: OciSpec, containerId: string): OciSpec {
  const linux = spec.linux ?? {};
  return {
    ...spec,
    // The PTY is made by the agent (node-pty) and crun inherits it; crun itself never allocates one.
    // A terminal process runs crun in the foreground on a PTY of the agent's (node-pty); crun makes the
    // container's own console in the container's devpts and relays between the two.
    process: spec.process ? withDefaultPath(spec.process) : undefined,
    hooks: undefined,
    linux: {
      ...linux,
      // The VM is the pod's network namespace: containers share the guest's. Host namespace paths mean
      // nothing in the guest.
      namespaces: (linux.namespaces ?? [])
        .filter((n) => n.type !== 'network')
        .map((n) => ({ type: n.type })),
      cgroupsPath: `/kata/${containerId}`,
      seccomp: undefined,
    },
  };
}
