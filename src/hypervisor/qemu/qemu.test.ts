/** Integration tests of the QEMU driver against the real binary (TCG, no guest kernel needed). */
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { KataError } from '../../base/errors.js';
import { silentLogger } from '../../base/logger.js';
import type { VmConfig } from '../hypervisor.js';
import { Qemu, qemuFactory, shellQuote, tailLines } from './qemu.js';
import {
  alive,
  assertNoLeaks,
  haveQemu,
  isRoot,
  makeBase,
  reapAndRemove,
  testConfig,
} from './qemu-test-support.js';

const skip = !haveQemu && 'qemu not installed';
const bases: string[] = [];
const vms: Qemu[] = [];

afterEach(async () => {
  for (const vm of vms.splice(0)) await vm.cleanup();
  for (const b of bases.splice(0)) reapAndRemove(b);
});

function setup(over: Partial<VmConfig> = {}, opts: ConstructorParameters<typeof Qemu>[2] = {}): {
  base: string;
  config: VmConfig;
  vm: Qemu;
} {
  const base = makeBase();
  bases.push(base);
  const config = testConfig(base, over);
  const vm = new Qemu(config, silentLogger, opts);
  vms.push(vm);
  return { base, config, vm };
}

function expectKata(kind: string, code: string, re?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof KataError, String(e));
    assert.equal(e.kind, kind, e.message);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

test('start, pause, resume, stop, wait, cleanup leave nothing behind', { skip }, async (t) => {
  const { base, config, vm } = setup();
  const t0 = Date.now();
  await vm.start({ timeoutMs: 10_000 });
  const startMs = Date.now() - t0;
  assert.equal(vm.state, 'running');
  const [pid] = vm.pids();
  assert.ok(pid && alive(pid));
  assert.equal(fs.statSync(config.vmDir).mode & 0o777, 0o700);
  assert.equal(fs.readFileSync(vm.paths.pidFile, 'utf8').trim(), String(pid));
  assert.ok(fs.existsSync(vm.paths.qmpSocket));
  assert.ok(fs.existsSync(path.join(config.vmDir, 'agent.sock')), 'QEMU serves the agent socket');
  // Own process group (and session): one signal reaches QEMU and its helpers.
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  assert.equal(Number(stat[2]), pid, 'pgid == pid');

  await vm.pause();
  assert.equal(vm.state, 'paused');
  assert.equal((await vm.qmp!.execute<{ status: string }>('query-status')).status, 'paused');
  await vm.resume();
  assert.equal((await vm.qmp!.execute<{ status: string }>('query-status')).status, 'running');

  await assert.rejects(vm.start({ timeoutMs: 1000 }), expectKata('FailedPrecondition', 'KATA_VM_BAD_STATE', /cannot start vm in state running/));

  const t1 = Date.now();
  await vm.stop({ timeoutMs: 5000 });
  const stopMs = Date.now() - t1;
  assert.equal(vm.state, 'exited');
  assert.deepEqual(await vm.wait(), { code: 0, signal: null });
  assert.deepEqual(vm.pids(), []);
  await vm.stop({ timeoutMs: 1000 }); // idempotent
  await vm.kill(); // idempotent
  await assert.rejects(vm.pause(), expectKata('FailedPrecondition', 'KATA_VM_BAD_STATE'));
  await vm.cleanup();
  await vm.cleanup();
  assert.equal(vm.state, 'cleaned');
  assertNoLeaks(base, config, [pid]);
  t.diagnostic(`microvm start ${startMs} ms, stop ${stopMs} ms`);
});

test('kill: SIGKILL, wait reports the signal, cleanup removes all', { skip }, async () => {
  const { base, config, vm } = setup();
  await vm.start({ timeoutMs: 10_000 });
  const [pid] = vm.pids();
  const waited = vm.wait();
  await vm.kill();
  assert.deepEqual(await waited, { code: null, signal: 'SIGKILL' });
  assert.equal(vm.state, 'exited');
  await vm.kill();
  await vm.cleanup();
  assertNoLeaks(base, config, [pid!]);
});

test('QEMU exiting on its own resolves wait()', { skip }, async () => {
  const { base, config, vm } = setup({ machineType: 'pc' });
  await vm.start({ timeoutMs: 10_000 });
  const [pid] = vm.pids();
  await vm.qmp!.execute('quit').catch(() => undefined);
  assert.deepEqual(await vm.wait(), { code: 0, signal: null });
  assert.equal(vm.state, 'exited');
  assert.ok(fs.existsSync(config.vmDir), 'files stay until cleanup (console log for diagnostics)');
  await vm.cleanup();
  assertNoLeaks(base, config, [pid!]);
});

test('stop kills QEMU when quit does not end it in time', { skip }, async () => {
  const { base, config, vm } = setup();
  await vm.start({ timeoutMs: 10_000 });
  const [pid] = vm.pids();
  // Freeze QEMU: QMP cannot answer, so only SIGKILL can end it.
  process.kill(pid!, 'SIGSTOP');
  const t0 = Date.now();
  await vm.stop({ timeoutMs: 300 });
  const ms = Date.now() - t0;
  assert.ok(ms < 2000, `stop took ${ms} ms`);
  assert.equal((await vm.wait()).signal, 'SIGKILL');
  await vm.cleanup();
  assertNoLeaks(base, config, [pid!]);
});

test('a bad QEMU argument: clear error with QEMU stderr, nothing left', { skip }, async () => {
  const { base, config, vm } = setup({ extraArgs: ['-no-such-option'] });
  await assert.rejects(
    vm.start({ timeoutMs: 10_000 }),
    expectKata('Unavailable', 'KATA_VM_START_FAILED', /qemu exited during start \(status 1\); qemu said: .*-no-such-option: invalid option/),
  );
  assert.equal(vm.state, 'failed');
  assert.equal((await vm.wait()).code, 1);
  assertNoLeaks(base, config);
});

test('a missing kernel file: clear error, nothing left', { skip }, async () => {
  const base0 = makeBase();
  bases.push(base0);
  const { base, config, vm } = setup({ kernelPath: path.join(base0, 'no-such-vmlinux') });
  await assert.rejects(
    vm.start({ timeoutMs: 10_000 }),
    expectKata('Unavailable', 'KATA_VM_START_FAILED', /qemu said: .*no-such-vmlinux/),
  );
  assertNoLeaks(base, config);
});

test('a missing QEMU binary: clear error, nothing left', { skip }, async () => {
  const { base, config, vm } = setup({ hypervisorPath: '/nonexistent/qemu-system-x86_64' });
  await assert.rejects(
    vm.start({ timeoutMs: 5000 }),
    expectKata('Unavailable', 'KATA_VM_START_FAILED', /could not run \/nonexistent\/qemu-system-x86_64: .*ENOENT/),
  );
  assertNoLeaks(base, config);
});

test('a failed start keeps foreign files in a vmDir it did not create', { skip }, async () => {
  const { base, config, vm } = setup({ extraArgs: ['-no-such-option'] });
  fs.mkdirSync(config.vmDir, { recursive: true });
  fs.writeFileSync(path.join(config.vmDir, 'vhost-fs.sock'), '');
  await assert.rejects(vm.start({ timeoutMs: 10_000 }), expectKata('Unavailable', 'KATA_VM_START_FAILED'));
  assert.deepEqual(fs.readdirSync(config.vmDir), ['vhost-fs.sock']);
  await vm.cleanup();
  assertNoLeaks(base, config);
});

test('an invalid config is rejected before anything is created', { skip }, async () => {
  const { base, config, vm } = setup({ vcpus: 0 });
  await assert.rejects(vm.start({ timeoutMs: 5000 }), expectKata('InvalidArgument', 'KATA_VM_CONFIG_INVALID', /vcpus/));
  assertNoLeaks(base, config);
  assert.equal(vm.state, 'created');
});

/** A "hypervisor" that never opens its QMP socket. */
function hangingHypervisor(base: string): string {
  const p = path.join(base, 'hang-qemu');
  fs.writeFileSync(p, `#!/bin/sh\necho $$ > ${base}/hang.pid\nexec sleep 60\n`, { mode: 0o755 });
  return p;
}

test('start timeout kills the VMM and cleans up', { skip }, async () => {
  const { base, config, vm } = setup();
  (config as { hypervisorPath: string }).hypervisorPath = hangingHypervisor(base);
  const t0 = Date.now();
  await assert.rejects(vm.start({ timeoutMs: 300 }), expectKata('DeadlineExceeded', 'KATA_VM_START_TIMEOUT', /300 ms/));
  assert.ok(Date.now() - t0 < 2000);
  const pid = Number(fs.readFileSync(path.join(base, 'hang.pid'), 'utf8'));
  assertNoLeaks(base, config, [pid]);
});

test('start can be aborted', { skip }, async () => {
  const { base, config, vm } = setup();
  (config as { hypervisorPath: string }).hypervisorPath = hangingHypervisor(base);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  await assert.rejects(vm.start({ timeoutMs: 10_000, signal: ac.signal }), expectKata('Cancelled', 'KATA_CANCELLED'));
  const pid = Number(fs.readFileSync(path.join(base, 'hang.pid'), 'utf8'));
  assertNoLeaks(base, config, [pid]);
});

test('template and clone: saveState, then restore paused, then resume', { skip }, async (t) => {
  const base0 = makeBase();
  bases.push(base0);
  const memPath = path.join(base0, 'memory');
  const statePath = path.join(base0, "st'ate");
  const tmpl = setup({ memoryBackend: { kind: 'file', path: memPath, share: true } });
  await tmpl.vm.start({ timeoutMs: 10_000 });
  const t0 = Date.now();
  await tmpl.vm.saveState(statePath);
  const saveMs = Date.now() - t0;
  assert.equal(tmpl.vm.state, 'paused');
  const stateSize = fs.statSync(statePath).size;
  assert.ok(stateSize > 0 && stateSize < 1024 * 1024, `state is ${stateSize} bytes: RAM must not be in it`);
  await tmpl.vm.stop({ timeoutMs: 5000 });
  await tmpl.vm.cleanup();
  assertNoLeaks(tmpl.base, tmpl.config);

  const clone = setup({ memoryBackend: { kind: 'file', path: memPath, share: false }, incomingStatePath: statePath });
  const t1 = Date.now();
  await clone.vm.start({ timeoutMs: 10_000 });
  const restoreMs = Date.now() - t1;
  assert.equal(clone.vm.state, 'paused');
  assert.equal((await clone.vm.qmp!.execute<{ status: string }>('query-status')).status, 'paused');
  await clone.vm.resume();
  assert.equal((await clone.vm.qmp!.execute<{ status: string }>('query-status')).status, 'running');
  await clone.vm.stop({ timeoutMs: 5000 });
  await clone.vm.cleanup();
  assertNoLeaks(clone.base, clone.config);
  t.diagnostic(`saveState ${saveMs} ms (${stateSize} bytes), clone start to paused ${restoreMs} ms`);
});

test('a clone with a missing, empty or corrupt state file fails clearly, nothing left', { skip }, async () => {
  const base0 = makeBase();
  bases.push(base0);
  const missing = setup({ incomingStatePath: path.join(base0, 'missing-state') });
  await assert.rejects(missing.vm.start({ timeoutMs: 10_000 }), expectKata('NotFound', 'KATA_VM_STATE_NOT_FOUND'));
  assertNoLeaks(missing.base, missing.config);

  fs.writeFileSync(path.join(base0, 'empty'), '');
  const empty = setup({ incomingStatePath: path.join(base0, 'empty') });
  await assert.rejects(empty.vm.start({ timeoutMs: 10_000 }), expectKata('InvalidArgument', 'KATA_VM_STATE_INVALID'));
  assertNoLeaks(empty.base, empty.config);

  fs.writeFileSync(path.join(base0, 'corrupt'), Buffer.alloc(1000, 7));
  const corrupt = setup({ incomingStatePath: path.join(base0, 'corrupt') });
  await assert.rejects(
    corrupt.vm.start({ timeoutMs: 10_000 }),
    expectKata('Unavailable', 'KATA_VM_START_FAILED', /qemu said: .*Not a migration stream/),
  );
  assertNoLeaks(corrupt.base, corrupt.config);
});

test('full snapshot (anonymous memory) restores too', { skip }, async () => {
  const base0 = makeBase();
  bases.push(base0);
  const statePath = path.join(base0, 'state');
  const a = setup();
  await a.vm.start({ timeoutMs: 10_000 });
  await a.vm.saveState(statePath);
  await a.vm.stop({ timeoutMs: 5000 });
  const b = setup({ incomingStatePath: statePath });
  await b.vm.start({ timeoutMs: 10_000 });
  assert.equal(b.vm.state, 'paused');
  await b.vm.resume();
  await b.vm.stop({ timeoutMs: 5000 });
});

test('microvm has no hotplug', { skip }, async () => {
  const { vm } = setup();
  await vm.start({ timeoutMs: 10_000 });
  const dev = { kind: 'block' as const, id: 'b1', path: '/dev/null', readonly: true };
  await assert.rejects(vm.addDevice(dev), expectKata('NotImplemented', 'KATA_HOTPLUG_UNSUPPORTED', /microvm has no hotplug/));
  await assert.rejects(vm.removeDevice('b1'), expectKata('NotImplemented', 'KATA_HOTPLUG_UNSUPPORTED'));
});

test('q35: block hotplug into a root port; unplug needs the guest', { skip }, async () => {
  const base0 = makeBase();
  bases.push(base0);
  const img = path.join(base0, 'vol.img');
  fs.writeFileSync(img, Buffer.alloc(1024 * 1024));
  const { vm } = setup({ machineType: 'q35' }, { hotplugPorts: 1, unplugTimeoutMs: 300 });
  await vm.start({ timeoutMs: 10_000 });
  await vm.addDevice({ kind: 'block', id: 'vol1', path: img, readonly: false });
  const blocks = await vm.qmp!.execute<{ device: string; qdev?: string; inserted?: { file: string } }[]>('query-block');
  assert.ok(blocks.some((b) => b.inserted?.file === img), JSON.stringify(blocks));
  const qtree = await vm.qmp!.execute<string>('human-monitor-command', { 'command-line': 'info qtree' });
  assert.match(qtree, /dev: pcie-root-port, id "rp0"[\s\S]*dev: virtio-blk-pci, id "vol1"/);
  // Only one root port: a second device has nowhere to go.
  await assert.rejects(
    vm.addDevice({ kind: 'block', id: 'vol2', path: img, readonly: true }),
    expectKata('ResourceExhausted', 'KATA_HOTPLUG_NO_PORT'),
  );
  await assert.rejects(
    vm.addDevice({ kind: 'block', id: 'vol1', path: img, readonly: true }),
    expectKata('AlreadyExists', 'KATA_DEVICE_EXISTS'),
  );
  await assert.rejects(
    vm.addDevice({ kind: '9p', id: 'p9', hostPath: base0, tag: 't' }),
    expectKata('NotImplemented', 'KATA_HOTPLUG_UNSUPPORTED'),
  );
  await assert.rejects(vm.removeDevice('nope'), expectKata('NotFound', 'KATA_DEVICE_NOT_FOUND'));
  // No guest OS here to acknowledge the unplug request.
  await assert.rejects(vm.removeDevice('vol1'), expectKata('DeadlineExceeded', 'KATA_HOTPLUG_TIMEOUT'));
});

test('pc: a failed device_add rolls the backend back', { skip }, async () => {
  const base0 = makeBase();
  bases.push(base0);
  const img = path.join(base0, 'vol.img');
  fs.writeFileSync(img, Buffer.alloc(1024 * 1024));
  const { vm } = setup({ machineType: 'pc' });
  await vm.start({ timeoutMs: 10_000 });
  // A missing file fails at blockdev-add; the QMP error surfaces as a KataError.
  await assert.rejects(
    vm.addDevice({ kind: 'block', id: 'bad', path: path.join(base0, 'missing.img'), readonly: true }),
    (e: unknown) => e instanceof KataError && e.code === 'KATA_QMP_ERROR' && /hotplug block bad/.test(e.message),
  );
  await vm.addDevice({ kind: 'block', id: 'good', path: img, readonly: true });
  const nodes = await vm.qmp!.execute<{ 'node-name': string }[]>('query-named-block-nodes');
  assert.ok(nodes.some((n) => n['node-name'] === 'drive-good'));
  assert.ok(!nodes.some((n) => n['node-name'] === 'drive-bad'));
});

test('QEMU accepts every cold-plugged device kind (microvm, q35, pc)', { skip }, async () => {
  for (const machineType of ['microvm', 'q35', 'pc'] as const) {
    const base0 = makeBase();
    bases.push(base0);
    const share = path.join(base0, 'share');
    fs.mkdirSync(share);
    const img = path.join(base0, 'root.img');
    const vol = path.join(base0, 'vol.img');
    fs.writeFileSync(img, Buffer.alloc(1024 * 1024));
    fs.writeFileSync(vol, Buffer.alloc(1024 * 1024));
    const vfsSock = path.join(base0, 'vfs.sock');
    const virtiofsd = spawn('/usr/lib/qemu/virtiofsd', [`--socket-path=${vfsSock}`, '-o', `source=${share}`, '-o', 'cache=always'], {
      stdio: 'ignore',
    });
    const vfsExit = new Promise((r) => virtiofsd.on('exit', r));
    try {
      for (let i = 0; i < 200 && !fs.existsSync(vfsSock); i++) await new Promise((r) => setTimeout(r, 10));
      const { base, config, vm } = setup({
        machineType,
        imagePath: img,
        memoryBackend: { kind: 'memfd' },
        devices: [
          { kind: 'virtio-fs', id: 'fs0', socketPath: vfsSock, tag: 'kataShared' },
          { kind: '9p', id: 'p9', hostPath: share, tag: 'shared9p', readonly: true },
          { kind: 'block', id: 'vol0', path: vol, readonly: false },
        ],
      });
      await vm.start({ timeoutMs: 10_000 });
      const qtree = await vm.qmp!.execute<string>('human-monitor-command', { 'command-line': 'info qtree' });
      for (const id of ['image', 'fs0', 'p9', 'vol0', 'serial0']) assert.match(qtree, new RegExp(`id "${id}"`), `${machineType}: ${id}`);
      await vm.stop({ timeoutMs: 5000 });
      await vm.cleanup();
      assertNoLeaks(base, config);
    } finally {
      virtiofsd.kill('SIGKILL');
      await vfsExit;
    }
  }
});

test('QEMU runs inside the given network namespace with its tap', { skip: skip || (!isRoot && 'needs root') }, async () => {
  const ns = `kata-ts-test-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap']);
    const netnsPath = `/run/netns/${ns}`;
    const { base, config, vm } = setup({
      machineType: 'q35',
      netnsPath,
      devices: [{ kind: 'net-tap', id: 'eth0', ifname: 'tap0', mac: '02:00:00:aa:bb:01', netnsPath }],
    });
    await vm.start({ timeoutMs: 10_000 });
    const [pid] = vm.pids();
    assert.equal(fs.readlinkSync(`/proc/${pid}/ns/net`), `net:[${fs.statSync(netnsPath).ino}]`);
    assert.notEqual(fs.readlinkSync(`/proc/${pid}/ns/net`), fs.readlinkSync('/proc/self/ns/net'));
    await vm.stop({ timeoutMs: 5000 });
    await vm.cleanup();
    assertNoLeaks(base, config, [pid!]);
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
  assert.equal(fs.existsSync(`/run/netns/${ns}`), false);
});

test('qemuFactory creates a Qemu', () => {
  const base = makeBase();
  bases.push(base);
  const hv = qemuFactory.create(testConfig(base), silentLogger);
  assert.equal(hv.kind, 'qemu');
  assert.ok(hv instanceof Qemu);
  assert.deepEqual(hv.pids(), []);
});

test('consoleTail / tailLines', async () => {
  const base = makeBase();
  bases.push(base);
  const f = path.join(base, 'log');
  assert.deepEqual(await tailLines(f, 5, 1024), []);
  fs.writeFileSync(f, 'a\r\nb\nc\n');
  assert.deepEqual(await tailLines(f, 2, 1024), ['b', 'c']);
  assert.deepEqual(await tailLines(f, 10, 1024), ['a', 'b', 'c']);
  assert.deepEqual(await tailLines(f, 0, 1024), []);
  fs.writeFileSync(f, `${'x'.repeat(100)}\nlast1\nlast2`);
  assert.deepEqual(await tailLines(f, 10, 20), ['last1', 'last2'], 'a line cut by the byte window is dropped');
  const vm = new Qemu(testConfig(base), silentLogger);
  assert.deepEqual(await vm.consoleTail(5), []);
});

test('shellQuote', () => {
  assert.equal(shellQuote('/a b'), `'/a b'`);
  assert.equal(shellQuote(`it's`), `'it'\\''s'`);
  assert.equal(execFileSync('/bin/sh', ['-c', `printf %s ${shellQuote(`a'b $x "c"`)}`]).toString(), `a'b $x "c"`);
});
