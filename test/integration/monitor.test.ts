import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { findConfigFile } from '../../src/runtime/config/index.js';
import { TestContainerd } from '../helpers/containerd.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';
import { runCli } from '../helpers/run-cli.js';
import { until } from '../helpers/wait.js';

/**
 * Monitoring end to end: a kata-ts container under a private containerd, its shim's management socket read by
 * `kata-runtime metrics` and by kata-monitor, and both cleaned up with the container. Also `check` and `env`.
 */

const NS = 'kata-monitor-test';
const BUSYBOX = 'docker.io/library/busybox:kata-ts';
const ID = 'kmon-sleep';
/** What this test may leave behind mentions its sandbox id (other users of the machine are not ours). */
const MINE = new RegExp(`[/ ]${ID}\\b`);
// This checkout's shim by absolute path (containerd 1.6 accepts one as the runtime): the one on PATH may belong
// to another installation and would not test this code.
const SHIM = new URL('../../../bin/containerd-shim-kata-v2', import.meta.url).pathname;
const MONITOR = new URL('../../../bin/kata-monitor', import.meta.url).pathname;
const SOCKET = `/run/vc/sbs/${ID}/shim-monitor.sock`;

/** The value of the first sample matching `name{...labels containing `labelPart`}`. */
function sample(text: string, name: string, labelPart = ''): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (!(rest.startsWith(' ') || rest.startsWith('{'))) continue;
    if (labelPart && !rest.includes(labelPart)) continue;
    return Number(rest.slice(rest.lastIndexOf(rest.startsWith('{') ? '}' : ' ') + 1).trim().split(' ')[0]);
  }
  return undefined;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

describe('monitoring: shim management socket, kata-runtime metrics, kata-monitor, check, env', () => {
  let ctd: TestContainerd;
  let snap: HostSnapshot;
  let monitor: ChildProcess | undefined;
  let monitorLog = '';
  let base = '';

  const ctr = (args: string[]) => ctd.ctr(args, { namespace: NS });

  before(async () => {
    snap = snapshotHost(MINE);
    ctd = await TestContainerd.start();
    execFileSync('images/import.sh', ['--namespace', NS, '--address', ctd.address, '--only', 'busybox'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const run = await ctr(['run', '-d', '--runtime', SHIM, BUSYBOX, ID, 'sleep', '3600']);
    assert.equal(run.code, 0, run.stderr);

    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    monitor = spawn(MONITOR, ['--listen-address', `127.0.0.1:${port}`, '--log-level', 'info'], { stdio: ['ignore', 'ignore', 'pipe'] });
    monitor.stderr!.on('data', (d) => (monitorLog += d));
    await until('kata-monitor to listen', () => fetch(`${base}/sandboxes`).then((r) => r.ok, () => false), 15_000);
  });

  after(async () => {
    if (monitor && monitor.exitCode === null) {
      const exited = new Promise((r) => monitor!.once('exit', r));
      monitor.kill('SIGTERM');
      await exited;
    }
    await ctd?.stop([NS]);
    if (monitor) assert.equal(monitor.exitCode, 0, `kata-monitor exits 0 on SIGTERM:\n${monitorLog}`);
    assert.deepEqual(await leaksSince(snap, MINE), { processes: [], mounts: [], entries: [] });
  });

  test('the shim serves its management socket once the sandbox exists', async () => {
    assert.ok(existsSync(SOCKET), `${SOCKET} exists`);
  });

  test('kata-runtime metrics <id>: hypervisor, share daemon, shim and guest samples with plausible values', async () => {
    const r = await runCli(['metrics', ID]);
    assert.equal(r.code, 0, r.stderr);
    const m = r.stdout;
    const rss = sample(m, 'kata_hypervisor_resident_memory_bytes')!;
    assert.ok(rss > 32 * 1024 * 1024 && rss < 4 * 1024 ** 3, `QEMU RSS ${rss}`);
    assert.ok(sample(m, 'kata_hypervisor_threads')! >= 2);
    assert.ok(sample(m, 'kata_hypervisor_cpu_seconds_total', 'mode="user"')! > 0, 'QEMU used CPU (TCG boot)');
    assert.ok(sample(m, 'kata_hypervisor_fds')! > 3);
    // virtiofsd samples exactly when the sandbox shares through virtio-fs (the shipped default is 9p).
    if (sample(m, 'kata_shim_sandbox_info', 'shared_fs="virtio-fs"') === 1) {
      assert.ok(sample(m, 'kata_virtiofsd_processes')! >= 1);
      assert.ok(sample(m, 'kata_virtiofsd_resident_memory_bytes')! > 0);
    } else {
      assert.equal(sample(m, 'kata_shim_sandbox_info', 'shared_fs="virtio-9p"'), 1, 'the sandbox shares by 9p');
      assert.equal(sample(m, 'kata_virtiofsd_processes'), 0);
    }
    assert.ok(sample(m, 'kata_shim_resident_memory_bytes')! > 10 * 1024 * 1024);
    assert.ok(sample(m, 'kata_shim_uptime_seconds')! > 0);
    assert.equal(sample(m, 'kata_shim_rpc_calls_total', 'action="Create"'), 1);
    assert.ok(sample(m, 'kata_shim_rpc_calls_total', 'action="Start"')! >= 1);
    const ready = sample(m, 'kata_shim_sandbox_start_phase_seconds', 'phase="sandbox_ready"')!;
    assert.ok(ready > 0.1 && ready < 120, `sandbox ready after ${ready} s`);
    assert.ok(sample(m, 'kata_shim_pod_overhead_memory_bytes')! >= rss);
    assert.equal(sample(m, 'kata_shim_agent_metrics_up'), 1);
    const memTotal = sample(m, 'kata_guest_meminfo_bytes', 'item="MemTotal"')!;
    assert.ok(memTotal > 64 * 1024 * 1024 && memTotal < 64 * 1024 ** 3, `guest MemTotal ${memTotal}`);
    assert.equal(sample(m, 'kata_agent_containers'), 1);
  });

  test('kata-runtime metrics of an unknown sandbox fails clearly', async () => {
    const r = await runCli(['metrics', 'no-such-sandbox']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /shim-monitor\.sock does not exist/);
  });

  test('kata-monitor /metrics: every sample of the sandbox labelled, HELP/TYPE once, its own metrics', async () => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const label = `sandbox_id="${ID}"`;
    assert.ok(sample(text, 'kata_hypervisor_resident_memory_bytes', label)! > 0);
    assert.ok(sample(text, 'kata_guest_meminfo_bytes', `${label},item="MemTotal"`)! > 0);
    assert.equal(sample(text, 'kata_shim_rpc_calls_total', `${label},action="Create"`), 1);
    for (const family of ['kata_hypervisor_threads', 'kata_guest_meminfo_bytes', 'kata_shim_rpc_calls_total']) {
      assert.equal(text.split('\n').filter((l) => l.startsWith(`# TYPE ${family} `)).length, 1, family);
    }
    // Every sample from a shim carries a sandbox_id; only kata-monitor's own do not.
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#') || line.startsWith('kata_monitor_')) continue;
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*\{sandbox_id="/, line);
    }
    assert.ok(sample(text, 'kata_monitor_scrapes_total')! >= 1);
    assert.ok(sample(text, 'kata_monitor_running_shims')! >= 1);
  });

  test('kata-monitor /sandboxes, /agent-url and the index page', async () => {
    const ids = (await (await fetch(`${base}/sandboxes`)).json()) as string[];
    assert.ok(ids.includes(ID), JSON.stringify(ids));
    const url = await fetch(`${base}/agent-url?sandbox=${ID}`);
    assert.equal(url.status, 200);
    assert.equal(await url.text(), `unix:///run/vc/vm/${ID}/agent.sock`);
    assert.equal((await fetch(`${base}/agent-url?sandbox=nope`)).status, 404);
    assert.equal((await fetch(`${base}/agent-url`)).status, 400);
    const index = await fetch(`${base}/`);
    assert.match(index.headers.get('content-type') ?? '', /^text\/html/);
    const html = await index.text();
    assert.match(html, /<!DOCTYPE html>/);
    assert.ok(html.includes(`<code>${ID}</code>`));
    assert.ok(html.includes(`/metrics?sandbox=${ID}`));
    const one = await (await fetch(`${base}/metrics?sandbox=${ID}`)).text();
    assert.ok(sample(one, 'kata_hypervisor_threads', `sandbox_id="${ID}"`)! > 0);
    assert.equal(sample(one, 'kata_monitor_scrapes_total'), undefined);
  });

  test('after the container is removed its socket is gone and kata-monitor no longer lists it', async () => {
    assert.equal((await ctr(['task', 'kill', '-s', 'SIGKILL', ID])).code, 0);
    await until('task stopped', async () => / STOPPED/.test((await ctr(['task', 'ls'])).stdout) || undefined);
    assert.equal((await ctr(['task', 'rm', ID])).code, 0);
    assert.equal((await ctr(['container', 'rm', ID])).code, 0);
    await until('management socket removed', () => !existsSync(SOCKET));
    const ids = (await (await fetch(`${base}/sandboxes`)).json()) as string[];
    assert.ok(!ids.includes(ID), JSON.stringify(ids));
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.ok(!text.includes(`sandbox_id="${ID}"`));
    const r = await runCli(['metrics', ID]);
    assert.notEqual(r.code, 0);
    assert.ok(!/level":50/.test(monitorLog), `kata-monitor logged errors:\n${monitorLog}`);
  });

  test('kata-runtime check passes here and names the accelerator', async () => {
    const r = await runCli(['check']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /System is capable of running kata-ts/);
    if (!existsSync('/dev/kvm')) assert.match(r.stdout, /\(TCG: slow, no KVM\)/);
    assert.match(r.stdout, /\[ok\] +QEMU: /);
    assert.match(r.stdout, /\[ok\] +guest kernel: /);
    const v = await runCli(['check', '--verbose']);
    assert.equal(v.code, 0);
    if (!/with KVM/.test(r.stdout)) {
      const strict = await runCli(['check', '--strict']);
      assert.equal(strict.code, 1);
      assert.match(strict.stdout, /--strict: KVM is required/);
    }
  });

  test('kata-runtime env --json parses and names the configuration file', async () => {
    const r = await runCli(['env', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const env = JSON.parse(r.stdout);
    assert.equal(env.config.path, findConfigFile());
    assert.equal(env.config.hypervisor.path, '/usr/bin/qemu-system-x86_64');
    assert.equal(typeof env.config.factory.enableTemplate, 'boolean');
    assert.match(env.assets.kernel.manifest.sha256, /^[0-9a-f]{64}$/);
    assert.match(env.versions.qemu, /QEMU emulator version/);
    assert.equal(env.versions.node, process.version);
    assert.ok(['kvm', 'tcg'].includes(env.host.accel.accel));
    assert.ok(env.host.cpus >= 1);
    const toml = await runCli(['env']);
    assert.equal(toml.code, 0, toml.stderr);
    assert.match(toml.stdout, /^\[config\]$/m);
  });
});
