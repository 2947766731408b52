/** Helpers for the driver's integration tests (real QEMU): configs in a private temp dir and leak checks. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { VmConfig } from '../hypervisor.js';

export const TEST_QEMU = process.env.KATA_TEST_QEMU ?? '/usr/bin/qemu-system-x86_64';
export const haveQemu = fs.existsSync(TEST_QEMU);
export const isRoot = process.getuid?.() === 0;

/** A fresh base directory per test. */
export function makeBase(prefix = 'kata-qemu-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A VM without kernel: QEMU runs its firmware, which idles. Enough for lifecycle, QMP and device syntax. */
export function testConfig(base: string, over: Partial<VmConfig> = {}): VmConfig {
  const vmDir = path.join(base, 'vm');
  return {
    sandboxId: path.basename(base),
    vmDir,
    hypervisorPath: TEST_QEMU,
    kernelPath: '',
    kernelParams: [],
    machineType: 'microvm',
    accel: 'tcg',
    vcpus: 1,
    memoryMiB: 64,
    memoryBackend: { kind: 'anonymous' },
    agentChannel: { kind: 'virtio-serial', socketPath: path.join(vmDir, 'agent.sock') },
    devices: [],
    ...over,
  };
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie is dead for our purpose.
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Pids of live processes whose command line mentions `needle` (our temp dir). */
export function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmdline.includes(needle) && alive(Number(e))) out.push(Number(e));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** Asserts nothing of the test is left: no process, no vmDir, no agent socket. */
export function assertNoLeaks(base: string, config: VmConfig, pids: number[] = []): void {
  for (const pid of pids) assert.equal(alive(pid), false, `process ${pid} still alive`);
  assert.deepEqual(processesMentioning(base), [], `processes left behind for ${base}`);
  assert.equal(fs.existsSync(config.vmDir), false, `${config.vmDir} left behind`);
  if (config.agentChannel.kind === 'virtio-serial') {
    assert.equal(fs.existsSync(config.agentChannel.socketPath), false, 'agent socket left behind');
  }
}

/** Kills leftovers (after a failed assertion) so that one failing test does not leak into others. */
export function reapAndRemove(base: string): void {
  for (const pid of processesMentioning(base)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  fs.rmSync(base, { recursive: true, force: true });
}
