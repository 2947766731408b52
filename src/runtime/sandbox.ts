import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { CleanupStack } from '../base/cleanup.js';
import { errors, KataError, wrapError } from '../base/errors.js';
import { checkId } from '../base/ids.js';
import type { Logger } from '../base/logger.js';
import { AgentClient } from '../agent-client/agent-client.js';
import { createSandboxRequest, ephemeralStorage, guestDateTimeRequest } from '../agent-client/requests.js';
import type { Hypervisor, VmDevice } from '../hypervisor/hypervisor.js';
import { createPodNetwork, type PodNetworkResult } from '../resource/network/pod-network.js';
import type { ShareFs } from '../resource/sharefs/share-fs.js';
import type { RuntimeConfig } from './config/types.js';
import { Container, GUEST_SANDBOX_SHM, type CreateContainerOptions } from './container.js';
import { sandboxStateDir, vmDir, type RuntimePaths } from './paths.js';
import { SANDBOX_TRANSITIONS, StateMachine, type SandboxState } from './state-machine.js';
import { sandboxVmConfig } from './vm-config.js';
import type { StartedVm, VmSource } from './vm-source.js';

/** What a sandbox needs from outside: drivers are injected so other hypervisors and share kinds fit. */
export interface SandboxDeps {
  /** Cold boot, or a template clone (VM factory). */
  vmSource: VmSource;
  createShareFs(opts: { sandboxId: string; vmDir: string; sharedRoot: string; config: RuntimeConfig }, log: Logger): ShareFs;
  /** Resolves `accel = "auto"` (KVM only where it really runs a guest). */
  resolveAccel(config: RuntimeConfig, log: Logger): Promise<'kvm' | 'tcg'>;
}

export interface SandboxOptions {
  sandboxId: string;
  config: RuntimeConfig;
  paths: RuntimePaths;
  hostname?: string;
  dns?: string[];
  /** The pod's network namespace (made by CNI); its interfaces are wired to the VM. */
  netnsPath?: string;
  signal?: AbortSignal;
}

/** Milliseconds since the sandbox start began, per phase, plus the guest's own uptime stamps. */
export interface SandboxTimings {
  vmRunningMs?: number;
  agentReadyMs?: number;
  sandboxReadyMs?: number;
  guestInitUptimeS?: number;
  guestAgentUptimeS?: number;
  vmOrigin?: StartedVm['origin'];
  /** Why a configured template was not used. */
  vmFallbackReason?: string;
}

/**
 * A pod: one VM, its shared filesystem and agent connection, and the containers inside it.
 *
 * Start is one fixed sequence: prepare resources (share, dirs) -> boot the VM (cold, or a template clone
 * later) -> connect the agent -> create the sandbox in the guest. Any failure unwinds what was made.
 */
export class Sandbox {
  readonly sm: StateMachine<SandboxState>;
  readonly timings: SandboxTimings = {};
  private readonly containers = new Map<string, Container>();
  private agentAlive = true;
  private vmExited = false;
  private stopPromise?: Promise<void>;

  private constructor(
    readonly id: string,
    readonly config: RuntimeConfig,
    readonly hypervisor: Hypervisor,
    readonly agent: AgentClient,
    private readonly shareFs: ShareFs,
    private readonly cleanup: CleanupStack,
    private readonly log: Logger,
  ) {
    this.sm = new StateMachine(`sandbox ${id}`, 'ready', SANDBOX_TRANSITIONS);
    agent.onClose(() => {
      this.agentAlive = false;
    });
    hypervisor.wait().then(() => {
      this.vmExited = true;
      this.agentAlive = false;
      this.agent.close();
    });
  }

  static async create(opts: SandboxOptions, deps: SandboxDeps, parentLog: Logger): Promise<Sandbox> {
    const sandboxId = checkId(opts.sandboxId, 'sandbox id');
    const log = parentLog.child({ subsystem: 'sandbox', sandboxId });
    const { config } = opts;
    const t0 = performance.now();
    const timings: SandboxTimings = {};
    const cleanup = new CleanupStack(log);
    const dir = vmDir(opts.paths, sandboxId);
    const stateDir = sandboxStateDir(opts.paths, sandboxId);
    try {
      await mkdir(stateDir, { recursive: true, mode: 0o700 });
      cleanup.push('remove sandbox state dir', () => rm(stateDir, { recursive: true, force: true }));

      // 1. Resources that must exist before the VM: the shared filesystem.
      const devices: VmDevice[] = [];
      const shareFs = deps.createShareFs({ sandboxId, vmDir: dir, sharedRoot: opts.paths.sharedRoot, config }, log);
      cleanup.push('clean up shared filesystem', () => shareFs.cleanup());
      devices.push(await shareFs.prepare({ signal: opts.signal }));
      let net: PodNetworkResult | undefined;
      if (opts.netnsPath && config.runtime.internetworkingModel !== 'none') {
        const podNet = createPodNetwork(opts.netnsPath, config.runtime.internetworkingModel, log, { fdPassing: true });
        cleanup.push('remove pod network wiring', () => podNet.cleanup());
        net = await podNet.prepare({ signal: opts.signal });
        devices.push(...net.devices);
        // macvtap: QEMU gets the tap node as an open descriptor.
        for (const d of net.fdDevices) {
          devices.push({ kind: 'net-tap', id: d.id, fdPath: d.devicePath, mac: d.mac, netnsPath: opts.netnsPath });
        }
      }

      // 2. The VM: booted cold or cloned from a template; either way it runs when this returns.
      const accel = await deps.resolveAccel(config, log);
      const vmConfig = { ...sandboxVmConfig(sandboxId, dir, config, devices, accel), netnsPath: net ? opts.netnsPath : undefined };
      const started = await deps.vmSource.start(
        vmConfig,
        config,
        {
          timeoutMs: config.hypervisor.bootTimeoutSec * 1000,
          signal: opts.signal,
          onCreated: (created) => cleanup.push('clean up VM', () => created.cleanup()),
        },
        log,
      );
      const hv = started.hypervisor;
      timings.vmRunningMs = performance.now() - t0;
      timings.vmOrigin = started.origin;
      timings.vmFallbackReason = started.fallbackReason;
      if (started.fallbackReason) log.warn({ reason: started.fallbackReason }, 'VM template not used: cold boot');

      // 3. The agent: give up as soon as the VM exits.
      const vmGone = new AbortController();
      let exitInfo = '';
      hv.wait().then((e) => {
        exitInfo = e.signal ? `signal ${e.signal}` : `exit code ${e.code}`;
        vmGone.abort();
      });
      const onAbort = () => vmGone.abort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      let agent: AgentClient;
      try {
        if (vmConfig.agentChannel.kind !== 'virtio-serial') {
          throw errors.notImplemented('KATA_CHANNEL_UNSUPPORTED', 'only the virtio-serial agent channel is implemented');
        }
        agent = await AgentClient.dial(vmConfig.agentChannel.socketPath, {
          dialTimeoutMs: config.agent.dialTimeoutSec * 1000,
          signal: vmGone.signal,
          log,
        });
      } catch (err) {
        const tail = (await hv.consoleTail(15).catch(() => [] as string[])).join('\n');
        const why = exitInfo ? `VM exited during boot (${exitInfo})` : (err as Error).message;
        const kind = err instanceof KataError && !exitInfo ? err.kind : 'Unavailable';
        throw new KataError(kind, exitInfo ? 'KATA_VM_DIED' : 'KATA_AGENT_UNREACHABLE', `connect agent: ${why}\nlast guest console lines:\n${tail}`, {
          cause: err,
        });
      } finally {
        opts.signal?.removeEventListener('abort', onAbort);
      }
      cleanup.push('close agent connection', () => agent.close());
      timings.agentReadyMs = performance.now() - t0;

      // 4. The guest's identity (a template clone shares its template's RNG state and clock), then the
      //    sandbox inside the guest.
      const storage = shareFs.guestStorage();
      await agent.call('ReseedRandomDev', { data: randomBytes(64) });
      if (started.origin === 'template') {
        // A clone wakes up with its template's clock; a cold boot read the RTC moments ago. The agent adds the
        // time from receiving this to setting the clock.
        await agent.call('SetGuestDateTime', guestDateTimeRequest(Date.now())).catch((err) =>
          log.warn({ err }, 'setting guest clock failed'),
        );
      }
      if (net) {
        for (const i of net.interfaces) {
          // A clone's NIC still has its template's MAC: tell the agent where to find it (kata-ts's devicePath).
          const templateMac = started.guestNicMacs?.get(i.hwAddr.toLowerCase());
          await agent.call('UpdateInterface', { interface: templateMac ? { ...i, devicePath: `mac=${templateMac}` } : i });
        }
        await agent.call('UpdateRoutes', { routes: { Routes: net.routes } });
        if (net.neighbors.length > 0) await agent.call('AddARPNeighbors', { neighbors: { ARPNeighbors: net.neighbors } });
      }
      await agent.call(
        'CreateSandbox',
        createSandboxRequest(sandboxId, {
          hostname: opts.hostname,
          dns: opts.dns,
          storages: [
            { ...storage, fsGroup: undefined, shared: false },
            ephemeralStorage('shm', GUEST_SANDBOX_SHM, ['noexec', 'nosuid', 'nodev', 'mode=1777', 'size=67108864']),
          ],
        }),
      );
      timings.sandboxReadyMs = performance.now() - t0;
      Object.assign(timings, await guestUptimes(hv));
      const sb = new Sandbox(sandboxId, config, hv, agent, shareFs, cleanup, log);
      Object.assign(sb.timings, timings);
      log.info({ timings }, 'sandbox ready');
      return sb;
    } catch (err) {
      await cleanup.run();
      throw wrapError(`create sandbox ${sandboxId}`, err);
    }
  }

  /** Host processes of this sandbox (VMM, share daemon), for crash cleanup; their command lines contain the id. */
  hostProcesses(): { pid: number; cmdlineContains: string }[] {
    return [...this.hypervisor.pids(), ...this.shareFs.pids()].map((pid) => ({ pid, cmdlineContains: this.id }));
  }

  get sharedFsKind(): ShareFs['kind'] {
    return this.shareFs.kind;
  }

  get vmIsGone(): boolean {
    return this.vmExited;
  }

  async createContainer(opts: CreateContainerOptions): Promise<Container> {
    this.sm.require('create a container in', 'ready');
    if (this.containers.has(opts.containerId)) {
      throw errors.alreadyExists('KATA_CONTAINER_EXISTS', `container ${opts.containerId} already exists`);
    }
    const c = await Container.create(
      this.agent,
      this.shareFs,
      opts,
      this.log,
      this.config.runtime.createContainerTimeoutSec * 1000,
    );
    this.containers.set(c.id, c);
    return c;
  }

  container(id: string): Container {
    const c = this.containers.get(id);
    if (!c) throw errors.notFound('KATA_CONTAINER_NOT_FOUND', `container ${id} not found in sandbox ${this.id}`);
    return c;
  }

  listContainers(): Container[] {
    return [...this.containers.values()];
  }

  async deleteContainer(id: string): Promise<void> {
    const c = this.container(id);
    await c.delete({ agentAlive: this.agentAlive });
    this.containers.delete(id);
  }

  /** Tears everything down: containers, the guest sandbox, the VM, shares, sockets and dirs. Idempotent. */
  stop(): Promise<void> {
    if (!this.stopPromise) this.stopPromise = this.stopOnce();
    return this.stopPromise;
  }

  private async stopOnce(): Promise<void> {
    this.sm.to('stopping');
    for (const c of [...this.containers.values()]) {
      await c.delete({ agentAlive: this.agentAlive }).catch((err) => this.log.warn({ err }, 'delete container'));
    }
    this.containers.clear();
    if (this.agentAlive) {
      await this.agent.call('DestroySandbox', {}, { timeoutMs: 5_000 }).catch((err) => this.log.debug({ err }, 'destroy sandbox'));
    }
    this.agent.close();
    await this.hypervisor.stop({ timeoutMs: 3_000 }).catch((err) => this.log.warn({ err }, 'stop VM'));
    const failures = await this.cleanup.run();
    this.sm.to('stopped');
    if (failures.length > 0) {
      throw errors.internal('KATA_TEARDOWN', `teardown of sandbox ${this.id}: ${failures.map((f) => f.message).join('; ')}`);
    }
  }
}

async function guestUptimes(hv: Hypervisor): Promise<Pick<SandboxTimings, 'guestInitUptimeS' | 'guestAgentUptimeS'>> {
  const lines = await hv.consoleTail(200).catch(() => [] as string[]);
  const find = (marker: string) => {
    for (const l of lines) {
      const m = new RegExp(`${marker} uptime=([0-9.]+)`).exec(l);
      if (m) return Number(m[1]);
    }
    return undefined;
  };
  return { guestInitUptimeS: find('KATA_INIT_REACHED'), guestAgentUptimeS: find('KATA_AGENT_READY') };
}
