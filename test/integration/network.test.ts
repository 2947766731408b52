import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { isKind, KataError } from '../../src/base/errors.js';
import { silentLogger } from '../../src/base/logger.js';
import { qemuFactory } from '../../src/hypervisor/qemu/qemu.js';
import type { VmDevice } from '../../src/hypervisor/hypervisor.js';
import { createPodNetwork, type PodNetwork, type PodNetworkResult } from '../../src/resource/network/pod-network.js';
import { loadConfig } from '../../src/runtime/config/load.js';
import type { RuntimeConfig } from '../../src/runtime/config/types.js';
import { defaultSandboxDeps } from '../../src/runtime/default-deps.js';
import { defaultPaths } from '../../src/runtime/paths.js';
import { Sandbox, type SandboxDeps } from '../../src/runtime/sandbox.js';
import { coldBoot, type VmSource } from '../../src/runtime/vm-source.js';
import { defaultProcess, defaultSpec, makeBundle, type Bundle } from '../helpers/bundle.js';
import { writeTestConfig } from '../helpers/config.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';
import { ip, makeTestNetns, type TestNetns } from '../helpers/netns.js';

/**
 * The pod network end to end: a netns with a veth (the pod side) whose peer in the root netns plays the
 * gateway, a sandbox booted in the netns, the guest configured through the agent as the sandbox will do it,
 * and a container that pings the gateway and serves HTTP to the host. Only addresses on interfaces this test
 * creates, in namespaces it creates.
 */

const tc = (...args: string[]) => execFileSync('tc', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

class Collect extends Writable {
  text = '';
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

/** What kata-ts may have left in the netns: taps, macvtaps, ingress qdiscs, changed veth MAC or alias. */
function netnsState(ns: TestNetns): { links: string[]; ingress: string[]; eth0: { mac: string; alias: string; noarp: boolean } } {
  const links = JSON.parse(ip('-n', ns.name, '-json', 'link', 'show')) as { ifname: string; address: string; ifalias?: string; flags: string[] }[];
  const qdiscs = JSON.parse(tc('-n', ns.name, '-json', 'qdisc', 'show')) as { kind: string; dev: string }[];
  const eth0 = links.find((l) => l.ifname === 'eth0')!;
  return {
    links: links.map((l) => l.ifname).sort(),
    ingress: qdiscs.filter((q) => q.kind === 'ingress').map((q) => q.dev),
    eth0: { mac: eth0.address, alias: eth0.ifalias ?? '', noarp: eth0.flags.includes('NOARP') },
  };
}

/** Leaks of one sandbox only: other suites may run sandboxes of their own at the same time. */
async function leaksOf(snap: HostSnapshot, sandboxId: string): Promise<HostSnapshot> {
  const all = await leaksSince(snap);
  const mine = (xs: string[]) => xs.filter((x) => x.includes(sandboxId));
  return { processes: mine(all.processes), mounts: mine(all.mounts), entries: mine(all.entries) };
}

/** Cold boot with the pod network's devices added, QEMU started in the netns (what Sandbox.create will do). */
function withNetwork(base: VmSource, netnsPath: string, devices: VmDevice[], extra: { hypervisorPath?: string; extraArgs?: string[] } = {}): VmSource {
  return {
    start: (vmConfig, config, opts, log) =>
      base.start(
        {
          ...vmConfig,
          netnsPath,
          devices: [...vmConfig.devices, ...devices],
          hypervisorPath: extra.hypervisorPath ?? vmConfig.hypervisorPath,
          extraArgs: [...(vmConfig.extraArgs ?? []), ...(extra.extraArgs ?? [])],
        },
        config,
        opts,
        log,
      ),
  };
}

/** The guest side, in the order Kata's startSandbox uses. */
async function configureGuest(sandbox: Sandbox, res: PodNetworkResult): Promise<void> {
  for (const i of res.interfaces) await sandbox.agent.call('UpdateInterface', { interface: i });
  await sandbox.agent.call('UpdateRoutes', { routes: { Routes: res.routes } });
  await sandbox.agent.call('AddARPNeighbors', { neighbors: { ARPNeighbors: res.neighbors } });
}

function httpGet(url: string, timeoutMs: number): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timeout`)));
    req.on('error', reject);
  });
}

async function httpGetRetry(url: string, totalMs: number): Promise<{ status: number; body: Buffer }> {
  const deadline = Date.now() + totalMs;
  for (;;) {
    try {
      return await httpGet(url, 5_000);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

const NET_CAPS = ['CAP_NET_RAW', 'CAP_NET_BIND_SERVICE'];
const withCaps = (args: string[]) => ({
  ...defaultProcess(args),
  capabilities: { bounding: NET_CAPS, effective: NET_CAPS, permitted: NET_CAPS },
});

/** Pings the gateway from inside the container; returns the average RTT in ms. */
async function pingFromContainer(sandbox: Sandbox, containerId: string, target: string): Promise<number> {
  const out = new Collect();
  const err = new Collect();
  const p = await sandbox.container(containerId).exec(`ping-${Date.now()}`, withCaps(['/bin/busybox', 'ping', '-c', '5', '-W', '3', target]), { stdout: out, stderr: err });
  const exit = await p.wait();
  assert.equal(exit.status, 0, `ping ${target} failed:\n${out.text}${err.text}`);
  const m = /min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(out.text);
  assert.ok(m, out.text);
  return Number(m[2]);
}

/** Host -> guest: bytes pushed into `nc -l` in the container; returns Mbit/s. */
async function uploadMbps(host: string, port: number, bytes: number): Promise<number> {
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const s = net.connect({ host, port });
    s.setTimeout(30_000, () => s.destroy(new Error('upload timeout')));
    s.on('error', reject);
    s.on('connect', () => {
      const chunk = Buffer.alloc(1 << 20, 0x61);
      let sent = 0;
      const pump = () => {
        while (sent < bytes) {
          sent += chunk.length;
          if (!s.write(chunk)) {
            s.once('drain', pump);
            return;
          }
        }
        s.end();
      };
      pump();
    });
    s.on('close', () => resolve());
  });
  return (bytes * 8) / ((performance.now() - t0) / 1000) / 1e6;
}

describe('pod network: tcfilter, end to end', () => {
  const sandboxId = `net${process.pid}`;
  let ns: TestNetns;
  let network: PodNetwork;
  let res: PodNetworkResult;
  let sandbox: Sandbox | undefined;
  let snap: HostSnapshot;
  let bundle: Bundle;
  const cfg = writeTestConfig();

  before(async () => {
    snap = snapshotHost();
    ns = makeTestNetns('', process.pid);
    network = createPodNetwork(ns.path, 'tcfilter', silentLogger);
    const t0 = performance.now();
    res = await network.prepare();
    console.log(`# tcfilter prepare: ${(performance.now() - t0).toFixed(0)} ms`);
    const config = await loadConfig(cfg.path);
    const deps: SandboxDeps = { ...defaultSandboxDeps(), vmSource: withNetwork(coldBoot(qemuFactory), ns.path, res.devices) };
    sandbox = await Sandbox.create({ sandboxId, config, paths: defaultPaths() }, deps, silentLogger);
    const t1 = performance.now();
    await configureGuest(sandbox, res);
    console.log(`# guest network configured in ${(performance.now() - t1).toFixed(0)} ms`);
    bundle = await makeBundle(defaultSpec(['true']));
    // A file to download: guest -> host throughput through the redirect.
    await writeFile(join(bundle.rootfs, 'blob'), Buffer.alloc(16 << 20, 0x62));
  });

  after(async () => {
    await sandbox?.stop().catch((err: unknown) => console.log('# sandbox stop:', err));
    await network?.cleanup();
    const left = ns ? netnsState(ns) : undefined;
    ns?.remove();
    await bundle?.remove();
    cfg.remove();
    assert.deepEqual(left?.links, ['eth0', 'lo'], 'a tap was left in the netns');
    assert.deepEqual(left?.ingress, [], 'an ingress qdisc was left in the netns');
    assert.deepEqual(await leaksOf(snap, sandboxId), { processes: [], mounts: [], entries: [] });
  });

  test('the scan finds the veth, its address, the non-kernel routes and the gateway neighbour', () => {
    assert.equal(res.devices.length, 1);
    const d = res.devices[0]!;
    assert.equal(d.kind, 'net-tap');
    assert.equal(d.kind === 'net-tap' && d.ifname, 'tap0_kata');
    const eth0 = JSON.parse(ip('-n', ns.name, '-json', 'link', 'show', 'eth0')) as { address: string; mtu: number }[];
    assert.equal(d.kind === 'net-tap' && d.mac, eth0[0]!.address, 'the VM NIC uses the veth MAC');
    assert.deepEqual(
      res.interfaces.map((i) => ({ name: i.name, mac: i.hwAddr, mtu: i.mtu, ips: i.IPAddresses.map((a) => `${a.address}/${a.mask}`) })),
      [{ name: 'eth0', mac: eth0[0]!.address, mtu: eth0[0]!.mtu, ips: [`${ns.podIp}/24`] }],
    );
    assert.deepEqual(
      res.routes.map((r) => `${r.dest || 'default'} via ${r.gateway} dev ${r.device}`).sort(),
      [`10.89.${ns.x}.0/24 via ${ns.gateway} dev eth0`, `default via ${ns.gateway} dev eth0`],
    );
    assert.deepEqual(
      res.neighbors.map((n) => `${n.toIPAddress?.address} ${n.lladdr} ${n.device}`),
      [`${ns.gateway} ${ns.gatewayMac} eth0`],
    );
    const st = netnsState(ns);
    assert.deepEqual(st.links, ['eth0', 'lo', 'tap0_kata']);
    assert.deepEqual(st.ingress.sort(), ['eth0', 'tap0_kata']);
  });

  test('the guest got the interface, routes and neighbour', async () => {
    const ifs = await sandbox!.agent.call('ListInterfaces', {});
    const eth0 = ifs.Interfaces.find((i) => i.name === 'eth0');
    assert.ok(eth0, JSON.stringify(ifs));
    assert.equal(eth0.hwAddr, res.interfaces[0]!.hwAddr);
    assert.ok(eth0.IPAddresses.some((a) => a.address === ns.podIp && a.mask === '24'));
    const routes = (await sandbox!.agent.call('ListRoutes', {})).Routes.map((r) => `${r.dest || 'default'} ${r.gateway} ${r.device}`);
    assert.ok(routes.includes(`default ${ns.gateway} eth0`), routes.join('\n'));
    assert.ok(routes.includes(`10.89.${ns.x}.0/24 ${ns.gateway} eth0`), routes.join('\n'));
    // UpdateRoutes replaces: sending it again leaves the same table, not duplicates or errors.
    const again = await sandbox!.agent.call('UpdateRoutes', { routes: { Routes: res.routes } });
    assert.equal(again.Routes.filter((r) => r.device === 'eth0' && r.gateway !== '').length, 2);
  });

  test('the NIC is found by MAC and renamed; configuring it again puts everything back', async () => {
    const renamed = await sandbox!.agent.call('UpdateInterface', { interface: { ...res.interfaces[0]!, name: 'pod0', device: 'pod0', mtu: 1400 } });
    assert.equal(renamed.name, 'pod0');
    assert.equal(renamed.mtu, 1400);
    assert.deepEqual(renamed.IPAddresses.filter((a) => a.family === 0).map((a) => `${a.address}/${a.mask}`), [`${ns.podIp}/24`]);
    await configureGuest(sandbox!, res);
    const ifs = (await sandbox!.agent.call('ListInterfaces', {})).Interfaces;
    assert.deepEqual(ifs.map((i) => i.name).sort(), ['eth0', 'lo']);
    assert.equal(ifs.find((i) => i.name === 'eth0')!.mtu, res.interfaces[0]!.mtu);
    const routes = (await sandbox!.agent.call('ListRoutes', {})).Routes.map((r) => `${r.dest || 'default'} ${r.gateway} ${r.device}`);
    assert.ok(routes.includes(`default ${ns.gateway} eth0`), routes.join('\n'));
  });

  test('hostile input from the host is refused before it reaches a command line', async () => {
    const base = res.interfaces[0]!;
    const bad: [string, () => Promise<unknown>][] = [
      ['name with option', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, name: '-x' } })],
      ['name too long', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, name: 'a'.repeat(16) } })],
      ['name with space', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, name: 'eth0 up' } })],
      ['address injection', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, IPAddresses: [{ family: 0, address: '1.2.3.4 dev lo', mask: '24' }] } })],
      ['mask', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, IPAddresses: [{ family: 0, address: '1.2.3.4', mask: '33' }] } })],
      ['family mismatch', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, IPAddresses: [{ family: 1, address: '1.2.3.4', mask: '24' }] } })],
      ['mac', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, hwAddr: 'zz:00:00:00:00:00' } })],
      ['devicePath (a PCI path)', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, devicePath: '0000:00:02.0' } })],
      ['devicePath mac', () => sandbox!.agent.call('UpdateInterface', { interface: { ...base, devicePath: 'mac=-x up' } })],
      ['route dest', () => sandbox!.agent.call('UpdateRoutes', { routes: { Routes: [{ ...res.routes[0]!, dest: '10.0.0.0/8 table 5' }] } })],
      ['route gateway', () => sandbox!.agent.call('UpdateRoutes', { routes: { Routes: [{ ...res.routes[0]!, gateway: '--help' }] } })],
      ['neighbour', () => sandbox!.agent.call('AddARPNeighbors', { neighbors: { ARPNeighbors: [{ ...res.neighbors[0]!, lladdr: '-a' }] } })],
      ['clock before 1970', () => sandbox!.agent.call('SetGuestDateTime', { Sec: -5, Usec: 0 })],
      ['clock microseconds', () => sandbox!.agent.call('SetGuestDateTime', { Sec: 1, Usec: 1_000_000 })],
    ];
    for (const [what, call] of bad) {
      await assert.rejects(call(), (err: unknown) => {
        assert.ok(err instanceof KataError, what);
        assert.equal(err.kind, 'InvalidArgument', `${what}: ${err.message}`);
        return true;
      });
    }
    // Nothing changed: the interface is still configured.
    const ifs = await sandbox!.agent.call('ListInterfaces', {});
    assert.ok(ifs.Interfaces.find((i) => i.name === 'eth0')?.IPAddresses.some((a) => a.address === ns.podIp));
  });

  test('a container pings the gateway and serves HTTP to the host', async () => {
    const c = await sandbox!.createContainer({
      containerId: 'web',
      spec: { ...defaultSpec([]), process: withCaps(['/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/']) },
      hostRootfs: bundle.rootfs,
      stdio: {},
    });
    await c.start();
    const rtt = await pingFromContainer(sandbox!, 'web', ns.gateway);
    console.log(`# ping guest -> gateway: avg ${rtt} ms`);

    const t0 = performance.now();
    const r = await httpGetRetry(`http://${ns.podIp}:8080/etc/passwd`, 20_000);
    console.log(`# first HTTP answer ${(performance.now() - t0).toFixed(0)} ms after start`);
    assert.equal(r.status, 200);
    assert.match(r.body.toString(), /^root:x:0:0:/);

    const t1 = performance.now();
    const blob = await httpGet(`http://${ns.podIp}:8080/blob`, 60_000);
    const s = (performance.now() - t1) / 1000;
    assert.equal(blob.body.length, 16 << 20);
    console.log(`# guest -> host HTTP 16 MiB: ${((blob.body.length * 8) / s / 1e6).toFixed(0)} Mbit/s`);

    const nc = await c.exec('nc', withCaps(['/bin/sh', '-c', '/bin/busybox nc -l -p 5001 > /dev/null']), {});
    await new Promise((r) => setTimeout(r, 500));
    const up = await uploadMbps(ns.podIp, 5001, 16 << 20);
    await nc.wait();
    console.log(`# host -> guest TCP 16 MiB: ${up.toFixed(0)} Mbit/s`);
    await c.kill(9);
    await c.init.wait();
    await sandbox!.deleteContainer('web');
  });
});

describe('pod network: failures and cleanup (no VM)', () => {
  test('an unsupported link kind fails with InvalidArgument naming it, and leaves nothing', async () => {
    const ns = makeTestNetns('u', process.pid + 7);
    try {
      ip('-n', ns.name, 'link', 'add', 'br0', 'type', 'bridge');
      ip('-n', ns.name, 'link', 'add', 'link', 'eth0', 'name', 'mv0', 'type', 'macvlan', 'mode', 'bridge');
      const before = netnsState(ns);
      for (const model of ['tcfilter', 'macvtap'] as const) {
        const n = createPodNetwork(ns.path, model, silentLogger, { fdPassing: true });
        await assert.rejects(n.prepare(), (err: unknown) => {
          assert.ok(isKind(err, 'InvalidArgument'), String(err));
          assert.match((err as Error).message, /br0 \(bridge\)/);
          assert.match((err as Error).message, /mv0 \(macvlan\)/);
          return true;
        });
        assert.deepEqual(netnsState(ns), before);
      }
    } finally {
      ns.remove();
    }
  });

  test('two veths get two taps; when the second cannot attach, the first is undone too', async () => {
    const ns = makeTestNetns('t', process.pid + 19);
    const second = `kti${process.pid}`.slice(0, 15);
    try {
      ip('link', 'add', second, 'type', 'veth', 'peer', 'name', 'eth1', 'netns', ns.name);
      ip('-n', ns.name, 'link', 'set', 'eth1', 'up');
      const ok = createPodNetwork(ns.path, 'tcfilter', silentLogger);
      const r = await ok.prepare();
      assert.deepEqual(r.devices.map((d) => (d.kind === 'net-tap' ? `${d.id} ${d.ifname}` : d.kind)), ['network-0 tap0_kata', 'network-1 tap1_kata']);
      assert.deepEqual(r.interfaces.map((i) => i.name), ['eth0', 'eth1']);
      await ok.cleanup();

      // Someone else's ingress qdisc on eth1: kata-ts must neither redirect around it nor remove it.
      tc('-n', ns.name, 'qdisc', 'add', 'dev', 'eth1', 'ingress');
      const before = netnsState(ns);
      await assert.rejects(createPodNetwork(ns.path, 'tcfilter', silentLogger).prepare(), (err: unknown) => {
        assert.ok(isKind(err, 'FailedPrecondition'), String(err));
        assert.match((err as Error).message, /eth1 already has an ingress qdisc/);
        return true;
      });
      assert.deepEqual(netnsState(ns), before);
      assert.deepEqual(before.ingress, ['eth1']);
    } finally {
      ns.remove();
      try {
        ip('link', 'delete', second);
      } catch {
        // went with the netns
      }
    }
  });

  test('the host network namespace is refused', async () => {
    const n = createPodNetwork('/proc/self/ns/net', 'tcfilter', silentLogger);
    await assert.rejects(n.prepare(), (err: unknown) => {
      assert.ok(isKind(err, 'InvalidArgument'));
      assert.match((err as Error).message, /Host networking requested, not supported by runtime/);
      return true;
    });
  });

  test('macvtap without fd passing fails with NotImplemented before touching anything', async () => {
    const ns = makeTestNetns('m', process.pid + 11);
    try {
      const before = netnsState(ns);
      await assert.rejects(createPodNetwork(ns.path, 'macvtap', silentLogger).prepare(), (err: unknown) => isKind(err, 'NotImplemented'));
      assert.deepEqual(netnsState(ns), before);
    } finally {
      ns.remove();
    }
  });

  test('cleanup is idempotent and works on a fresh instance (after a crash)', async () => {
    const ns = makeTestNetns('c', process.pid + 13);
    try {
      const before = netnsState(ns);
      for (const model of ['tcfilter', 'macvtap'] as const) {
        const runDir = await mkdtemp(join(tmpdir(), 'kata-ts-nettest-'));
        const first = createPodNetwork(ns.path, model, silentLogger, { fdPassing: true, runDir });
        const r = await first.prepare();
        assert.equal(r.devices.length + r.fdDevices.length, 1);
        assert.notDeepEqual(netnsState(ns), before);
        if (model === 'macvtap') assert.ok(existsSync(r.fdDevices[0]!.devicePath));
        // The runtime "crashed": a new instance knows only the netns (and the run dir).
        const fresh = createPodNetwork(ns.path, model, silentLogger, { runDir });
        await fresh.cleanup();
        await fresh.cleanup();
        assert.deepEqual(netnsState(ns), before, `${model}: netns restored`);
        if (model === 'macvtap') assert.ok(!existsSync(r.fdDevices[0]!.devicePath));
        // The first instance's own cleanup finds nothing left and does not fail.
        await first.cleanup();
        await rm(runDir, { recursive: true, force: true });
      }
      // Leftovers from a crashed sandbox are swept when the next one prepares.
      const crashed = createPodNetwork(ns.path, 'tcfilter', silentLogger);
      await crashed.prepare();
      const next = createPodNetwork(ns.path, 'tcfilter', silentLogger);
      const r2 = await next.prepare();
      assert.equal(r2.devices.length, 1);
      await next.cleanup();
      assert.deepEqual(netnsState(ns), before);
    } finally {
      ns.remove();
    }
  });

  test('model none connects nothing', async () => {
    const n = createPodNetwork('/proc/self/ns/net', 'none', silentLogger);
    assert.deepEqual(await n.prepare(), { devices: [], fdDevices: [], interfaces: [], routes: [], neighbors: [] });
    await n.cleanup();
  });
});

/**
 * macvtap through the whole stack. The QEMU driver cannot pass fds yet (VmDevice net-tap has no `fds`), so
 * this test stands in for it: the hypervisor binary is a wrapper that opens the macvtap device on fd 3 and
 * execs QEMU, and the NIC comes from extraArgs (`-netdev tap,fd=3`).
 */
describe('pod network: macvtap, end to end (fd passed by a test wrapper)', () => {
  const sandboxId = `mvt${process.pid}`;
  let ns: TestNetns;
  let network: PodNetwork;
  let sandbox: Sandbox | undefined;
  let snap: HostSnapshot;
  let bundle: Bundle;
  let wrapperDir: string;
  let eth0Before: ReturnType<typeof netnsState>;
  const cfg = writeTestConfig();

  before(async () => {
    snap = snapshotHost();
    ns = makeTestNetns('v', process.pid + 17);
    eth0Before = netnsState(ns);
    network = createPodNetwork(ns.path, 'macvtap', silentLogger, { fdPassing: true });
    const res = await network.prepare();
    const dev = res.fdDevices[0]!;
    assert.equal(res.fdDevices.length, 1);
    const config: RuntimeConfig = await loadConfig(cfg.path);
    wrapperDir = await mkdtemp(join(tmpdir(), 'kata-ts-qemu-wrap-'));
    const wrapper = join(wrapperDir, 'qemu');
    assert.match(dev.devicePath + config.hypervisor.path, /^[A-Za-z0-9_./-]+$/);
    await writeFile(wrapper, `#!/bin/sh\nexec 3<>'${dev.devicePath}'\nexec '${config.hypervisor.path}' "$@"\n`);
    await chmod(wrapper, 0o700);
    const driver = config.hypervisor.machineType === 'microvm' ? 'virtio-net-device' : 'virtio-net-pci,romfile=';
    const vmSource = withNetwork(coldBoot(qemuFactory), ns.path, [], {
      hypervisorPath: wrapper,
      extraArgs: ['-netdev', `tap,id=netdev-${dev.id},fd=3`, '-device', `${driver},id=${dev.id},netdev=netdev-${dev.id},mac=${dev.mac}`],
    });
    sandbox = await Sandbox.create({ sandboxId, config, paths: defaultPaths() }, { ...defaultSandboxDeps(), vmSource }, silentLogger);
    await configureGuest(sandbox, res);
    bundle = await makeBundle(defaultSpec(['true']));
  });

  after(async () => {
    await sandbox?.stop().catch((err: unknown) => console.log('# sandbox stop:', err));
    await network?.cleanup();
    const left = ns ? netnsState(ns) : undefined;
    ns?.remove();
    await bundle?.remove();
    if (wrapperDir) await rm(wrapperDir, { recursive: true, force: true });
    cfg.remove();
    assert.deepEqual(left, eth0Before, 'the netns is as before: no macvtap, veth MAC, ARP and alias restored');
    assert.deepEqual(await leaksOf(snap, sandboxId), { processes: [], mounts: [], entries: [] });
  });

  test('a container pings the gateway and serves HTTP to the host through the macvtap', async () => {
    const c = await sandbox!.createContainer({
      containerId: 'web',
      spec: { ...defaultSpec([]), process: withCaps(['/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/']) },
      hostRootfs: bundle.rootfs,
      stdio: {},
    });
    await c.start();
    const rtt = await pingFromContainer(sandbox!, 'web', ns.gateway);
    console.log(`# macvtap ping guest -> gateway: avg ${rtt} ms`);
    const r = await httpGetRetry(`http://${ns.podIp}:8080/etc/passwd`, 20_000);
    assert.equal(r.status, 200);
    assert.match(r.body.toString(), /^root:x:0:0:/);
    await c.kill(9);
    await c.init.wait();
    await sandbox!.deleteContainer('web');
  });
});
