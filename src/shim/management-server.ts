/**
 * The shim's management server: HTTP over the unix socket `/run/vc/sbs/<sandboxId>/shim-monitor.sock`
 * (REFERENCE.md part A section 9), what `kata-runtime metrics` and kata-monitor talk to.
 *
 * - `/metrics`: Prometheus text. kata_shim_* (this process, task RPCs, sandbox start phases), kata_hypervisor_*
 *   and kata_virtiofsd_* (read from /proc of those processes), then the guest agent's own text (kata_guest_*,
 *   kata_agent_*) as it is.
 * - `/agent-url`: where the agent channel is on the host, e.g. `unix:///run/vc/vm/<sid>/agent.sock`.
 *
 * The socket exists only while the shim holds a sandbox: it appears once Create made the sandbox and goes with it.
 * Everything is read when scraped; nothing is sampled in the background. prom-client is loaded on the first
 * scrape only: it costs about 100 ms to import, which the shim's start must not pay; node:http is loaded when the
 * socket starts, since every `start` and `delete` invocation of the shim binary loads this module too.
 */
import { createConnection } from 'node:net';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errors } from '../base/errors.js';
import type { Logger } from '../base/logger.js';
import type { UnaryHandler } from '../protocol/ttrpc/server.js';
import { sandboxStateDir, vmDir, type RuntimePaths } from '../runtime/paths.js';
import type { Sandbox } from '../runtime/sandbox.js';

export const MANAGEMENT_SOCKET_NAME = 'shim-monitor.sock';
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
/** How long a scrape waits for the guest agent's metrics (TCG guests answer slowly under load). */
const AGENT_METRICS_TIMEOUT_MS = 5_000;
/** USER_HZ: the unit of /proc/<pid>/stat times; 100 on every Linux architecture this runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

export function managementSocketPath(paths: RuntimePaths, sandboxId: string): string {
  return join(sandboxStateDir(paths, sandboxId), MANAGEMENT_SOCKET_NAME);
}

/** Where the shim reaches the guest agent: the virtio-serial port's socket (vsock is not implemented). */
export function agentUrl(paths: RuntimePaths, sandboxId: string): string {
  return `unix://${join(vmDir(paths, sandboxId), 'agent.sock')}`;
}

// ---------------------------------------------------------------------------------------------------------------
// /proc readings

/** One process, or a process with its descendants (virtiofsd forks), summed. */
export interface ProcStats {
  pids: number[];
  residentBytes: number;
  virtualBytes: number;
  threads: number;
  fds: number;
  userSeconds: number;
  systemSeconds: number;
  readBytes: number;
  writeBytes: number;
  /** Of the oldest process. */
  uptimeSeconds: number;
}

interface OneProc extends Omit<ProcStats, 'pids' | 'uptimeSeconds'> {
  startTicks: number;
}

async function readOneProc(pid: number): Promise<OneProc | undefined> {
  try {
    const [status, stat] = await Promise.all([readFile(`/proc/${pid}/status`, 'utf8'), readFile(`/proc/${pid}/stat`, 'utf8')]);
    const kb = (key: string) => {
      const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status);
      return m ? Number(m[1]) * 1024 : 0;
    };
    const threads = Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const field = (n: number) => Number(rest[n - 3] ?? 0);
    const fds = await readdir(`/proc/${pid}/fd`).then((e) => e.length, () => 0);
    const io = await readFile(`/proc/${pid}/io`, 'utf8').catch(() => '');
    const ioField = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(io)?.[1] ?? 0);
    return {
      residentBytes: kb('VmRSS'),
      virtualBytes: kb('VmSize'),
      threads,
      fds,
      userSeconds: field(14) / CLOCK_TICKS_PER_SECOND,
      systemSeconds: field(15) / CLOCK_TICKS_PER_SECOND,
      startTicks: field(22),
      readBytes: ioField('read_bytes'),
      writeBytes: ioField('write_bytes'),
    };
  } catch {
    return undefined; // exited meanwhile
  }
}

async function childrenOf(pid: number): Promise<number[]> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  const out: number[] = [];
  for (const tid of tasks) {
    const text = await readFile(`/proc/${pid}/task/${tid}/children`, 'utf8').catch(() => '');
    for (const c of text.split(' ')) if (c.trim()) out.push(Number(c));
  }
  return out;
}

/** Sums `/proc` figures over `roots` and, with `descendants`, everything they started. Undefined if none is alive. */
export async function readProcStats(roots: number[], opts: { descendants?: boolean } = {}): Promise<ProcStats | undefined> {
  const pids: number[] = [];
  const queue = [...roots];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    if (pids.includes(pid)) continue;
    pids.push(pid);
    if (opts.descendants) queue.push(...(await childrenOf(pid)));
  }
  const procs = (await Promise.all(pids.map(async (pid) => ({ pid, p: await readOneProc(pid) })))).filter((x) => x.p);
  if (procs.length === 0) return undefined;
  const bootUptime = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
  const sum = (k: keyof OneProc) => procs.reduce((a, x) => a + x.p![k], 0);
  const oldest = Math.min(...procs.map((x) => x.p!.startTicks));
  return {
    pids: procs.map((x) => x.pid),
    residentBytes: sum('residentBytes'),
    virtualBytes: sum('virtualBytes'),
    threads: sum('threads'),
    fds: sum('fds'),
    userSeconds: sum('userSeconds'),
    systemSeconds: sum('systemSeconds'),
    readBytes: sum('readBytes'),
    writeBytes: sum('writeBytes'),
    uptimeSeconds: Math.max(0, Math.round((bootUptime - oldest / CLOCK_TICKS_PER_SECOND) * 100) / 100),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Task RPC accounting

interface RpcTotals {
  calls: number;
  errors: number;
  seconds: number;
}

// ---------------------------------------------------------------------------------------------------------------
// The server

type PromClient = typeof import('prom-client');
let promClient: Promise<PromClient> | undefined;
const loadPromClient = () => (promClient ??= import('prom-client'));

export class ManagementServer {
  private readonly log: Logger;
  private server?: Server;
  private socketPath?: string;
  private sandbox?: Sandbox;
  private readonly rpc = new Map<string, RpcTotals>();
  /** Start and stop run one after the other. */
  private op: Promise<void> = Promise.resolve();

  constructor(
    private readonly paths: RuntimePaths,
    log: Logger,
  ) {
    this.log = log.child({ subsystem: 'management-server' });
  }

  /** The socket being served, if any. */
  get listeningOn(): string | undefined {
    return this.socketPath;
  }

  /**
   * Wraps the task service's handlers: counts each call and its time, then follows the sandbox (the socket
   * appears with it after Create and goes with it after the last Delete).
   */
  instrument(handlers: Record<string, UnaryHandler>, currentSandbox: () => Sandbox | undefined): Record<string, UnaryHandler> {
    const out: Record<string, UnaryHandler> = {};
    for (const [action, fn] of Object.entries(handlers)) {
      out[action] = async (payload, ctx) => {
        const t0 = performance.now();
        let failed = false;
        try {
          return await fn(payload, ctx);
        } catch (err) {
          failed = true;
          throw err;
        } finally {
          const totals = this.rpc.get(action) ?? { calls: 0, errors: 0, seconds: 0 };
          totals.calls++;
          if (failed) totals.errors++;
          totals.seconds += (performance.now() - t0) / 1000;
          this.rpc.set(action, totals);
          await this.follow(currentSandbox());
        }
      };
    }
    return out;
  }

  /** Serves for `sandbox` (starting the socket if needed), or stops serving when it is gone. */
  follow(sandbox: Sandbox | undefined): Promise<void> {
    this.op = this.op.then(async () => {
      if (sandbox === this.sandbox) return;
      await this.stopServing();
      if (sandbox) await this.startServing(sandbox);
    });
    return this.op.catch((err) => this.log.warn({ err }, 'management server'));
  }

  /** Stops serving and removes the socket. Idempotent. */
  close(): Promise<void> {
    return this.follow(undefined);
  }

  private async startServing(sandbox: Sandbox): Promise<void> {
    const path = managementSocketPath(this.paths, sandbox.id);
    await rm(path, { force: true }); // a stale socket of an earlier, killed shim
    const { createServer } = await import('node:http');
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        this.log.warn({ err, url: req.url }, 'management request failed');
        if (!res.headersSent) reply(res, 500, 'text/plain; charset=utf-8', `internal error: ${(err as Error).message}\n`);
        else res.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.log.warn({ err }, 'management server error'));
    this.server = server;
    this.socketPath = path;
    this.sandbox = sandbox;
    this.log.info({ socketPath: path }, 'management server listening');
  }

  private async stopServing(): Promise<void> {
    const server = this.server;
    const path = this.socketPath;
    this.server = undefined;
    this.socketPath = undefined;
    this.sandbox = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (path) await rm(path, { force: true });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://shim');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      reply(res, 405, 'text/plain; charset=utf-8', 'only GET\n');
      return;
    }
    const sandbox = this.sandbox;
    if (!sandbox) {
      reply(res, 503, 'text/plain; charset=utf-8', 'no sandbox\n');
      return;
    }
    switch (url.pathname) {
      case '/metrics':
        reply(res, 200, PROMETHEUS_CONTENT_TYPE, await this.metricsText(sandbox));
        return;
      case '/agent-url':
        reply(res, 200, 'text/plain; charset=utf-8', agentUrl(this.paths, sandbox.id));
        return;
      default:
        reply(res, 404, 'text/plain; charset=utf-8', `no such endpoint: ${url.pathname} (try /metrics, /agent-url)\n`);
    }
  }

  /** The whole /metrics text for one scrape: a fresh registry each time, so nothing is kept between scrapes. */
  async metricsText(sandbox: Sandbox): Promise<string> {
    const prom = await loadPromClient();
    const registry = new prom.Registry();
    const gauge = (name: string, help: string, labelNames: string[] = []) =>
      new prom.Gauge({ name, help, labelNames, registers: [registry] });
    const counter = (name: string, help: string, labelNames: string[] = []) =>
      new prom.Counter({ name, help, labelNames, registers: [registry] });

    const vmmPids = sandbox.hypervisor.pids();
    const sharePids = sandbox.hostProcesses().map((p) => p.pid).filter((p) => !vmmPids.includes(p));
    const [shim, hypervisor, virtiofsd, agentText] = await Promise.all([
      readProcStats([process.pid]),
      readProcStats(vmmPids),
      sandbox.sharedFsKind === 'virtio-fs' ? readProcStats(sharePids, { descendants: true }) : Promise.resolve(undefined),
      sandbox.agent.call('GetMetrics', {}, { timeoutMs: AGENT_METRICS_TIMEOUT_MS }).then(
        (r) => r.metrics,
        (err: unknown) => {
          this.log.debug({ err }, 'agent GetMetrics failed');
          return undefined;
        },
      ),
    ]);

    const processFamilies = (prefix: string, what: string, s: ProcStats | undefined) => {
      gauge(`${prefix}_processes`, `Number of ${what} processes read`).set(s?.pids.length ?? 0);
      if (!s) return;
      gauge(`${prefix}_resident_memory_bytes`, `Resident memory (VmRSS) of ${what}, bytes`).set(s.residentBytes);
      gauge(`${prefix}_virtual_memory_bytes`, `Virtual memory (VmSize) of ${what}, bytes`).set(s.virtualBytes);
      gauge(`${prefix}_threads`, `Threads of ${what}`).set(s.threads);
      gauge(`${prefix}_fds`, `Open file descriptors of ${what}`).set(s.fds);
      const cpu = counter(`${prefix}_cpu_seconds_total`, `CPU time of ${what}, seconds`, ['mode']);
      cpu.inc({ mode: 'user' }, s.userSeconds);
      cpu.inc({ mode: 'system' }, s.systemSeconds);
      const io = counter(`${prefix}_io_bytes_total`, `Storage I/O of ${what} (/proc/<pid>/io), bytes`, ['direction']);
      io.inc({ direction: 'read' }, s.readBytes);
      io.inc({ direction: 'write' }, s.writeBytes);
      gauge(`${prefix}_uptime_seconds`, `Seconds since ${what} started`).set(s.uptimeSeconds);
    };
    processFamilies('kata_shim', 'the shim', shim);
    processFamilies('kata_hypervisor', 'the hypervisor (VMM)', hypervisor);
    processFamilies('kata_virtiofsd', 'virtiofsd (with its forks)', virtiofsd);

    const overhead = (shim?.residentBytes ?? 0) + (hypervisor?.residentBytes ?? 0) + (virtiofsd?.residentBytes ?? 0);
    gauge('kata_shim_pod_overhead_memory_bytes', 'Resident memory of the shim, the VMM and virtiofsd together, bytes').set(overhead);
    gauge('kata_shim_containers', 'Containers in the sandbox').set(sandbox.listContainers().length);

    const info = gauge('kata_shim_sandbox_info', 'Constant 1, labelled with how the sandbox runs', ['hypervisor', 'shared_fs', 'vm_origin', 'machine_type']);
    info.set(
      {
        hypervisor: sandbox.hypervisor.kind,
        shared_fs: sandbox.sharedFsKind,
        vm_origin: sandbox.timings.vmOrigin ?? 'unknown',
        machine_type: sandbox.config.hypervisor.machineType,
      },
      1,
    );
    const phases = gauge('kata_shim_sandbox_start_phase_seconds', 'Seconds from the start of sandbox creation until each phase ended', ['phase']);
    const t = sandbox.timings;
    for (const [phase, ms] of [['vm_running', t.vmRunningMs], ['agent_ready', t.agentReadyMs], ['sandbox_ready', t.sandboxReadyMs]] as const) {
      if (ms !== undefined) phases.set({ phase }, ms / 1000);
    }
    const guestUptime = gauge('kata_shim_guest_uptime_at_seconds', 'Guest uptime when the guest reached each stage (from its console)', ['stage']);
    if (t.guestInitUptimeS !== undefined) guestUptime.set({ stage: 'init' }, t.guestInitUptimeS);
    if (t.guestAgentUptimeS !== undefined) guestUptime.set({ stage: 'agent' }, t.guestAgentUptimeS);

    const calls = counter('kata_shim_rpc_calls_total', 'Task API calls served, by action', ['action']);
    const failures = counter('kata_shim_rpc_errors_total', 'Task API calls that failed, by action', ['action']);
    const seconds = counter('kata_shim_rpc_duration_seconds_total', 'Time spent serving Task API calls, by action, seconds', ['action']);
    for (const [action, r] of this.rpc) {
      calls.inc({ action }, r.calls);
      failures.inc({ action }, r.errors);
      seconds.inc({ action }, r.seconds);
    }
    gauge('kata_shim_agent_metrics_up', '1 if the guest agent answered GetMetrics for this scrape').set(agentText === undefined ? 0 : 1);

    let text = await registry.metrics();
    if (agentText) text += agentText.endsWith('\n') ? agentText : `${agentText}\n`;
    return text;
  }
}

function reply(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

// ---------------------------------------------------------------------------------------------------------------
// Client side (kata-runtime metrics, kata-monitor)

export interface ShimResponse {
  status: number;
  contentType: string;
  body: string;
}

/**
 * GET `path` from a shim's management socket. A missing socket is NotFound; a socket nobody serves (a killed
 * shim) is Unavailable; no answer within `timeoutMs` is DeadlineExceeded.
 */
export async function shimGet(socketPath: string, path: string, opts: { timeoutMs?: number } = {}): Promise<ShimResponse> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const { request } = await import('node:http');
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', host: 'shim', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(errors.deadline('KATA_SHIM_TIMEOUT', `${socketPath}: no answer to ${path} within ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') reject(errors.notFound('KATA_SHIM_NO_SOCKET', `${socketPath} does not exist (is the sandbox running?)`, err));
      else if (err.code === 'ECONNREFUSED') reject(errors.unavailable('KATA_SHIM_UNREACHABLE', `${socketPath}: nobody serves it (shim gone?)`, err));
      else reject(err);
    });
    req.end();
  });
}

/** True when something accepts connections on the unix socket within `timeoutMs` (stale sockets are false). */
export function socketIsServed(socketPath: string, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(socketPath);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}
