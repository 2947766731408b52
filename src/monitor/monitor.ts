import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { isKind } from '../base/errors.js';
import type { Logger } from '../base/logger.js';
import { MANAGEMENT_SOCKET_NAME, PROMETHEUS_CONTENT_TYPE, shimGet, socketIsServed } from '../shim/management-server.js';
import { renderIndexPage } from './index-page.js';
import { formatAddress, type ListenAddress } from './listen-address.js';
import { MetricsMerger } from './prom-text.js';

export interface KataMonitorOptions {
  /** Where the shims' sandbox dirs are (`/run/vc/sbs`); each running shim serves `<dir>/<sid>/shim-monitor.sock`. */
  sandboxRoot: string;
  log: Logger;
  /** How long one shim may take to answer a scrape (its guest agent is asked too). Default 8 s. */
  shimTimeoutMs?: number;
}

export interface ShimEndpoint {
  sandboxId: string;
  socketPath: string;
}

const TEXT = 'text/plain; charset=utf-8';

/**
 * kata-monitor: one per node. On each scrape of /metrics it asks every shim for its metrics and relabels them with
 * `sandbox_id`; between scrapes it does nothing (no watcher, no cache).
 */
export class KataMonitor {
  private readonly log: Logger;
  private readonly registry = new Registry();
  private readonly scrapes = new Counter({ name: 'kata_monitor_scrapes_total', help: 'Scrapes of /metrics served', registers: [this.registry] });
  private readonly failures = new Counter({
    name: 'kata_monitor_shim_scrape_failures_total',
    help: 'Shims that did not answer a scrape (gone, hung, or an error)',
    registers: [this.registry],
  });
  private readonly runningShims = new Gauge({ name: 'kata_monitor_running_shims', help: 'Shims that answered the last scrape', registers: [this.registry] });
  private readonly duration = new Histogram({
    name: 'kata_monitor_scrape_duration_seconds',
    help: 'Time to gather every shim\'s metrics for one scrape, seconds',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  private server?: Server;

  constructor(private readonly opts: KataMonitorOptions) {
    this.log = opts.log.child({ subsystem: 'kata-monitor' });
  }

  /** Starts serving; resolves with the address really bound (port 0 becomes a free port). */
  async listen(addr: ListenAddress): Promise<ListenAddress> {
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err) => {
        this.log.warn({ err, url: req.url }, 'request failed');
        if (!res.headersSent) reply(res, 500, TEXT, `internal error: ${(err as Error).message}\n`);
        else res.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(addr.port, addr.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const bound = server.address();
    const actual = bound && typeof bound === 'object' ? { host: bound.address, port: bound.port } : addr;
    this.log.info({ address: formatAddress(actual), sandboxRoot: this.opts.sandboxRoot }, 'kata-monitor listening');
    return actual;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Every `<sandboxRoot>/<sid>/shim-monitor.sock` that exists (served or not), sorted by sandbox id. */
  async shimSockets(): Promise<ShimEndpoint[]> {
    const entries = await readdir(this.opts.sandboxRoot).catch(() => [] as string[]);
    const found: ShimEndpoint[] = [];
    for (const sandboxId of entries.sort()) {
      const socketPath = join(this.opts.sandboxRoot, sandboxId, MANAGEMENT_SOCKET_NAME);
      const st = await stat(socketPath).catch(() => undefined);
      if (st?.isSocket()) found.push({ sandboxId, socketPath });
    }
    return found;
  }

  /** Sandboxes whose shim answers on its socket (stale sockets of killed shims are left out). */
  async runningSandboxes(): Promise<ShimEndpoint[]> {
    const all = await this.shimSockets();
    const served = await Promise.all(all.map((s) => socketIsServed(s.socketPath)));
    return all.filter((_, i) => served[i]);
  }

  /** The merged /metrics text: every shim's (or only `onlySandbox`'s) samples labelled, then kata-monitor's own. */
  async gather(onlySandbox?: string): Promise<string> {
    const t0 = performance.now();
    const shims = (await this.shimSockets()).filter((s) => onlySandbox === undefined || s.sandboxId === onlySandbox);
    const timeoutMs = this.opts.shimTimeoutMs ?? 8_000;
    const texts = await Promise.all(
      shims.map(async (s) => {
        try {
          const r = await shimGet(s.socketPath, '/metrics', { timeoutMs });
          if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${r.body.trim()}`);
          return r.body;
        } catch (err) {
          // A socket left by a killed shim is expected now and then: not worth a warning.
          const stale = isKind(err, 'Unavailable') || isKind(err, 'NotFound');
          this.log[stale ? 'debug' : 'warn']({ err, sandboxId: s.sandboxId }, 'shim did not answer the scrape');
          this.failures.inc();
          return undefined;
        }
      }),
    );
    const merger = new MetricsMerger();
    let answered = 0;
    shims.forEach((s, i) => {
      const text = texts[i];
      if (text === undefined) return;
      answered++;
      merger.add(text, { sandbox_id: s.sandboxId });
    });
    if (onlySandbox === undefined) {
      this.scrapes.inc();
      this.runningShims.set(answered);
      this.duration.observe((performance.now() - t0) / 1000);
      merger.add(await this.registry.metrics());
    }
    return merger.render();
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      reply(res, 405, TEXT, 'only GET\n');
      return;
    }
    const url = new URL(req.url ?? '/', 'http://kata-monitor');
    const sandbox = url.searchParams.get('sandbox') ?? undefined;
    switch (url.pathname) {
      case '/metrics':
        reply(res, 200, PROMETHEUS_CONTENT_TYPE, await this.gather(sandbox));
        return;
      case '/sandboxes': {
        const ids = (await this.runningSandboxes()).map((s) => s.sandboxId);
        reply(res, 200, 'application/json', JSON.stringify(ids) + '\n');
        return;
      }
      case '/agent-url': {
        if (!sandbox) {
          reply(res, 400, TEXT, 'missing ?sandbox=<id>\n');
          return;
        }
        const shim = (await this.shimSockets()).find((s) => s.sandboxId === sandbox);
        if (!shim) {
          reply(res, 404, TEXT, `no running sandbox ${sandbox}\n`);
          return;
        }
        const r = await shimGet(shim.socketPath, '/agent-url', { timeoutMs: 3_000 }).catch((err: Error) => ({
          status: 502,
          contentType: TEXT,
          body: `shim of ${sandbox} did not answer: ${err.message}\n`,
        }));
        reply(res, r.status, r.contentType || TEXT, r.body);
        return;
      }
      case '/':
      case '/index.html': {
        const ids = (await this.runningSandboxes()).map((s) => s.sandboxId);
        reply(res, 200, 'text/html; charset=utf-8', renderIndexPage(ids, this.opts.sandboxRoot));
        return;
      }
      default:
        reply(res, 404, TEXT, `no such endpoint: ${url.pathname}\n`);
    }
  }
}

function reply(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
