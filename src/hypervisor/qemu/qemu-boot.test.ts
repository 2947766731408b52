/**
 * Boots the real guest (kernel + initrd/image from /usr/share/kata-containers) with `kata.floor=1`: its /init
 * prints `KATA_INIT_REACHED uptime=...` on the serial console and powers off. Skipped while those files do not
 * exist. KATA_BOOT_RUNS=5 measures the median over 5 boots per machine type (default 1).
 */
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { silentLogger } from '../../base/logger.js';
import { hostTscKhz } from '../accel.js';
import { Qemu } from './qemu.js';
import { assertNoLeaks, haveQemu, makeBase, reapAndRemove, testConfig } from './qemu-test-support.js';

const ASSETS = process.env.KATA_TEST_ASSETS ?? '/usr/share/kata-containers';
const KERNEL = `${ASSETS}/vmlinux.container`;
const INITRD = `${ASSETS}/kata-containers-initrd.img`;
const IMAGE = `${ASSETS}/kata-containers.img`;
const RUNS = Math.max(1, Number(process.env.KATA_BOOT_RUNS ?? 1));

const haveKernel = fs.existsSync(KERNEL) && (fs.existsSync(INITRD) || fs.existsSync(IMAGE));
const skip = (!haveQemu && 'qemu not installed') || (!haveKernel && `guest assets not found in ${ASSETS}`);

const bases: string[] = [];
afterEach(() => {
  for (const b of bases.splice(0)) reapAndRemove(b);
});

interface BootResult {
  wallMs: number;
  guestUptimeS: number | undefined;
}

async function bootOnce(machineType: 'microvm' | 'q35'): Promise<BootResult> {
  const base = makeBase('kata-boot-test-');
  bases.push(base);
  const config = testConfig(base, {
    machineType,
    kernelPath: KERNEL,
    initrdPath: fs.existsSync(INITRD) ? INITRD : undefined,
    imagePath: fs.existsSync(IMAGE) ? IMAGE : undefined,
    kernelParams: ['kata.floor=1'],
    memoryMiB: 256,
  });
  const vm = new Qemu(config, silentLogger, { tscKhz: hostTscKhz() });
  const t0 = Date.now();
  try {
    await vm.start({ timeoutMs: 10_000 });
    const [pid] = vm.pids();
    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([
      vm.wait(),
      new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), 60_000))),
    ]);
    clearTimeout(timer);
    const wallMs = Date.now() - t0;
    const consoleText = (await vm.consoleTail(200)).join('\n');
    assert.notEqual(exit, 'timeout', `${machineType}: guest did not power off within 60 s; console:\n${consoleText}`);
    assert.deepEqual(exit, { code: 0, signal: null }, `${machineType}: console:\n${consoleText}`);
    const m = /KATA_INIT_REACHED(?: uptime=([0-9.]+))?/.exec(consoleText);
    assert.ok(m, `${machineType}: no KATA_INIT_REACHED on the console:\n${consoleText}`);
    await vm.cleanup();
    assertNoLeaks(base, config, [pid!]);
    return { wallMs, guestUptimeS: m[1] ? Number(m[1]) : undefined };
  } finally {
    await vm.cleanup();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

test('the guest reaches /init and powers off by itself (microvm vs q35)', { skip, timeout: 600_000 }, async (t) => {
  for (const machineType of ['microvm', 'q35'] as const) {
    const runs: BootResult[] = [];
    for (let i = 0; i < RUNS; i++) runs.push(await bootOnce(machineType));
    const uptimes = runs.map((r) => r.guestUptimeS).filter((u): u is number => u !== undefined);
    t.diagnostic(
      `${machineType}: ${RUNS} boot(s), median wall (start -> QEMU exit) ${median(runs.map((r) => r.wallMs))} ms` +
        (uptimes.length ? `, median guest uptime at /init ${median(uptimes)} s` : '') +
        ` [${runs.map((r) => r.wallMs).join(', ')}]`,
    );
  }
});

test(
  'the root image stays /dev/vda when more block devices are attached (microvm)',
  { skip: skip || (!fs.existsSync(IMAGE) && 'no root image'), timeout: 120_000 },
  async () => {
    const base = makeBase('kata-boot-test-');
    bases.push(base);
    const vols = ['v1', 'v2'].map((id) => {
      const p = `${base}/${id}.img`;
      fs.writeFileSync(p, Buffer.alloc(1 << 20)); // zeros: not mountable, so only the image can pass
      return { kind: 'block' as const, id, path: p, readonly: false };
    });
    const config = testConfig(base, {
      kernelPath: KERNEL,
      initrdPath: fs.existsSync(INITRD) ? INITRD : undefined,
      imagePath: IMAGE,
      memoryMiB: 512,
      devices: vols,
    });
    const vm = new Qemu(config, silentLogger, { tscKhz: hostTscKhz() });
    try {
      await vm.start({ timeoutMs: 10_000 });
      const [pid] = vm.pids();
      let text = '';
      for (let i = 0; i < 600 && !/KATA_INIT_SWITCH|KATA_INIT_ERROR/.test(text); i++) {
        await new Promise((r) => setTimeout(r, 50));
        text = (await vm.consoleTail(200)).join('\n');
      }
      assert.match(text, /KATA_INIT_SWITCH/, `the initrd did not mount /dev/vda:\n${text}`);
      await vm.stop({ timeoutMs: 5000 });
      await vm.cleanup();
      assertNoLeaks(base, config, [pid!]);
    } finally {
      await vm.cleanup();
    }
  },
);
