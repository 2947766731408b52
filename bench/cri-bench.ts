import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { cpus, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import * as cri from '../src/protocol/gen/cri/api.js';
import { criMessage } from '../test/helpers/cri-client.js';
import { CriEnv, type CriPod } from '../test/helpers/cri-env.js';
import { writeTestConfig } from '../test/helpers/config.js';
import { fmtMs, median, runs, table, writeResults } from './stats.js';

/**
 * The Kubernetes path, side by side in one run through containerd's CRI plugin and a private CNI bridge:
 *  1. RunPodSandbox + CreateContainer + StartContainer (busybox sleep): runc (handler "") vs kata-ts ("kata");
 *  2. host->pod HTTP requests/s against nginx with `ab -k -c 100`, beside the published Kata figures;
 *  3. iperf3 host<->pod TCP throughput: runc, kata-ts with tc-filter, kata-ts with macvtap (when it works).
 * Each measurement (and each runtime inside it) fails on its own: its error is printed and the rest still run.
 *
 * Network safety: ab and iperf3 only ever target pod addresses on the env's own bridge; every load is bounded in
 * requests and seconds.
 */

const MACVTAP_HANDLER = 'kata-macvtap';
const AB_REQUESTS = Number(process.env.BENCH_AB_REQUESTS ?? 5000);
const AB_SECONDS = Number(process.env.BENCH_AB_SECONDS ?? 10);
const AB_CONCURRENCY = 100;
const IPERF_SECONDS = 5;
const IPERF_PORT = 5201;
/**
 * The image's Cmd (nginx -g 'daemon off;') behind a pipe, for both runtimes alike. nginx opens /dev/stdout and
 * /dev/stderr for its logs; in a kata-ts guest the container's stdio are sockets, which cannot be reopened through
 * /proc/self/fd (ENXIO), so the plain Cmd exits at once there. Through the pipe the logs still reach the CRI log.
 */
const NGINX_COMMAND = ['sh', '-c', `nginx -g 'daemon off;' 2>&1 | cat`];
/**
 * Where an HTTP request's time goes: the same nginx without access log, answering from no file at all, from a
 * file on tmpfs (/dev/shm: a guest tmpfs under kata-ts) and from the image's rootfs (overlayfs for runc, shared
 * from the host over 9p, the shipped default, for kata-ts). One ab run each, after the measured runs, in the same pod.
 */
const DIAG_CONF = `worker_processes 1; pid /tmp/nginx-diag.pid; error_log stderr notice;
events { worker_connections 256; }
http {
  access_log off; sendfile off; keepalive_timeout 30;
  server {
    listen 80 default_server;
    location = /ret { return 200 "ok\\n"; }
    location /shm/ { alias /dev/shm/; }
    location / { root /usr/share/nginx/html; }
  }
}`;
const DIAG_COMMAND = [
  'sh',
  '-c',
  `cat > /tmp/nginx-diag.conf <<'EOF'\n${DIAG_CONF}\nEOF\n` +
    `cp /usr/share/nginx/html/index.html /dev/shm/ && exec nginx -c /tmp/nginx-diag.conf -g 'daemon off;'`,
];
const DIAG_PATHS: [string, string][] = [
  ['/ret', 'no file (return 200)'],
  ['/shm/index.html', 'index.html on tmpfs (/dev/shm)'],
  ['/index.html', 'index.html on the rootfs (kata-ts: 9p share)'],
];
const DIAG_REQUESTS = 3000;
const DIAG_SECONDS = 5;

/** The published Kata figures quoted by the issue (4-vCPU pod on a hard disk), nginx req/s. */
const PUBLISHED = { runc: 16_949, virtio9p: 1_182, virtioFs: 3_787, devmapper: 8_854 };

interface Variant {
  key: string;
  label: string;
  handler: string;
}
const RUNC: Variant = { key: 'runc', label: 'runc (handler "")', handler: '' };
const KATA: Variant = { key: 'kata', label: 'kata-ts (handler "kata")', handler: 'kata' };
const KATA_TC: Variant = { key: 'kataTcFilter', label: 'kata-ts, tc-filter', handler: 'kata' };
const KATA_MACVTAP: Variant = { key: 'kataMacvtap', label: 'kata-ts, macvtap', handler: MACVTAP_HANDLER };

/** What one measurement hands back: its printed section, its JSON and whether any figure came out of it. */
interface Section {
  text: string;
  json: unknown;
  measured: boolean;
}

interface Proc {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a host command to completion, killed after `timeoutMs`. */
function runProc(cmd: string, args: string[], timeoutMs: number): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function errText(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 300);
}

async function retry<T>(what: string, fn: () => Promise<T>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > until) throw new Error(`${what}: ${errText(err)}`, { cause: err });
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

function httpStatus(ip: string, port: number, path = '/'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: ip, port, path, timeout: 5000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** Runs `fn` with a fresh pod of `variant`, and always removes the pod afterwards. */
async function withPod<T>(env: CriEnv, variant: Variant, name: string, fn: (pod: CriPod) => Promise<T>): Promise<T> {
  const pod = await env.runPod({ handler: variant.handler, name });
  try {
    return await fn(pod);
  } finally {
    await pod.remove().catch((err) => process.stderr.write(`remove pod ${name}: ${errText(err)}\n`));
  }
}

/** CPUs the pod's containers see (the VM's vCPUs for kata-ts, the host's for runc). */
async function podCpus(env: CriEnv, containerId: string): Promise<number | undefined> {
  const r = await env.client.execSync({ containerId, cmd: ['sh', '-c', 'grep -c ^processor /proc/cpuinfo'], timeout: 10 });
  const n = Number(r.stdout.toString().trim());
  return r.exitCode === 0 && n > 0 ? n : undefined;
}

function fmtRatio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || b <= 0) return '-';
  const r = a / b;
  return r.toFixed(r >= 1 ? 2 : 3);
}
const med = (xs: number[] | undefined) => (xs && xs.length > 0 ? median(xs) : undefined);
const round = (x: number | undefined, digits = 0) => (x === undefined ? undefined : Number(x.toFixed(digits)));

// ---------------------------------------------------------------------------------------------------------------
// 1. RunPodSandbox-to-container-running

async function measureStartup(env: CriEnv, n: number): Promise<Section> {
  const variants = [RUNC, KATA];
  const samples: Record<string, { sandboxMs: number[]; containerMs: number[]; totalMs: number[] }> = {};
  const errors: Record<string, string> = {};
  for (const v of variants) samples[v.key] = { sandboxMs: [], containerMs: [], totalMs: [] };
  // Interleaved, so drift on the host (page cache, other load) hits both runtimes alike.
  for (let i = 0; i < n; i++) {
    for (const v of variants) {
      if (errors[v.key]) continue;
      const name = `start-${v.key}-${i}`;
      try {
        const t0 = performance.now();
        const pod = await env.runPod({ handler: v.handler, name });
        try {
          const t1 = performance.now();
          await pod.runContainer({ name: 'sleep', image: 'busybox', command: ['sleep', '3600'] });
          const t2 = performance.now();
          samples[v.key]!.sandboxMs.push(t1 - t0);
          samples[v.key]!.containerMs.push(t2 - t1);
          samples[v.key]!.totalMs.push(t2 - t0);
        } finally {
          await pod.remove().catch((err) => process.stderr.write(`remove pod ${name}: ${errText(err)}\n`));
        }
      } catch (err) {
        errors[v.key] = errText(err);
        process.stderr.write(`startup ${v.label}: ${errors[v.key]}\n`);
      }
    }
  }
  const m = (k: string, f: 'sandboxMs' | 'containerMs' | 'totalMs') => med(samples[k]![f]);
  const rows = [['runtime', 'RunPodSandbox', 'Create+StartContainer', 'total (median)', 'samples (total, ms)']];
  for (const v of variants) {
    const s = samples[v.key]!;
    rows.push(
      errors[v.key] && s.totalMs.length === 0
        ? [v.label, 'failed:', errors[v.key]!, '', '']
        : [v.label, fmtMs(m(v.key, 'sandboxMs')), fmtMs(m(v.key, 'containerMs')), fmtMs(m(v.key, 'totalMs')), s.totalMs.map((x) => Math.round(x)).join(' ')],
    );
  }
  const ratio = fmtRatio(m('kata', 'totalMs'), m('runc', 'totalMs'));
  rows.push(['ratio kata-ts/runc', fmtRatio(m('kata', 'sandboxMs'), m('runc', 'sandboxMs')), fmtRatio(m('kata', 'containerMs'), m('runc', 'containerMs')), ratio, '']);
  const text = [
    `1. RunPodSandbox + CreateContainer + StartContainer of busybox \`sleep\` (pod: 1 CPU, 256 MiB), medians of ${n}`,
    table(rows),
    ...Object.entries(errors).map(([k, e]) => `   ${k} error: ${e}`),
  ].join('\n');
  const json = {
    medianMs: Object.fromEntries(
      variants.map((v) => [v.key, { runPodSandbox: round(m(v.key, 'sandboxMs')), createStartContainer: round(m(v.key, 'containerMs')), total: round(m(v.key, 'totalMs')) }]),
    ),
    ratioKataToRunc: ratio === '-' ? undefined : Number(ratio),
    samplesMs: Object.fromEntries(variants.map((v) => [v.key, samples[v.key]!.totalMs.map((x) => Math.round(x))])),
    errors,
  };
  return { text, json, measured: variants.some((v) => samples[v.key]!.totalMs.length > 0) };
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Host->pod HTTP requests/s (ab)

interface AbResult {
  rps: number;
  complete: number;
  failed: number;
  non2xx: number;
  seconds: number;
}

async function ab(url: string, concurrency: number, requests: number, seconds: number): Promise<AbResult> {
  // `-t` sets the request count to 50000 itself: `-n` after it puts the bound back.
  const args = ['-k', '-q', '-c', String(concurrency), '-t', String(seconds), '-n', String(requests), '-s', '10', url];
  const r = await runProc('ab', args, (seconds + 30) * 1000);
  const num = (re: RegExp) => {
    const m = re.exec(r.stdout);
    return m ? Number(m[1]) : undefined;
  };
  const rps = num(/Requests per second:\s+([\d.]+)/);
  if (r.code !== 0 || rps === undefined) {
    throw new Error(`ab ${args.join(' ')} exited ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim().slice(-300)}`);
  }
  return {
    rps,
    complete: num(/Complete requests:\s+(\d+)/) ?? 0,
    failed: num(/Failed requests:\s+(\d+)/) ?? 0,
    non2xx: num(/Non-2xx responses:\s+(\d+)/) ?? 0,
    seconds: num(/Time taken for tests:\s+([\d.]+)/) ?? 0,
  };
}

async function measureHttp(env: CriEnv, n: number): Promise<Section> {
  const variants = [RUNC, KATA];
  type HttpResult = { samples: AbResult[]; cpus?: number; error?: string; diag: Record<string, number>; diagError?: string };
  const results: Record<string, HttpResult> = {};
  for (const v of variants) {
    const res: HttpResult = { samples: [], diag: {} };
    results[v.key] = res;
    try {
      await withPod(env, v, `http-${v.key}`, async (pod) => {
        const cid = await pod.runContainer({ name: 'nginx', image: 'nginx', command: NGINX_COMMAND }, { timeoutMs: 120_000 });
        const ip = await pod.ip();
        res.cpus = await podCpus(env, cid).catch(() => undefined);
        await retry(`nginx at ${ip}:80`, async () => {
          const status = await httpStatus(ip, 80);
          if (status !== 200) throw new Error(`HTTP ${status}`);
        }, 60_000);
        const url = `http://${ip}:80/`;
        await ab(url, 10, 200, 10); // warm-up: connections, page cache, guest TCP
        for (let i = 0; i < n; i++) res.samples.push(await ab(url, AB_CONCURRENCY, AB_REQUESTS, AB_SECONDS));
        try {
          // Its stdio are not opened by path (error_log stderr, no access log): no pipe needed.
          await env.client.stopContainer({ containerId: cid, timeout: 5 }, { timeoutMs: 60_000 });
          await pod.runContainer({ name: 'nginx-diag', image: 'nginx', command: DIAG_COMMAND }, { timeoutMs: 120_000 });
          for (const [path] of DIAG_PATHS) {
            const u = `http://${ip}:80${path}`;
            await retry(`GET ${u}`, async () => {
              const status = await httpStatus(ip, 80, path);
              if (status !== 200) throw new Error(`HTTP ${status}`);
            }, 60_000);
            await ab(u, 10, 100, 5); // warm-up
            res.diag[path] = (await ab(u, AB_CONCURRENCY, DIAG_REQUESTS, DIAG_SECONDS)).rps;
          }
        } catch (err) {
          res.diagError = errText(err);
          process.stderr.write(`http diagnostic ${v.label}: ${res.diagError}\n`);
        }
      });
    } catch (err) {
      res.error = errText(err);
      process.stderr.write(`http ${v.label}: ${res.error}\n`);
    }
  }
  const rps = (k: string) => med(results[k]!.samples.map((s) => s.rps));
  const rows = [['runtime', 'req/s (median)', 'failed+non-2xx', 'completed/run', 'CPUs seen', 'samples (req/s)']];
  for (const v of variants) {
    const r = results[v.key]!;
    if (r.samples.length === 0) {
      rows.push([v.label, 'failed:', r.error ?? '', '', '', '']);
      continue;
    }
    rows.push([
      v.label,
      rps(v.key)!.toFixed(0),
      String(r.samples.reduce((a, s) => a + s.failed + s.non2xx, 0)),
      String(Math.round(median(r.samples.map((s) => s.complete)))),
      String(r.cpus ?? '-'),
      r.samples.map((s) => s.rps.toFixed(0)).join(' '),
    ]);
  }
  const ratio = fmtRatio(rps('kata'), rps('runc'));
  rows.push(['ratio kata-ts/runc', ratio, '', '', '', '']);
  const diag = (k: string, path: string) => results[k]!.diag[path];
  const diagRows = [['   path', 'runc', 'kata-ts', 'kata-ts/runc']];
  for (const [path, what] of DIAG_PATHS) {
    const f = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(0));
    diagRows.push([`   ${path}: ${what}`, f(diag('runc', path)), f(diag('kata', path)), fmtRatio(diag('kata', path), diag('runc', path))]);
  }
  const pub = (x: number) => (x / PUBLISHED.runc).toFixed(3);
  const refRows = [
    ['published (issue), 4-vCPU pod, hard disk', 'req/s', 'ratio to runc'],
    ['runc', PUBLISHED.runc.toLocaleString('en-US'), '1'],
    ['Kata, virtio-9p', PUBLISHED.virtio9p.toLocaleString('en-US'), pub(PUBLISHED.virtio9p)],
    ['Kata, virtio-fs', PUBLISHED.virtioFs.toLocaleString('en-US'), pub(PUBLISHED.virtioFs)],
    ['Kata, devmapper', PUBLISHED.devmapper.toLocaleString('en-US'), pub(PUBLISHED.devmapper)],
  ];
  const text = [
    `2. host->pod HTTP: ab -k -c ${AB_CONCURRENCY} -n ${AB_REQUESTS} -t ${AB_SECONDS} against nginx (1 worker, access log to stdout through \`| cat\`), medians of ${n}`,
    table(rows),
    ...variants.filter((v) => results[v.key]!.error && results[v.key]!.samples.length > 0).map((v) => `   ${v.key} error: ${results[v.key]!.error}`),
    '',
    table(refRows),
    `   this machine: ${cpus().length} cores shared by ab, nginx and QEMU; QEMU TCG (no KVM); kata-ts rootfs on the 9p share (shipped default; pods are template clones).`,
    '',
    `   where the time goes: nginx without access log, one ab -k -c ${AB_CONCURRENCY} -n ${DIAG_REQUESTS} -t ${DIAG_SECONDS} run per path, req/s`,
    table(diagRows),
    ...variants.filter((v) => results[v.key]!.diagError).map((v) => `   ${v.key} diagnostic error: ${results[v.key]!.diagError}`),
  ].join('\n');
  const json = {
    command: `ab -k -c ${AB_CONCURRENCY} -n ${AB_REQUESTS} -t ${AB_SECONDS}`,
    medianReqPerSec: { runc: round(rps('runc'), 1), kata: round(rps('kata'), 1) },
    ratioKataToRunc: ratio === '-' ? undefined : Number(ratio),
    podCpus: { runc: results.runc!.cpus, kata: results.kata!.cpus },
    samples: Object.fromEntries(variants.map((v) => [v.key, results[v.key]!.samples])),
    errors: Object.fromEntries(variants.filter((v) => results[v.key]!.error).map((v) => [v.key, results[v.key]!.error])),
    published: { ...PUBLISHED, note: 'from the issue: 4-vCPU pod on a hard disk' },
    diagnosticReqPerSec: Object.fromEntries(
      DIAG_PATHS.map(([path]) => [path, { runc: round(diag('runc', path), 1), kata: round(diag('kata', path), 1) }]),
    ),
  };
  return { text, json, measured: variants.some((v) => results[v.key]!.samples.length > 0) };
}

// ---------------------------------------------------------------------------------------------------------------
// 3. iperf3 host<->pod

/**
 * The images have no iperf3: the host's binary, its libraries and its loader go into a directory that is
 * bind-mounted into the pod and run through the loader: the image only needs busybox (netstat, for readiness).
 */
function iperfDir(): string {
  const bin = execFileSync('sh', ['-c', 'command -v iperf3'], { encoding: 'utf8' }).trim();
  if (!bin) throw new Error('iperf3 not installed');
  const dir = mkdtempSync(join(tmpdir(), 'kata-ts-iperf-'));
  chmodSync(dir, 0o755);
  copyFileSync(bin, join(dir, 'iperf3'));
  let loader: string | undefined;
  for (const line of execFileSync('ldd', [bin], { encoding: 'utf8' }).split('\n')) {
    const lib = /^\s*(\S+)\s+=>\s+(\/\S+)/.exec(line);
    const direct = /^\s*(\/\S+)\s+\(/.exec(line);
    if (lib) copyFileSync(lib[2]!, join(dir, basename(lib[1]!)));
    else if (direct) {
      loader = basename(direct[1]!);
      copyFileSync(direct[1]!, join(dir, loader));
    }
  }
  if (!loader) throw new Error(`no dynamic loader in ldd ${bin}`);
  for (const f of execFileSync('ls', [dir], { encoding: 'utf8' }).split('\n').filter(Boolean)) chmodSync(join(dir, f), 0o755);
  writeFileSync(join(dir, 'LOADER'), loader);
  return dir;
}

/** One iperf3 client run against the pod; returns the receiver's Gbit/s. `reverse`: the pod sends. */
async function iperf(ip: string, reverse: boolean): Promise<number> {
  const args = ['-c', ip, '-p', String(IPERF_PORT), '-t', String(IPERF_SECONDS), '-J', '--connect-timeout', '5000', ...(reverse ? ['-R'] : [])];
  const r = await runProc('iperf3', args, (IPERF_SECONDS + 30) * 1000);
  let out: { error?: string; end?: { sum_received?: { bits_per_second?: number } } } = {};
  try {
    out = JSON.parse(r.stdout) as typeof out;
  } catch {
    // not JSON: reported below
  }
  const bps = out.end?.sum_received?.bits_per_second;
  if (r.code !== 0 || !bps) {
    throw new Error(`iperf3 ${args.join(' ')} failed (exit ${r.code ?? r.signal}): ${out.error ?? (r.stderr || r.stdout).trim().slice(-300)}`);
  }
  return bps / 1e9;
}

async function measureIperf(env: CriEnv, n: number, macvtapReady: string | undefined): Promise<Section> {
  const variants = [RUNC, KATA_TC, KATA_MACVTAP];
  const results: Record<string, { up: number[]; down: number[]; error?: string; unavailable?: boolean }> = {};
  for (const v of variants) results[v.key] = { up: [], down: [] };
  let dir: string | undefined;
  try {
    dir = iperfDir();
    const loader = `/iperf/${execFileSync('cat', [join(dir, 'LOADER')], { encoding: 'utf8' }).trim()}`;
    const mount = criMessage(cri.Mount, { containerPath: '/iperf', hostPath: dir, readonly: true });
    for (const v of variants) {
      const res = results[v.key]!;
      if (v === KATA_MACVTAP && macvtapReady) {
        res.error = macvtapReady;
        res.unavailable = true;
        continue;
      }
      let podStarted = false;
      try {
        await withPod(env, v, `iperf-${v.key}`, async (pod) => {
          podStarted = true;
          const cid = await pod.runContainer({
            name: 'iperf3',
            image: 'busybox',
            command: [loader, '--library-path', '/iperf', '/iperf/iperf3', '-s', '-p', String(IPERF_PORT)],
            // iperf3 makes each stream's buffer from a temporary file it unlinks, truncates and maps: on a 9p
            // share (kata-ts's shipped rootfs) that fails with EBADF, so its temporary files go to /dev/shm
            // (tmpfs in both runtimes).
            env: { TMPDIR: '/dev/shm' },
            mounts: [mount],
          });
          const ip = await pod.ip();
          // Listening is checked from inside the pod, so no probe connection disturbs the server. The server
          // listens again only some time after a test ends (long under TCG): checked before every client run.
          const listening = () =>
            retry(`iperf3 server in ${v.key}`, async () => {
              const st = await env.client.execSync({ containerId: cid, cmd: ['netstat', '-ltn'], timeout: 10 });
              if (!st.stdout.toString().includes(`:${IPERF_PORT} `)) throw new Error('not listening');
            }, 60_000);
          for (let i = 0; i < n; i++) {
            await listening();
            res.up.push(await iperf(ip, false));
            await listening();
            res.down.push(await iperf(ip, true));
          }
        });
      } catch (err) {
        res.error = errText(err);
        // macvtap may be refused by the runtime at RunPodSandbox: report it as not available, not as a failure.
        res.unavailable = v === KATA_MACVTAP && !podStarted;
        process.stderr.write(`iperf3 ${v.label}: ${res.error}\n`);
      }
    }
  } catch (err) {
    const e = errText(err);
    for (const v of variants) results[v.key]!.error ??= e;
    process.stderr.write(`iperf3: ${e}\n`);
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
  const up = (k: string) => med(results[k]!.up);
  const down = (k: string) => med(results[k]!.down);
  const g = (x: number | undefined) => (x === undefined ? '-' : `${x.toFixed(2)} Gbit/s`);
  const rows = [['variant', 'host->pod', 'pod->host', 'host->pod vs runc', 'samples host->pod (Gbit/s)']];
  for (const v of variants) {
    const r = results[v.key]!;
    if (r.up.length === 0) {
      rows.push([v.label, r.unavailable ? 'not available:' : 'failed:', r.error ?? '', '', '']);
      continue;
    }
    rows.push([v.label, g(up(v.key)), g(down(v.key)), v === RUNC ? '1' : fmtRatio(up(v.key), up('runc')), r.up.map((x) => x.toFixed(2)).join(' ')]);
  }
  const text = [
    `3. iperf3 TCP throughput between the host and the pod (server in the pod, -t ${IPERF_SECONDS}, -R for pod->host), medians of ${n}`,
    table(rows),
    ...variants.filter((v) => results[v.key]!.error && results[v.key]!.up.length > 0).map((v) => `   ${v.key} error: ${results[v.key]!.error}`),
    '   reference (PLATFORM.md, bare QEMU in a netns, no CRI): tc-filter host->guest 2.8, guest->host 3.5; macvtap 3.0 Gbit/s',
  ].join('\n');
  const json = Object.fromEntries(
    variants.map((v) => {
      const r = results[v.key]!;
      return [
        v.key,
        {
          medianGbps: { hostToPod: round(up(v.key), 3), podToHost: round(down(v.key), 3) },
          ratioHostToPodVsRunc: v === RUNC || up(v.key) === undefined ? undefined : Number(fmtRatio(up(v.key), up('runc'))) || undefined,
          samplesGbps: { hostToPod: r.up.map((x) => round(x, 3)), podToHost: r.down.map((x) => round(x, 3)) },
          ...(r.error ? { [r.unavailable ? 'notAvailable' : 'error']: r.error } : {}),
        },
      ];
    }),
  );
  return { text, json: { seconds: IPERF_SECONDS, ...json }, measured: variants.some((v) => results[v.key]!.up.length > 0) };
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const n = runs();
  const cfg = writeTestConfig();
  let macvtapCfg: { path: string; remove(): void } | undefined;
  let macvtapReady: string | undefined;
  try {
    macvtapCfg = writeTestConfig({ internetworking_model: '"macvtap"' });
  } catch (err) {
    macvtapReady = `no macvtap configuration: ${errText(err)}`;
  }
  // A second kata handler with the macvtap configuration, in the same containerd.
  const rt = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes';
  const extraConfig = macvtapCfg
    ? [`[${rt}.${MACVTAP_HANDLER}]`, '  runtime_type = "io.containerd.kata.v2"', `[${rt}.${MACVTAP_HANDLER}.options]`, `  ConfigPath = ${JSON.stringify(macvtapCfg.path)}`].join('\n')
    : undefined;

  let env: CriEnv | undefined;
  const cleanup = async () => {
    await env?.stop().catch((err) => process.stderr.write(`stop CRI env: ${errText(err)}\n`));
    env = undefined;
    cfg.remove();
    macvtapCfg?.remove();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`${sig}: cleaning up\n`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const sections: Record<string, Section> = {};
  const started = Date.now();
  try {
    env = await CriEnv.start({ kata: { configPath: cfg.path }, images: ['busybox', 'nginx'], extraConfig });
    process.stdout.write(
      `CRI benchmark: containerd CRI + CNI bridge ${env.network.subnet}, ${cpus().length} host cores, QEMU TCG; BENCH_RUNS=${n}\n\n`,
    );
    const steps: [string, (e: CriEnv) => Promise<Section>][] = [
      ['startup', (e) => measureStartup(e, n)],
      ['http', (e) => measureHttp(e, n)],
      ['iperf3', (e) => measureIperf(e, n, macvtapReady)],
    ];
    for (const [name, fn] of steps) {
      try {
        sections[name] = await fn(env);
      } catch (err) {
        const e = errText(err);
        sections[name] = { text: `${name}: failed: ${e}`, json: { error: e }, measured: false };
      }
      // Nothing of one measurement may leak into the next.
      const left = await env.removeAllPods().catch((err: Error) => [err.message]);
      if (left.length > 0) process.stderr.write(`leftover pods after ${name}: ${left.join('; ')}\n`);
      process.stdout.write(sections[name]!.text + '\n\n');
    }
  } catch (err) {
    process.stderr.write(`CRI environment: ${errText(err)}\n`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  const measured = Object.values(sections).some((s) => s.measured);
  if (Object.keys(sections).length > 0) {
    const summary = {
      date: new Date().toISOString(),
      runs: n,
      host: { cpus: cpus().length, accel: 'tcg' },
      durationS: Math.round((Date.now() - started) / 1000),
      ...Object.fromEntries(Object.entries(sections).map(([k, s]) => [k, s.json])),
    };
    const text = Object.values(sections).map((s) => s.text).join('\n\n');
    writeResults('cri', summary, `CRI benchmark (BENCH_RUNS=${n}, ${summary.date})\n\n\`\`\`\n${text}\n\`\`\`\n`);
  }
  if (!measured) process.stderr.write('cri-bench: nothing could be measured\n');
  return measured ? 0 : 1;
}

process.exitCode = await main();
