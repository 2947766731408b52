import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../base/logger.js';
import {
  PROBE_EXPECTED_STATUS,
  accelCacheKey,
  detectAccel,
  hostTscKhz,
  probeAccel,
  probeBootSector,
} from './accel.js';

const QEMU = process.env.KATA_TEST_QEMU ?? '/usr/bin/qemu-system-x86_64';
const haveQemu = fs.existsSync(QEMU);

/** A logger that records warn/info messages. */
function recordingLogger(): Logger & { lines: { level: string; msg: string }[] } {
  const lines: { level: string; msg: string }[] = [];
  const mk = (level: string) => (_o: object, msg?: string) => void lines.push({ level, msg: msg ?? '' });
  const l = {
    lines,
    trace: mk('trace'),
    debug: mk('debug'),
    info: mk('info'),
    warn: mk('warn'),
    error: mk('error'),
    child: () => l,
  };
  return l;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'accel-test-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(fs.existsSync(dir), false);
});

/** A fake QEMU: a shell script that counts its runs and then does `body`. */
function fakeQemu(name: string, body: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, `#!/bin/sh\necho run >> ${dir}/${name}.runs\n${body}\n`, { mode: 0o755 });
  return p;
}
const runs = (name: string) => {
  try {
    return fs.readFileSync(path.join(dir, `${name}.runs`), 'utf8').split('\n').filter(Boolean).length;
  } catch {
    return 0;
  }
};

test('the probe boot sector is a valid MBR with the exit program', () => {
  const mbr = probeBootSector();
  assert.equal(mbr.length, 512);
  assert.equal(mbr[510], 0x55);
  assert.equal(mbr[511], 0xaa);
  assert.deepEqual([...mbr.subarray(0, 7)], [0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]);
  assert.equal(PROBE_EXPECTED_STATUS, 85);
});

test('the probe program really exits QEMU under TCG', { skip: !haveQemu && 'no qemu' }, async () => {
  const r = await probeAccel(QEMU, 'tcg', 10_000);
  assert.equal(r.ok, true, r.detail);
});

test('a hanging guest is killed at the timeout', async () => {
  const q = fakeQemu('hang', `echo $$ > ${dir}/hang.pid\nexec sleep 30`);
  const t0 = Date.now();
  const r = await probeAccel(q, 'kvm', 300);
  assert.equal(r.ok, false);
  assert.match(r.detail, /did not finish within 300 ms/);
  assert.ok(Date.now() - t0 < 2000);
  const pid = parseInt(fs.readFileSync(path.join(dir, 'hang.pid'), 'utf8'), 10);
  assert.equal(alive(pid), false, 'the hung probe process must be gone');
});

test('a failing QEMU reports its status and stderr', async () => {
  const q = fakeQemu('fail', 'echo "qemu: -accel kvm: failed to initialize kvm: No such file or directory" >&2; exit 1');
  const r = await probeAccel(q, 'kvm', 2000);
  assert.equal(r.ok, false);
  assert.match(r.detail, /status 1 \(want 85\): qemu: -accel kvm: failed to initialize kvm/);
});

test('a missing binary is reported', async () => {
  const r = await probeAccel(path.join(dir, 'nope'), 'kvm', 2000);
  assert.equal(r.ok, false);
  assert.match(r.detail, /cannot run/);
});

test('configured accelerators are taken as they are', async () => {
  const log = recordingLogger();
  assert.deepEqual(await detectAccel('tcg', { qemuPath: '/nope', log }), { accel: 'tcg', reason: 'configured', source: 'config' });
  assert.deepEqual(await detectAccel('kvm', { qemuPath: '/nope', log }), { accel: 'kvm', reason: 'configured', source: 'config' });
});

test('auto without a usable /dev/kvm: TCG with a clear warning, no QEMU run', async () => {
  const q = fakeQemu('ok', `exit ${PROBE_EXPECTED_STATUS}`);
  const log = recordingLogger();
  const v = await detectAccel('auto', { qemuPath: q, log, cacheDir: path.join(dir, 'cache'), kvmDevice: path.join(dir, 'kvm') });
  assert.equal(v.accel, 'tcg');
  assert.match(v.reason, /^KVM unusable: .*ENOENT/);
  assert.equal(runs('ok'), 0);
  assert.ok(log.lines.some((l) => l.level === 'warn' && /KVM unusable: .*falling back to TCG \(slow\)/.test(l.msg)));
});

test('auto: a KVM that hangs means TCG; the verdict is cached per binary', async () => {
  fs.writeFileSync(path.join(dir, 'kvm'), '');
  const q = fakeQemu('hang', 'exec sleep 30');
  const opts = { qemuPath: q, log: recordingLogger(), cacheDir: path.join(dir, 'cache'), kvmDevice: path.join(dir, 'kvm'), probeTimeoutMs: 200 };
  const v1 = await detectAccel('auto', opts);
  assert.deepEqual([v1.accel, v1.source], ['tcg', 'probe']);
  assert.match(v1.reason, /did not finish/);
  const v2 = await detectAccel('auto', opts);
  assert.deepEqual(v2, { ...v1, source: 'cache' });
  assert.equal(runs('hang'), 1, 'the second call must not probe again');
  const cacheFile = path.join(dir, 'cache', `accel-${accelCacheKey(q)}.json`);
  assert.equal(JSON.parse(fs.readFileSync(cacheFile, 'utf8')).accel, 'tcg');
});

test('auto: a KVM that runs the test guest is used; a changed binary is probed again', async () => {
  fs.writeFileSync(path.join(dir, 'kvm'), '');
  const q = fakeQemu('ok', `exit ${PROBE_EXPECTED_STATUS}`);
  const opts = { qemuPath: q, log: recordingLogger(), cacheDir: path.join(dir, 'cache'), kvmDevice: path.join(dir, 'kvm') };
  const v1 = await detectAccel('auto', opts);
  assert.deepEqual([v1.accel, v1.source], ['kvm', 'probe']);
  assert.equal((await detectAccel('auto', opts)).source, 'cache');
  const key = accelCacheKey(q);
  fs.appendFileSync(q, '# changed\n');
  assert.notEqual(accelCacheKey(q), key);
  assert.equal((await detectAccel('auto', opts)).source, 'probe');
  assert.equal(runs('ok'), 2);
});

test('an unwritable cache directory is not fatal', async () => {
  const q = fakeQemu('ok', `exit ${PROBE_EXPECTED_STATUS}`);
  fs.writeFileSync(path.join(dir, 'kvm'), '');
  fs.writeFileSync(path.join(dir, 'file'), '');
  const v = await detectAccel('auto', {
    qemuPath: q,
    log: recordingLogger(),
    cacheDir: path.join(dir, 'file', 'sub'),
    kvmDevice: path.join(dir, 'kvm'),
  });
  assert.equal(v.accel, 'kvm');
});

test('auto on this host with the real QEMU', { skip: !haveQemu && 'no qemu' }, async () => {
  const log = recordingLogger();
  const t0 = Date.now();
  const v = await detectAccel('auto', { qemuPath: QEMU, log, cacheDir: path.join(dir, 'cache') });
  const ms = Date.now() - t0;
  assert.ok(v.accel === 'kvm' || v.accel === 'tcg');
  assert.ok(ms < 4000, `probe took ${ms} ms`);
  if (v.accel === 'tcg') assert.match(v.reason, /^KVM unusable: /);
  const again = await detectAccel('auto', { qemuPath: QEMU, log, cacheDir: path.join(dir, 'cache') });
  assert.equal(again.source, 'cache');
  assert.equal(again.accel, v.accel);
});

test('hostTscKhz prefers sysfs, falls back to cpuinfo', () => {
  const sys = path.join(dir, 'tsc_freq_khz');
  const cpuinfo = path.join(dir, 'cpuinfo');
  fs.writeFileSync(cpuinfo, 'processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2096.005\ncache size\t: 512 KB\n');
  assert.equal(hostTscKhz({ sysfsPath: sys, cpuinfoPath: cpuinfo }), 2096005);
  fs.writeFileSync(sys, '2095998\n');
  assert.equal(hostTscKhz({ sysfsPath: sys, cpuinfoPath: cpuinfo }), 2095998);
  assert.equal(hostTscKhz({ sysfsPath: path.join(dir, 'x'), cpuinfoPath: path.join(dir, 'y') }), undefined);
  fs.writeFileSync(sys, 'garbage');
  fs.writeFileSync(cpuinfo, 'cpu MHz : 1999.9996\n');
  assert.equal(hostTscKhz({ sysfsPath: sys, cpuinfoPath: cpuinfo }), 2000000);
  const real = hostTscKhz();
  assert.ok(real === undefined || (real > 100_000 && real < 10_000_000), String(real));
});
