import { mkdir, open, readFile, readdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { errors } from '../base/errors.js';
import { checkId } from '../base/ids.js';
import type { Logger } from '../base/logger.js';
import { AGENT_PROTOCOL_VERSION, AGENT_VERSION, type AgentHandlers } from '../protocol/agent-api.js';
import { HealthCheckResponse_ServingStatus } from '../protocol/gen/health.js';
import { resourcesFromProto } from '../protocol/oci-spec.js';
import { readCgroupStats } from './cgroup-stats.js';
import type { Crun } from './crun.js';
import { GuestContainer } from './guest-container.js';
import { commandShell } from './command-shell.js';
import { guestUnmount } from './guest-mount.js';
import { networkHandlers } from './network.js';
import { OomWatcher } from './oom-watcher.js';
import { checkGuestPath, mountStorage, SandboxStorages } from './storage.js';

const EMPTY = {};
const SANDBOX_DIR = '/run/kata-containers/sandbox';

/** The agent's state for the one sandbox this VM runs, and the handlers of the agent API. */
export class AgentService {
  private sandboxId?: string;
  private readonly containers = new Map<string, GuestContainer>();
  private readonly sandboxMounts: string[] = [];
  private readonly oom: OomWatcher;
  private readonly storages = new SandboxStorages();

  constructor(
    private readonly crun: Crun,
    private readonly log: Logger,
  ) {
    this.oom = new OomWatcher(log);
  }

  private container(id: string): GuestContainer {
    const c = this.containers.get(id);
    if (!c) throw errors.notFound('KATA_CONTAINER_NOT_FOUND', `container ${JSON.stringify(id)} not found`);
    return c;
  }

  handlers(): AgentHandlers {
    return {
      ...networkHandlers(this.log),
      Check: async () => ({ status: HealthCheckResponse_ServingStatus.SERVING }),
      Version: async () => ({ grpcVersion: AGENT_PROTOCOL_VERSION, agentVersion: AGENT_VERSION }),

      CreateSandbox: async (req) => {
        if (this.sandboxId !== undefined) {
          throw errors.precondition('KATA_SANDBOX_EXISTS', `sandbox ${this.sandboxId} already created`);
        }
        const id = checkId(req.sandboxId, 'sandbox id');
        if (req.hostname.length > 64 || /[^A-Za-z0-9.-]/.test(req.hostname)) {
          throw errors.invalid('KATA_BAD_HOSTNAME', `invalid hostname ${JSON.stringify(req.hostname)}`);
        }
        await mkdir(SANDBOX_DIR, { recursive: true });
        if (req.hostname) await writeFile('/proc/sys/kernel/hostname', req.hostname);
        if (req.dns.length > 0) await writeFile(join(SANDBOX_DIR, 'resolv.conf'), req.dns.join('\n') + '\n');
        for (const s of req.storages) this.sandboxMounts.push(await mountStorage(s));
        this.sandboxId = id;
        this.log.info({ sandboxId: id }, 'sandbox created');
        return EMPTY;
      },

      DestroySandbox: async () => {
        for (const c of [...this.containers.values()]) {
          this.oom.unwatch(c.id);
          await c.remove(5_000);
        }
        this.containers.clear();
        for (const m of [...this.storages.drain(), ...this.sandboxMounts.reverse()]) await guestUnmount(m);
        this.sandboxMounts.length = 0;
        this.log.info({ sandboxId: this.sandboxId }, 'sandbox destroyed');
        this.sandboxId = undefined;
        return EMPTY;
      },

      CreateContainer: async (req) => {
        if (this.containers.has(req.containerId)) {
          throw errors.alreadyExists('KATA_CONTAINER_EXISTS', `container ${req.containerId} already exists`);
        }
        const c = await GuestContainer.create(req, this.crun, this.storages, this.log);
        this.containers.set(c.id, c);
        return EMPTY;
      },

      StartContainer: async (req) => {
        const c = this.container(req.containerId);
        await c.start();
        await this.oom.watchContainer(c.id);
        return EMPTY;
      },

      GetOOMEvent: async (_req, ctx) => {
        const containerId = await this.oom.next(ctx.signal);
        if (containerId === undefined) throw errors.cancelled('KATA_CANCELLED', 'GetOOMEvent: connection closed');
        return { containerId };
      },

      RemoveContainer: async (req) => {
        const c = this.container(req.containerId);
        this.oom.unwatch(c.id);
        await c.remove(req.timeout > 0 ? req.timeout * 1000 : 10_000);
        this.containers.delete(c.id);
        return EMPTY;
      },

      ExecProcess: async (req) => {
        if (!req.process) throw errors.invalid('KATA_SPEC_INVALID', 'exec without a process');
        await this.container(req.containerId).exec(req.execId, req.process);
        return EMPTY;
      },

      SignalProcess: async (req) => {
        if (req.signal < 1 || req.signal > 64) throw errors.invalid('KATA_BAD_SIGNAL', `invalid signal ${req.signal}`);
        await this.container(req.containerId).signal(req.execId, req.signal);
        return EMPTY;
      },

      WaitProcess: async (req) => ({
        status: await this.container(req.containerId).process(req.execId).wait(),
      }),

      WriteStdin: async (req) => ({
        len: await this.container(req.containerId).process(req.execId).writeStdin(req.data),
      }),

      ReadStdout: async (req, ctx) => ({
        data: await this.container(req.containerId).process(req.execId).stdout.read(req.len || 32768, ctx.signal),
      }),

      ReadStderr: async (req, ctx) => ({
        data: await this.container(req.containerId).process(req.execId).stderr.read(req.len || 32768, ctx.signal),
      }),

      CloseStdin: async (req) => {
        this.container(req.containerId).process(req.execId).closeStdin();
        return EMPTY;
      },

      TtyWinResize: async (req) => {
        await this.container(req.containerId).resize(req.execId, req.row, req.column);
        return EMPTY;
      },

      PauseContainer: async (req) => {
        await this.crun.pause(this.container(req.containerId).id);
        return EMPTY;
      },

      ResumeContainer: async (req) => {
        await this.crun.resume(this.container(req.containerId).id);
        return EMPTY;
      },

      UpdateContainer: async (req) => {
        const c = this.container(req.containerId);
        if (!req.resources) return EMPTY;
        const file = join(c.bundleDir, 'update.json');
        await writeFile(file, JSON.stringify(resourcesFromProto(req.resources)));
        await this.crun.update(c.id, file);
        return EMPTY;
      },

      StatsContainer: async (req) => ({
        cgroupStats: await readCgroupStats(`/kata/${this.container(req.containerId).id}`),
        networkStats: [],
      }),

      GetMetrics: async () => ({ metrics: await guestMetrics(this.containers.size) }),

      SetGuestDateTime: async (req) => {
        // The guest's monotonic clock now, so that the helper adds the time it took to start (see kata-settime.c).
        const receivedAt = process.hrtime.bigint();
        if (!Number.isSafeInteger(req.Sec) || req.Sec < 0 || !Number.isSafeInteger(req.Usec) || req.Usec < 0 || req.Usec >= 1_000_000) {
          throw errors.invalid('KATA_BAD_TIME', `invalid time ${req.Sec}.${req.Usec}`);
        }
        await commandShell.run('kata-settime', [String(req.Sec), String(req.Usec * 1000), String(receivedAt)]);
        return EMPTY;
      },

      ReseedRandomDev: async (req) => {
        const fh = await open('/dev/urandom', 'w');
        try {
          await fh.write(req.data);
        } finally {
          await fh.close();
        }
        return EMPTY;
      },

      GetGuestDetails: async () => {
        const text = await readFile('/sys/devices/system/memory/block_size_bytes', 'utf8').catch(() => '0');
        return {
          memBlockSizeBytes: Number.parseInt(text.trim(), 16) || 0,
          agentDetails: {
            version: AGENT_VERSION,
            initDaemon: false,
            deviceHandlers: ['blk', 'mmioblk'],
            storageHandlers: ['virtio-fs', '9p', 'ephemeral', 'local', 'blk', 'mmioblk'],
            supportsSeccomp: false,
            extraFeatures: [],
          },
          supportMemHotplugProbe: false,
        };
      },

      OnlineCPUMem: async () => {
        await onlineAll('/sys/devices/system/cpu', /^cpu\d+$/, 'online', '1');
        await onlineAll('/sys/devices/system/memory', /^memory\d+$/, 'state', 'online');
        return EMPTY;
      },

      CopyFile: async (req) => {
        const path = checkGuestPath(req.path, 'copy file path');
        if (req.offset < 0 || req.data.length > 4 << 20) throw errors.invalid('KATA_BAD_COPY', 'bad offset or chunk');
        await mkdir(dirname(path), { recursive: true, mode: req.dirMode || 0o755 });
        const fh = await open(path, req.offset === 0 ? 'w' : 'r+', req.fileMode || 0o644);
        try {
          await fh.write(req.data, 0, req.data.length, req.offset);
        } finally {
          await fh.close();
        }
        return EMPTY;
      },
    };
  }
}

async function onlineAll(dir: string, pattern: RegExp, file: string, value: string): Promise<void> {
  const entries = await readdir(dir).catch(() => [] as string[]);
  for (const e of entries) {
    if (!pattern.test(e)) continue;
    const p = join(dir, e, file);
    const cur = (await readFile(p, 'utf8').catch(() => '')).trim();
    if (cur && cur !== value && cur !== 'online') await writeFile(p, value).catch(() => undefined);
  }
}

async function guestMetrics(containers: number): Promise<string> {
  const meminfo = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const lines = ['# TYPE kata_guest_meminfo_bytes gauge'];
  for (const l of meminfo.split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(l);
    if (m) lines.push(`kata_guest_meminfo_bytes{item="${m[1]}"} ${Number(m[2]) * 1024}`);
  }
  const load = (await readFile('/proc/loadavg', 'utf8').catch(() => '0 0 0')).split(' ');
  lines.push('# TYPE kata_guest_load gauge', `kata_guest_load{period="1m"} ${load[0]}`);
  lines.push('# TYPE kata_agent_containers gauge', `kata_agent_containers ${containers}`);
  return lines.join('\n') + '\n';
}
