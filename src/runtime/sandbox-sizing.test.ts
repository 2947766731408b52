import assert from 'node:assert/strict';
import { cpus } from 'node:os';
import { test } from 'node:test';
import { parseConfig } from './config/load.js';
import { sizeSandbox } from './sandbox-sizing.js';

const base = () =>
  parseConfig('[hypervisor.qemu]\nkernel = "/k"\ninitrd = "/i"\ndefault_vcpus = 1\ndefault_memory = 512\n', '/t.toml', {
    host: { cpus: 8, memoryMiB: 16384 },
  });

test('no sizing annotations: the defaults', () => {
  const c = sizeSandbox(base(), {});
  assert.equal(c.hypervisor.defaultVcpus, 1);
  assert.equal(c.hypervisor.defaultMemoryMiB, 512);
});

test('pod limits are added to the defaults, like Kata', () => {
  const c = sizeSandbox(base(), {
    'io.kubernetes.cri.sandbox-cpu-quota': String(100_000 * Math.min(1, cpus().length - 1)),
    'io.kubernetes.cri.sandbox-cpu-period': '100000',
    'io.kubernetes.cri.sandbox-memory': String(512 * 1024 * 1024),
  });
  assert.equal(c.hypervisor.defaultVcpus, 1 + Math.min(1, cpus().length - 1));
  assert.equal(c.hypervisor.defaultMemoryMiB, 1024);
});

test('zeros (containerd writes all four) change nothing; garbage and impossible sizes are refused', () => {
  assert.equal(sizeSandbox(base(), { 'io.kubernetes.cri.sandbox-cpu-quota': '0', 'io.kubernetes.cri.sandbox-cpu-period': '0' }).hypervisor.defaultVcpus, 1);
  assert.throws(() => sizeSandbox(base(), { 'io.kubernetes.cri.sandbox-memory': '12abc' }), /not an integer/);
  const capped = sizeSandbox(base(), { 'io.kubernetes.cri.sandbox-cpu-quota': '10000000', 'io.kubernetes.cri.sandbox-cpu-period': '100000' });
  assert.equal(capped.hypervisor.defaultVcpus, Math.min(8, cpus().length), 'capped at default_maxvcpus and the host');
  assert.throws(() => sizeSandbox(base(), { 'io.kubernetes.cri.sandbox-memory': String(2 ** 50) }), /MiB/);
});
