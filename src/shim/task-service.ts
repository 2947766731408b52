import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { errors } from '../base/errors.js';
import { checkId } from '../base/ids.js';
import { setLogLevel, type Logger } from '../base/logger.js';
import { Any } from '../protocol/gen/google/protobuf/any.js';
import { Empty } from '../protocol/gen/google/protobuf/empty.js';
import { Options as RuntimeOptionsMsg } from '../protocol/gen/containerd/runtimeoptions.js';
import * as t from '../protocol/gen/containerd/shim.js';
import { Status } from '../protocol/gen/containerd/task-status.js';
import { parseOciSpec, validateProcess, type OciLinuxResources, type OciProcess } from '../protocol/oci-spec.js';
import { resourcesToProto } from '../protocol/oci-spec.js';
import { unaryHandler, type UnaryHandler } from '../protocol/ttrpc/server.js';
import { applyAnnotations } from '../runtime/config/annotations.js';
import { findConfigFile, loadConfig } from '../runtime/config/load.js';
import type { Container } from '../runtime/container.js';
import { podIdentity, type PodIdentity } from '../runtime/container-type.js';
import { defaultSandboxDeps } from '../runtime/default-deps.js';
import type { RuntimePaths } from '../runtime/paths.js';
import { persistSandbox } from '../runtime/persist.js';
import type { Process } from '../runtime/process.js';
import type { HostStdio } from '../runtime/process-io.js';
import { Sandbox } from '../runtime/sandbox.js';
import { sizeSandbox } from '../runtime/sandbox-sizing.js';
import type { EventPublisher } from './events.js';
import { nowTimestamp } from './events.js';
import { openOutput, openStdin, type OpenedStdio } from './fifo-io.js';
import { metricsFromAgentStats } from './metrics.js';
import { mountRootfs, unmountRootfs } from './rootfs.js';

export const TASK_SERVICE = 'containerd.task.v2.Task';

interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

/** A shim-side process record: stdio it opened and, once started, the runtime Process. */
class ShimProcess {
  process?: Process;
  private readonly opened: OpenedStdio[] = [];
  private startedResolve!: (p: Process) => void;
  readonly started = new Promise<Process>((r) => (this.startedResolve = r));

  constructor(
    readonly id: string,
    readonly stdio: StdioPaths,
  ) {}

  /** Opens containerd's fifos (stdin is piped through a PassThrough the process copy reads). */
  async openStdio(): Promise<HostStdio> {
    const out: HostStdio = { endOnEof: true };
    if (this.stdio.stdout) {
      const o = await openOutput(this.stdio.stdout);
      this.opened.push(o);
      out.stdout = o.stream as Writable;
    }
    if (this.stdio.stderr && !this.stdio.terminal) {
      const o = await openOutput(this.stdio.stderr);
      this.opened.push(o);
      out.stderr = o.stream as Writable;
    }
    if (this.stdio.stdin) {
      const o = await openStdin(this.stdio.stdin);
      this.opened.push(o);
      out.stdin = o.stream as Readable;
    }
    return out;
  }

  markStarted(p: Process): void {
    this.process = p;
    this.startedResolve(p);
  }

  closeStdio(): void {
    for (const o of this.opened) o.close();
    this.opened.length = 0;
  }
}

interface ShimTask {
  id: string;
  bundle: string;
  identity: PodIdentity;
  rootfsMounted: boolean;
  container: Container;
  init: ShimProcess;
  execs: Map<string, ShimProcess & { spec: OciProcess }>;
}

/**
 * containerd's Task service for one pod (one VM). Translates containerd's calls to the runtime's Sandbox and
 * Container, opens stdio fifos, mounts rootfs, publishes events in containerd's order, and persists what a
 * later `shim delete` needs after a crash.
 */
export class TaskService {
  private sandbox?: Sandbox;
  private readonly tasks = new Map<string, ShimTask>();

  constructor(
    private readonly paths: RuntimePaths,
    private readonly events: EventPublisher,
    private readonly log: Logger,
    private readonly onShutdown: () => void,
  ) {}

  get taskCount(): number {
    return this.tasks.size;
  }

  /** The pod's sandbox once Create made it (the management server reads it). */
  get currentSandbox(): Sandbox | undefined {
    return this.sandbox;
  }

  private task(id: string): ShimTask {
    const task = this.tasks.get(id);
    if (!task) throw errors.notFound('KATA_TASK_NOT_FOUND', `task ${id} not found`);
    return task;
  }

  private proc(id: string, execId: string): ShimProcess {
    const task = this.task(id);
    if (!execId) return task.init;
    const e = task.execs.get(execId);
    if (!e) throw errors.notFound('KATA_EXEC_NOT_FOUND', `exec ${execId} of task ${id} not found`);
    return e;
  }

  private get vmmPid(): number {
    return this.sandbox?.hypervisor.pids()[0] ?? 0;
  }

  /** Tears down everything (shim exiting on a signal). */
  async shutdownAll(): Promise<void> {
    for (const task of this.tasks.values()) {
      task.init.closeStdio();
      for (const e of task.execs.values()) e.closeStdio();
    }
    if (this.sandbox) await this.sandbox.stop().catch((err) => this.log.error({ err }, 'sandbox stop'));
    for (const task of this.tasks.values()) {
      if (task.rootfsMounted) await unmountRootfs(join(task.bundle, 'rootfs')).catch(() => undefined);
    }
    this.tasks.clear();
  }

  handlers(): Record<string, UnaryHandler> {
    const h = <Req, Res>(
      req: { decode(b: Uint8Array): Req; encode(m: Req): { finish(): Uint8Array } },
      res: { decode(b: Uint8Array): Res; encode(m: Res): { finish(): Uint8Array } },
      name: string,
      fn: (r: Req) => Promise<Res>,
    ) =>
      unaryHandler(req, res, async (r) => {
        try {
          return await fn(r);
        } catch (err) {
          this.log.warn({ err, method: name }, 'task request failed');
          throw err;
        }
      });
    return {
      Create: h(t.CreateTaskRequest, t.CreateTaskResponse, 'Create', (r) => this.create(r)),
      Start: h(t.StartRequest, t.StartResponse, 'Start', (r) => this.start(r)),
      Delete: h(t.DeleteRequest, t.DeleteResponse, 'Delete', (r) => this.delete(r)),
      State: h(t.StateRequest, t.StateResponse, 'State', async (r) => this.state(r)),
      Pids: h(t.PidsRequest, t.PidsResponse, 'Pids', async (r) => {
        this.task(r.id);
        return { processes: [{ pid: this.vmmPid, info: undefined }] };
      }),
      Pause: h(t.PauseRequest, Empty, 'Pause', async (r) => {
        await this.task(r.id).container.pause();
        await this.events.publish('TaskPaused', { containerId: r.id });
        return {};
      }),
      Resume: h(t.ResumeRequest, Empty, 'Resume', async (r) => {
        await this.task(r.id).container.resume();
        await this.events.publish('TaskResumed', { containerId: r.id });
        return {};
      }),
      Checkpoint: h(t.CheckpointTaskRequest, Empty, 'Checkpoint', async () => {
        throw errors.notImplemented('KATA_NOT_IMPLEMENTED', 'checkpoint is not supported by kata-ts');
      }),
      Kill: h(t.KillRequest, Empty, 'Kill', async (r) => {
        const task = this.task(r.id);
        // Kata forces `all` for the init process so every process of the container gets the signal.
        await task.container.kill(r.signal, { execId: r.execId, all: !r.execId || r.all });
        return {};
      }),
      Exec: h(t.ExecProcessRequest, Empty, 'Exec', (r) => this.exec(r)),
      ResizePty: h(t.ResizePtyRequest, Empty, 'ResizePty', async (r) => {
        const p = this.proc(r.id, r.execId).process ?? this.task(r.id).container.init;
        await p.resize(r.height, r.width);
        return {};
      }),
      CloseIO: h(t.CloseIORequest, Empty, 'CloseIO', async (r) => {
        const p = this.proc(r.id, r.execId).process;
        if (r.stdin && p) await p.closeStdin().catch((err) => this.log.debug({ err }, 'close stdin'));
        return {};
      }),
      Update: h(t.UpdateTaskRequest, Empty, 'Update', async (r) => {
        const task = this.task(r.id);
        if (!r.resources) return {};
        const resources = parseJsonAny<OciLinuxResources>(r.resources, 'resources');
        await this.sandbox!.agent.call('UpdateContainer', { containerId: task.id, resources: resourcesToProto(resources) });
        return {};
      }),
      Wait: h(t.WaitRequest, t.WaitResponse, 'Wait', async (r) => {
        const sp = this.proc(r.id, r.execId);
        const p = r.execId ? await sp.started : this.task(r.id).container.init;
        const exit = await p.wait();
        return { exitStatus: exit.status, exitedAt: nowTimestamp(exit.exitedAt) };
      }),
      Stats: h(t.StatsRequest, t.StatsResponse, 'Stats', async (r) => {
        const task = this.task(r.id);
        const stats = await this.sandbox!.agent.call('StatsContainer', { containerId: task.id });
        return { stats: metricsFromAgentStats(stats) };
      }),
      Connect: h(t.ConnectRequest, t.ConnectResponse, 'Connect', async () => ({
        shimPid: process.pid,
        taskPid: this.vmmPid,
        version: 'kata-ts',
      })),
      Shutdown: h(t.ShutdownRequest, Empty, 'Shutdown', async () => {
        // Kata: nothing happens while any container is known; otherwise the shim exits.
        if (this.tasks.size === 0) setImmediate(this.onShutdown);
        return {};
      }),
    };
  }

  private async create(r: t.CreateTaskRequest): Promise<t.CreateTaskResponse> {
    const id = checkId(r.id, 'task id');
    if (this.tasks.has(id)) throw errors.alreadyExists('KATA_TASK_EXISTS', `task ${id} already exists`);
    const specText = await readFile(join(r.bundle, 'config.json'), 'utf8').catch((err) => {
      throw errors.invalid('KATA_BUNDLE_INVALID', `bundle ${r.bundle}: cannot read config.json: ${err.message}`, err);
    });
    const spec = parseOciSpec(specText);
    if (!spec.process) throw errors.invalid('KATA_SPEC_INVALID', 'invalid OCI spec: process: missing');
    const identity = podIdentity(id, spec.annotations);
    if (identity.type === 'pod_container') {
      if (!this.sandbox || this.sandbox.id !== identity.sandboxId) {
        throw errors.precondition('KATA_NO_SANDBOX', `sandbox ${identity.sandboxId} of container ${id} is not running in this shim`);
      }
    } else if (this.sandbox) {
      throw errors.alreadyExists('KATA_SANDBOX_EXISTS', `this shim already runs sandbox ${this.sandbox.id}`);
    }

    // The snapshotter's mounts go onto <bundle>/rootfs; with none, root.path is already a populated directory.
    const rootfsDir = r.rootfs.length > 0 ? join(r.bundle, 'rootfs') : resolve(r.bundle, spec.root!.path);
    const stdio: StdioPaths = { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal };
    const init = new ShimProcess(id, stdio);
    let rootfsMounted = false;
    let createdSandbox: Sandbox | undefined;
    try {
      rootfsMounted = await mountRootfs(
        r.rootfs.map((m) => ({ type: m.type, source: m.source, options: m.options })),
        rootfsDir,
      );
      // The client's fifos first: a missing one fails the create before a VM is booted for nothing.
      const hostStdio = await init.openStdio();
      if (identity.type !== 'pod_container') {
        const loaded = await loadConfig(findConfigFile({ explicitPath: configPathOf(r.options), env: process.env }));
        const config = sizeSandbox(applyAnnotations(loaded, spec.annotations ?? {}), spec.annotations);
        if (config.runtime.enableDebug || config.hypervisor.enableDebug || config.agent.enableDebug) setLogLevel(this.log, 'debug');
        createdSandbox = await Sandbox.create(
          {
            sandboxId: identity.sandboxId,
            config,
            paths: this.paths,
            hostname: spec.hostname,
            netnsPath: spec.linux?.namespaces?.find((n) => n.type === 'network')?.path || undefined,
          },
          defaultSandboxDeps(),
          this.log,
        );
        this.sandbox = createdSandbox;
        this.forwardOomEvents(createdSandbox);
      }
      if (r.terminal && spec.process) spec.process.terminal = true;
      const container = await this.sandbox!.createContainer({ containerId: id, spec, hostRootfs: rootfsDir, stdio: hostStdio });
      this.tasks.set(id, { id, bundle: r.bundle, identity, rootfsMounted, container, init, execs: new Map() });
      await this.persist();
    } catch (err) {
      init.closeStdio();
      if (createdSandbox) {
        await createdSandbox.stop().catch((e) => this.log.warn({ err: e }, 'stop sandbox after failed create'));
        this.sandbox = undefined;
      }
      if (rootfsMounted) await unmountRootfs(rootfsDir).catch(() => undefined);
      throw err;
    }
    await this.events.publish('TaskCreate', {
      containerId: id,
      bundle: r.bundle,
      rootfs: r.rootfs,
      io: { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal },
      checkpoint: '',
      pid: this.vmmPid,
    });
    return { pid: this.vmmPid };
  }

  private async start(r: t.StartRequest): Promise<t.StartResponse> {
    const task = this.task(r.id);
    const pid = this.vmmPid;
    if (!r.execId) {
      await task.container.start();
      task.init.markStarted(task.container.init);
      await this.events.publish('TaskStart', { containerId: task.id, pid });
      this.publishExit(task.id, task.id, task.container.init);
      return { pid };
    }
    const e = task.execs.get(r.execId);
    if (!e) throw errors.notFound('KATA_EXEC_NOT_FOUND', `exec ${r.execId} of task ${r.id} not found`);
    if (e.process) throw errors.precondition('KATA_ILLEGAL_STATE', `exec ${r.execId} already started`);
    const stdio = await e.openStdio();
    const p = await task.container.exec(r.execId, e.spec, stdio).catch((err) => {
      e.closeStdio();
      throw err;
    });
    e.markStarted(p);
    await this.events.publish('TaskExecStarted', { containerId: task.id, execId: r.execId, pid });
    this.publishExit(task.id, r.execId, p);
    return { pid };
  }

  /** Kata's OOM loop: a GetOOMEvent long poll per event, each published as TaskOOM, until the VM is gone. */
  private forwardOomEvents(sandbox: Sandbox): void {
    const loop = async () => {
      while (!sandbox.vmIsGone && this.sandbox === sandbox) {
        try {
          const { containerId } = await sandbox.agent.call('GetOOMEvent', {});
          await this.events.publish('TaskOOM', { containerId });
        } catch (err) {
          this.log.debug({ err }, 'OOM event loop ended');
          return;
        }
      }
    };
    void loop();
  }

  private publishExit(containerId: string, id: string, p: Process): void {
    p.wait().then((exit) =>
      this.events.publish('TaskExit', {
        containerId,
        id,
        pid: this.vmmPid,
        exitStatus: exit.status,
        exitedAt: nowTimestamp(exit.exitedAt),
      }),
    );
  }

  private async exec(r: t.ExecProcessRequest): Promise<Empty> {
    const task = this.task(r.id);
    checkId(r.execId, 'exec id');
    if (task.execs.has(r.execId)) throw errors.alreadyExists('KATA_EXEC_EXISTS', `exec ${r.execId} already exists`);
    if (!r.spec) throw errors.invalid('KATA_SPEC_INVALID', 'exec without a process spec');
    const spec = validateProcess(parseJsonAny<unknown>(r.spec, 'exec process'), 'exec process');
    if (r.terminal) spec.terminal = true;
    const sp = Object.assign(new ShimProcess(r.execId, { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal }), { spec });
    task.execs.set(r.execId, sp);
    await this.events.publish('TaskExecAdded', { containerId: r.id, execId: r.execId });
    return {};
  }

  private async delete(r: t.DeleteRequest): Promise<t.DeleteResponse> {
    const task = this.task(r.id);
    const pid = this.vmmPid;
    if (r.execId) {
      const e = this.proc(r.id, r.execId);
      if (e.process && !e.process.exit) {
        throw errors.precondition('KATA_ILLEGAL_STATE', `cannot delete exec ${r.execId}: it is still running`);
      }
      e.closeStdio();
      task.execs.delete(r.execId);
      const exit = e.process?.exit;
      return { pid, exitStatus: exit?.status ?? 0, exitedAt: exit ? nowTimestamp(exit.exitedAt) : undefined };
    }
    const c = task.container;
    if (c.sm.is('running', 'paused') && !this.sandbox?.vmIsGone) {
      throw errors.precondition('KATA_ILLEGAL_STATE', `cannot delete task ${r.id} in state ${c.sm.state}`);
    }
    const exit = c.init.exit;
    await this.sandbox!.deleteContainer(task.id).catch((err) => this.log.warn({ err }, 'delete container'));
    task.init.closeStdio();
    for (const e of task.execs.values()) e.closeStdio();
    if (task.rootfsMounted) await unmountRootfs(join(task.bundle, 'rootfs')).catch((err) => this.log.warn({ err }, 'unmount rootfs'));
    this.tasks.delete(task.id);
    if (task.identity.type !== 'pod_container') {
      // The sandbox (or single) container goes last: its VM goes with it.
      for (const other of [...this.tasks.values()]) {
        other.init.closeStdio();
        if (other.rootfsMounted) await unmountRootfs(join(other.bundle, 'rootfs')).catch(() => undefined);
        this.tasks.delete(other.id);
      }
      await this.sandbox!.stop().catch((err) => this.log.error({ err }, 'sandbox stop'));
      this.sandbox = undefined;
    } else {
      await this.persist();
    }
    const res = { pid, exitStatus: exit?.status ?? 0, exitedAt: exit ? nowTimestamp(exit.exitedAt) : undefined };
    await this.events.publish('TaskDelete', {
      containerId: task.id,
      pid,
      exitStatus: res.exitStatus,
      exitedAt: res.exitedAt ?? nowTimestamp(),
      id: task.id,
    });
    return res;
  }

  private state(r: t.StateRequest): t.StateResponse {
    const task = this.task(r.id);
    const sp = this.proc(r.id, r.execId);
    let status: Status;
    let exit: { status: number; exitedAt: Date } | undefined;
    if (!r.execId) {
      const s = task.container.sm.state;
      status = s === 'created' ? Status.CREATED : s === 'running' ? Status.RUNNING : s === 'paused' ? Status.PAUSED : Status.STOPPED;
      exit = task.container.init.exit;
    } else {
      exit = sp.process?.exit;
      status = !sp.process ? Status.CREATED : exit ? Status.STOPPED : Status.RUNNING;
    }
    return {
      id: r.id,
      bundle: task.bundle,
      pid: this.vmmPid,
      status,
      stdin: sp.stdio.stdin,
      stdout: sp.stdio.stdout,
      stderr: sp.stdio.stderr,
      terminal: sp.stdio.terminal,
      exitStatus: exit?.status ?? 0,
      exitedAt: exit ? nowTimestamp(exit.exitedAt) : undefined,
      execId: r.execId,
    };
  }

  private async persist(): Promise<void> {
    const sb = this.sandbox;
    if (!sb) return;
    await persistSandbox(this.paths, sb, {
      containers: Object.fromEntries([...this.tasks.values()].map((x) => [x.id, { bundle: x.bundle, rootfsMounted: x.rootfsMounted }])),
    });
  }
}

function parseJsonAny<T>(any: Any, what: string): T {
  try {
    return JSON.parse(Buffer.from(any.value).toString('utf8')) as T;
  } catch (err) {
    throw errors.invalid('KATA_SPEC_INVALID', `${what}: not valid JSON (${any.typeUrl})`, err);
  }
}

/** `runtimeoptions.v1.Options.config_path` from the task options, if containerd sent them. */
export function configPathOf(options: Any | undefined): string | undefined {
  if (!options || !options.typeUrl.endsWith('runtimeoptions.v1.Options')) return undefined;
  const path = RuntimeOptionsMsg.decode(options.value).configPath;
  return path || undefined;
}

