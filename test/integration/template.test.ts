import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/base/logger.js';
import type { OciSpec } from '../../src/protocol/oci-spec.js';
import { loadConfig } from '../../src/runtime/config/load.js';
import type { RuntimeConfig } from '../../src/runtime/config/types.js';
import { defaultSandboxDeps } from '../../src/runtime/default-deps.js';
import { destroyTemplates, TEMPLATE_VARIANTS, TemplateStore, templateNicMac, templateStatus } from '../../src/runtime/factory/index.js';
import { TEMPLATE_TAP_RE } from '../../src/runtime/factory/template-builder.js';
import { defaultPaths } from '../../src/runtime/paths.js';
import { Sandbox } from '../../src/runtime/sandbox.js';
import { defaultSpec, makeBundle, type Bundle } from '../helpers/bundle.js';
import { writeTestConfig } from '../helpers/config.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';
import { ip, makeTestNetns, type TestNetns } from '../helpers/netns.js';
import { runCli } from '../helpers/run-cli.js';

/**
 * VM templates end to end: real QEMU (TCG), the real guest. The template lives under a temporary
 * template_path (a tmpfs the tests mount and destroy), so a real template on the host is never touched.
 */

const NO_NET = TEMPLATE_VARIANTS[0].name;
const ONE_NIC = TEMPLATE_VARIANTS[1].name;

/** One VM test step under TCG on a busy 2-core machine: minutes, not hours. */
const TEST_TIMEOUT_MS = 5 * 60_000;

class Collect extends Writable {
  text = '';
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

/** A container that shares the guest's UTS namespace, so `hostname` shows the sandbox's (guest's) hostname. */
function guestSpec(script: string): OciSpec {
  const spec = defaultSpec(['sh', '-c', script]);
  delete spec.hostname;
  spec.linux!.namespaces = spec.linux!.namespaces!.filter((n) => n.type !== 'uts');
  return spec;
}

function sha256File(p: string): string {
  return createHash('sha256').update(readFileSync(p)).digest('hex');
}

function mountedAt(p: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === p);
}

/** Template taps (`ktt…`) in the host netns: QEMU creates one per template NIC and it goes with QEMU. */
function hostTemplateTaps(): string[] {
  return (JSON.parse(ip('-json', 'link', 'show')) as { ifname: string }[]).map((l) => l.ifname).filter((n) => TEMPLATE_TAP_RE.test(n));
}

function processesMentioning(s: string): string[] {
  return execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes(s) && !l.includes('ps -eo'));
}

describe('VM templates (real QEMU, real guest)', { timeout: 20 * 60_000 }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'kata-ts-template-'));
  const templatePath = join(tmp, 'template');
  const overrides = { enable_template: 'true', template_path: JSON.stringify(templatePath), shared_fs: '"virtio-9p"' };
  const cfg = writeTestConfig(overrides);
  const cfg384 = writeTestConfig({ ...overrides, default_memory: '384' });
  let config: RuntimeConfig;
  let config384: RuntimeConfig;
  let snap: HostSnapshot;
  const running = new Map<string, Sandbox>();
  const bundles: Bundle[] = [];
  let seq = 0;

  const netnses: TestNetns[] = [];

  async function start(name: string, c: RuntimeConfig = config, hostname?: string, netnsPath?: string): Promise<Sandbox> {
    const sb = await Sandbox.create(
      { sandboxId: `tpl${process.pid}-${name}`, config: c, paths: defaultPaths(), hostname, netnsPath },
      defaultSandboxDeps(),
      silentLogger,
    );
    running.set(name, sb);
    return sb;
  }

  async function stop(name: string): Promise<void> {
    await running.get(name)?.stop();
    running.delete(name);
  }

  /** Runs `script` in a new container of `sb`; returns its exit status and output. */
  async function run(sb: Sandbox, script: string, caps: string[] = []): Promise<{ status: number; out: string }> {
    const spec = guestSpec(script);
    if (caps.length > 0) spec.process!.capabilities = { bounding: caps, effective: caps, permitted: caps };
    const b = await makeBundle(spec);
    bundles.push(b);
    const out = new Collect();
    const id = `c${++seq}`;
    const c = await sb.createContainer({ containerId: id, spec, hostRootfs: b.rootfs, stdio: { stdout: out, stderr: out } });
    await c.start();
    const exit = await c.init.wait();
    await sb.deleteContainer(id);
    return { status: exit.status, out: out.text };
  }

  const memoryFile = async () => {
    const s = await templateStatus(config, 'tcg', silentLogger);
    const key = s.currentKeys.find((k) => k.variant === NO_NET)?.key;
    const t = s.templates.find((x) => x.meta?.key === key);
    assert.ok(t, `a template for the current config in ${JSON.stringify(s.templates.map((x) => x.dir))}`);
    return join(t.dir, 'memory');
  };

  before(async () => {
    snap = snapshotHost();
    config = await loadConfig(cfg.path);
    config384 = await loadConfig(cfg384.path);
  });

  after(async () => {
    for (const name of [...running.keys()]) await stop(name).catch(() => undefined);
    await destroyTemplates(config, {}, silentLogger);
    // The builders' lock file of this temporary template path (kept by design for real paths).
    rmSync(new TemplateStore(templatePath, silentLogger).lockPath, { force: true });
    for (const b of bundles) await b.remove();
    for (const n of netnses) n.remove();
    cfg.remove();
    cfg384.remove();
    assert.equal(mountedAt(templatePath), false, 'template tmpfs unmounted');
    rmSync(tmp, { recursive: true, force: true });
    assert.deepEqual(processesMentioning(templatePath), [], 'no template QEMU left');
    // Only what this file made: other suites may run VMs on the same machine meanwhile.
    const leaks = await leaksSince(snap);
    const mine = (xs: string[]) => xs.filter((x) => x.includes(`tpl${process.pid}-`) || x.includes(templatePath));
    assert.deepEqual(
      { processes: mine(leaks.processes), mounts: mine(leaks.mounts), entries: mine(leaks.entries) },
      { processes: [], mounts: [], entries: [] },
    );
  });

  test('factory init builds sealed templates (no NIC, one NIC) on a tmpfs; status says they match; init again is a no-op', { timeout: TEST_TIMEOUT_MS }, async () => {
    const init = await runCli(['--config', cfg.path, 'factory', 'init']);
    assert.equal(init.code, 0, init.stderr);
    assert.match(init.stdout, /^no network: template built in \d+ ms/m);
    assert.match(init.stdout, /^one network interface: template built in \d+ ms/m);
    assert.ok(mountedAt(templatePath), 'tmpfs mounted at template_path');
    const status = await runCli(['--config', cfg.path, 'factory', 'status']);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /tmpfs mounted/);
    assert.match(status.stdout, /matches the current configuration \(no network\)/);
    assert.match(status.stdout, /matches the current configuration \(one network interface\)/);
    assert.match(status.stdout, /guest memory 512 MiB/);
    assert.deepEqual(hostTemplateTaps(), [], 'the template taps went with their QEMUs');
    const mem = await memoryFile();
    assert.equal(statSync(mem).mode & 0o777, 0o444);
    const again = await runCli(['--config', cfg.path, 'factory', 'init']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already up to date/);
  });

  test('two clones in two pod netns: each NIC takes its pod MAC and IP and answers the host', { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok((await templateStatus(config, 'tcg', silentLogger)).matches[ONE_NIC], 'factory init made the one-NIC template');
    const nets = [makeTestNetns('ta', 31), makeTestNetns('tb', 97)];
    netnses.push(...nets);
    const sbs = await Promise.all(nets.map((n, i) => start(`net${i}`, config, undefined, n.path)));
    for (const [i, sb] of sbs.entries()) {
      const n = nets[i]!;
      assert.equal(sb.timings.vmOrigin, 'template', `clone ${i}: ${sb.timings.vmFallbackReason ?? ''}`);
      const podMac = (JSON.parse(ip('-n', n.name, '-json', 'link', 'show', 'eth0')) as { address: string }[])[0]!.address;
      const r = await run(sb, 'cat /sys/class/net/eth0/address; ip -o -4 addr show dev eth0');
      assert.equal(r.status, 0, r.out);
      const [mac, addr] = r.out.trim().split('\n');
      assert.equal(mac, podMac, 'the guest NIC has the pod veth MAC, not the template one');
      assert.notEqual(mac, templateNicMac('network-0'));
      assert.ok(addr?.includes(`inet ${n.podIp}/24`), addr);
      // Guest NIC -> QEMU -> tap -> tc redirect -> veth -> the gateway in the host netns, and back: the clone's
      // QEMU filters received frames by the MAC the guest set, so this only works if the change reached QEMU.
      const ping = await run(sb, `ping -c 2 -W 5 ${n.gateway}`, ['CAP_NET_RAW']);
      assert.equal(ping.status, 0, ping.out);
    }
    for (const i of [0, 1]) await stop(`net${i}`);
  });

  test('two clones at once: their own RNG, hostname and memory; the template file never changes', { timeout: TEST_TIMEOUT_MS }, async () => {
    const mem = await memoryFile();
    const hashBefore = sha256File(mem);
    const mtimeBefore = statSync(mem).mtimeMs;
    const [a, b] = await Promise.all([start('a', config, 'clone-a'), start('b', config, 'clone-b')]);
    assert.equal(a.timings.vmOrigin, 'template');
    assert.equal(b.timings.vmOrigin, 'template');
    const probe = 'cat /proc/sys/kernel/random/uuid; head -c16 /dev/urandom | od -x | head -n 1; hostname';
    const [ra, rb] = await Promise.all([run(a, probe), run(b, probe)]);
    assert.equal(ra.status, 0, ra.out);
    assert.equal(rb.status, 0, rb.out);
    const [uuidA, rndA, hostA] = ra.out.trim().split('\n');
    const [uuidB, rndB, hostB] = rb.out.trim().split('\n');
    assert.match(uuidA!, /^[0-9a-f-]{36}$/);
    assert.notEqual(uuidA, uuidB, 'clones must not share RNG state (uuid)');
    assert.notEqual(rndA, rndB, 'clones must not share RNG state (/dev/urandom)');
    assert.equal(hostA, 'clone-a');
    assert.equal(hostB, 'clone-b');

    // The clone's wall clock is the host's (it woke up with the template's): the guest's time while the
    // container runs lies between the host's before creating it and after it exited (50 ms of slack).
    const hostBefore = Date.now() / 1000;
    const clock = await run(a, 'adjtimex | grep -E "time.tv_(sec|usec)"');
    const hostAfter = Date.now() / 1000;
    const sec = Number(/tv_sec:\s+(\d+)/.exec(clock.out)?.[1]);
    const usec = Number(/tv_usec:\s+(\d+)/.exec(clock.out)?.[1]);
    const guest = sec + usec / 1e6;
    assert.ok(guest >= hostBefore - 0.05 && guest <= hostAfter + 0.05, `guest ${guest} not within host [${hostBefore}, ${hostAfter}]: ${clock.out}`);

    // A writes 32 MiB into its guest RAM (a tmpfs in the guest): copy-on-write pages of its own.
    const w = await run(a, 'dd if=/dev/zero bs=1M count=32 2>/dev/null | tr "\\000" "A" > /dev/marker && echo written-by-a >> /dev/marker && tail -c 13 /dev/marker');
    assert.equal(w.status, 0, w.out);
    assert.equal(w.out.trim(), 'written-by-a');
    const seen = await run(b, 'test -e /dev/marker && echo present || echo absent');
    assert.equal(seen.out.trim(), 'absent', 'B never sees what A wrote');
    // The same in the container root filesystems (each on its sandbox's 9p share).
    const wr = await run(a, 'echo from-a > /rootfs-marker && echo ok');
    assert.equal(wr.out.trim(), 'ok');
    assert.equal(readFileSync(join(bundles.at(-1)!.rootfs, 'rootfs-marker'), 'utf8'), 'from-a\n', "A's write reached its rootfs on the host");
    const seenRootfs = await run(b, 'test -e /rootfs-marker && echo present || echo absent');
    assert.equal(seenRootfs.out.trim(), 'absent');
    assert.equal(sha256File(mem), hashBefore, 'the template memory file is never written by clones');
    assert.equal(statSync(mem).mtimeMs, mtimeBefore);
  });

  test('destroying the template while clones run does not break them; the next start rebuilds it', { timeout: TEST_TIMEOUT_MS }, async () => {
    const a = running.get('a')!;
    const b = running.get('b')!;
    const r = await runCli(['--config', cfg.path, 'factory', 'destroy']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^removed .*tpl-[0-9a-f]{16}$/m);
    assert.match(r.stdout, /detached .*running clones still map it/, 'the busy tmpfs is detached, not pulled from under the clones');
    assert.equal(mountedAt(templatePath), false);
    for (const sb of [a, b]) {
      const alive = await run(sb, 'echo alive; cat /proc/sys/kernel/random/uuid >/dev/null');
      assert.deepEqual(alive, { status: 0, out: 'alive\n' });
    }
    await stop('a');
    await stop('b');
    const c = await start('c');
    assert.equal(c.timings.vmOrigin, 'template');
    assert.deepEqual(await run(c, 'echo rebuilt'), { status: 0, out: 'rebuilt\n' });
    assert.ok((await templateStatus(config, 'tcg', silentLogger)).matches[NO_NET]);
  });

  test('a template built for another memory size is never used: the other config rebuilds', { timeout: TEST_TIMEOUT_MS }, async () => {
    const before384 = await templateStatus(config384, 'tcg', silentLogger);
    assert.equal(before384.matches[NO_NET], false);
    assert.ok(Object.values(before384.differences).flat().some((d) => d.includes('512M')), JSON.stringify(before384.differences));
    const d = await start('d', config384);
    assert.equal(d.timings.vmOrigin, 'template');
    const mem = await run(d, 'head -n 1 /proc/meminfo');
    const kb = Number(/MemTotal:\s+(\d+) kB/.exec(mem.out)?.[1]);
    assert.ok(kb > 300 * 1024 && kb <= 384 * 1024, `MemTotal ${kb} kB for a 384 MiB clone`);
    const s = await templateStatus(config384, 'tcg', silentLogger);
    assert.ok(s.matches[NO_NET]);
    assert.deepEqual(
      s.templates.map((t) => t.meta?.memoryMiB).sort(),
      [384, 512],
      'the 512 MiB template (same guest assets, another shape) is kept beside the new one',
    );
    await stop('c');
    await stop('d');
  });

  test('5 sandboxes started at once from nothing all succeed (one builds, the others wait and clone)', { timeout: TEST_TIMEOUT_MS }, async () => {
    await destroyTemplates(config, {}, silentLogger);
    const names = ['p1', 'p2', 'p3', 'p4', 'p5'];
    const results = await Promise.allSettled(names.map((n) => start(n)));
    const failures = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
    assert.deepEqual(failures, []);
    const origins = names.map((n) => running.get(n)!.timings.vmOrigin);
    assert.ok(origins.filter((o) => o === 'template').length >= 4, `origins ${origins.join(', ')}`);
    for (const n of names) assert.deepEqual(await run(running.get(n)!, 'echo ok'), { status: 0, out: 'ok\n' });
    const builds = readdirSync(templatePath).filter((e) => e.startsWith('tpl-'));
    assert.equal(builds.length, 1);
    for (const n of names) await stop(n);
  });
});
