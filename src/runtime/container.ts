import { statfs } from 'node:fs/promises';
import { errors } from '../base/errors.js';
import { checkId } from '../base/ids.js';
import type { Logger } from '../base/logger.js';
import type { AgentClient } from '../agent-client/agent-client.js';
import { createContainerRequest, ephemeralStorage } from '../agent-client/requests.js';
import type { Storage } from '../protocol/gen/agent.js';
import { processToProto, type OciProcess, type OciSpec } from '../protocol/oci-spec.js';
import type { ShareFs } from '../resource/sharefs/share-fs.js';
import { Process } from './process.js';
import type { HostStdio } from './process-io.js';
import { CONTAINER_TRANSITIONS, StateMachine, type ContainerState } from './state-machine.js';

/** The sandbox's /dev/shm in the guest (an ephemeral tmpfs the agent mounts at CreateSandbox). */
export const GUEST_SANDBOX_SHM = '/run/kata-containers/sandbox/shm';

/** Where the agent mounts memory-backed emptyDirs (one tmpfs per name, per sandbox). */
export const GUEST_EPHEMERAL_DIR = '/run/kata-containers/sandbox/ephemeral';
const TMPFS_MAGIC = 0x01021994;

/** The emptyDir name when `source` is a kubelet memory-medium emptyDir (a tmpfs under kubernetes.io~empty-dir). */
async function memoryEmptyDir(source: string): Promise<string | undefined> {
  const m = /\/kubernetes\.io~empty-dir\/([A-Za-z0-9][A-Za-z0-9_.-]*)\/?$/.exec(source);
  if (!m) return undefined;
  const st = await statfs(source).catch(() => undefined);
  return st?.type === TMPFS_MAGIC ? m[1] : undefined;
}

/** Mount sources the guest provides itself; never shared from the host. */
const GUEST_PROVIDED = new Set(['proc', 'sysfs', 'devpts', 'mqueue', 'tmpfs', 'cgroup', 'cgroup2', 'devtmpfs', 'shm']);

export interface CreateContainerOptions {
  containerId: string;
  spec: OciSpec;
  /** Host directory holding the container's root filesystem (already mounted). */
  hostRootfs: string;
  stdio: HostStdio;
}

/**
 * A container in the sandbox VM, seen from the host. Its contract: create (rootfs shared, spec sent) ->
 * start -> its init process exits -> delete (guest side removed, shares undone). Kill and exec are valid
 * while it runs.
 */
export class Container {
  readonly sm: StateMachine<ContainerState>;
  readonly init: Process;
  private readonly execs = new Map<string, Process>();

  private constructor(
    private readonly agent: AgentClient,
    private readonly shareFs: ShareFs,
    readonly id: string,
    readonly spec: OciSpec,
    stdio: HostStdio,
    private readonly log: Logger,
  ) {
    this.sm = new StateMachine(`container ${id}`, 'created', CONTAINER_TRANSITIONS);
    this.init = new Process(agent, id, id, spec.process?.terminal ?? false, stdio, log);
    // The agent holds the init process from CreateContainer on; copying its output from now means a fast
    // process's exit is never reported before its output.
    this.init.attachOutput();
    this.init.wait().then(
      () => {
        if (!this.sm.is('stopped')) this.sm.to('stopped');
      },
      () => undefined,
    );
  }

  static async create(
    agent: AgentClient,
    shareFs: ShareFs,
    opts: CreateContainerOptions,
    log: Logger,
    timeoutMs: number,
  ): Promise<Container> {
    const id = checkId(opts.containerId, 'container id');
    if (!opts.spec.process) throw errors.invalid('KATA_SPEC_INVALID', `container ${id}: spec has no process`);
    const clog = log.child({ containerId: id });
    try {
      const guestRoot = await shareFs.shareRootfs(id, opts.hostRootfs);
      const mounts = [];
      const storages: Storage[] = [];
      for (const m of opts.spec.mounts ?? []) {
        const isBind = m.type === 'bind' || (m.options ?? []).some((o) => o === 'bind' || o === 'rbind');
        if (isBind && m.destination === '/dev/shm') {
          // Never shared from the host (Kata): the pod's shm is a tmpfs in the guest, one per sandbox.
          mounts.push({ destination: '/dev/shm', type: 'bind', source: GUEST_SANDBOX_SHM, options: ['rbind', 'rw'] });
          continue;
        }
        if (!isBind || !m.source || GUEST_PROVIDED.has(m.source)) {
          mounts.push(m);
          continue;
        }
        const emptyDir = await memoryEmptyDir(m.source);
        if (emptyDir) {
          // A memory-backed emptyDir is a tmpfs in the guest, shared by the pod's containers (Kata's ephemeral).
          const mountPoint = `${GUEST_EPHEMERAL_DIR}/${emptyDir}`;
          storages.push(ephemeralStorage('tmpfs', mountPoint, []));
          mounts.push({ ...m, source: mountPoint });
          continue;
        }
        const ro = (m.options ?? []).includes('ro');
        const source = await shareFs.shareMount(id, m.source, m.destination, ro);
        mounts.push({ ...m, source });
      }
      const guestSpec: OciSpec = {
        ...opts.spec,
        root: { path: guestRoot, readonly: opts.spec.root?.readonly ?? false },
        mounts,
      };
      await agent.call('CreateContainer', createContainerRequest(id, guestSpec, storages), { timeoutMs });
      return new Container(agent, shareFs, id, opts.spec, opts.stdio, clog);
    } catch (err) {
      await shareFs.unshareContainer(id).catch((e) => clog.warn({ err: e }, 'unshare after failed create'));
      throw err;
    }
  }

  async start(): Promise<void> {
    this.sm.require('start', 'created');
    await this.agent.call('StartContainer', { containerId: this.id });
    // A process that already ran to completion leaves the container stopped, not running.
    if (this.sm.is('created')) this.sm.to('running');
    this.init.started();
  }

  async exec(execId: string, process: OciProcess, stdio: HostStdio): Promise<Process> {
    checkId(execId, 'exec id');
    this.sm.require('exec in', 'running');
    if (this.execs.has(execId)) throw errors.alreadyExists('KATA_EXEC_EXISTS', `exec ${execId} already exists`);
    const p = new Process(this.agent, this.id, execId, process.terminal ?? false, stdio, this.log);
    this.execs.set(execId, p);
    try {
      await this.agent.call('ExecProcess', {
        containerId: this.id,
        execId,
        stringUser: undefined,
        process: processToProto(process),
        stdinPort: 0,
        stdoutPort: 0,
        stderrPort: 0,
      });
    } catch (err) {
      this.execs.delete(execId);
      p.stopIo();
      throw err;
    }
    p.started();
    return p;
  }

  process(execId?: string): Process {
    if (!execId || execId === this.id) return this.init;
    const p = this.execs.get(execId);
    if (!p) throw errors.notFound('KATA_PROCESS_NOT_FOUND', `container ${this.id}: no exec ${execId}`);
    return p;
  }

  /** Signals the init process (all processes when `all`), or one exec. */
  async kill(signal: number, opts: { execId?: string; all?: boolean } = {}): Promise<void> {
    const execId = opts.execId && opts.execId !== this.id ? opts.execId : '';
    if (!execId && this.sm.is('stopped')) return; // idempotent for a stopped container (CRI relies on it)
    await this.agent.call('SignalProcess', { containerId: this.id, execId: opts.all ? '' : execId || this.id, signal });
  }

  async pause(): Promise<void> {
    this.sm.require('pause', 'running');
    await this.agent.call('PauseContainer', { containerId: this.id });
    this.sm.to('paused');
  }

  async resume(): Promise<void> {
    this.sm.require('resume', 'paused');
    await this.agent.call('ResumeContainer', { containerId: this.id });
    this.sm.to('running');
  }

  /** Removes the container from the guest and undoes its shares. Kills it first if it still runs. */
  async delete(opts: { agentAlive: boolean }): Promise<void> {
    if (opts.agentAlive) {
      try {
        await this.agent.call('RemoveContainer', { containerId: this.id, timeout: 10 });
      } catch (err) {
        this.log.warn({ err }, 'remove container in guest failed');
      }
    }
    this.init.stopIo();
    for (const p of this.execs.values()) p.stopIo();
    if (!this.sm.is('stopped')) this.sm.to('stopped');
    await this.shareFs.unshareContainer(this.id);
  }
}
