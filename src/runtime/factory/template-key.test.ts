import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { silentLogger } from '../../base/logger.js';
import type { VmConfig, VmDevice } from '../../hypervisor/hypervisor.js';
import { Virtio9p } from '../../resource/sharefs/virtio-9p.js';
import { parseConfig } from '../config/load.js';
import type { RuntimeConfig } from '../config/types.js';
import { Sandbox } from '../sandbox.js';
import { describeMismatch, templateIneligibility, templateKey, templateNicMac } from './template-key.js';
import { sandboxVmConfigFor } from './vm-factory.js';

const dir = mkdtempSync(join(tmpdir(), 'kata-ts-tplkey-'));
const asset = (name: string, content: string) => {
  const p = join(dir, name);
  writeFileSync(p, content);
  return p;
};
const qemu = asset('qemu', 'qemu binary');
const kernel = asset('vmlinux', 'kernel');
const initrd = asset('initrd.img', 'initrd');
const image = asset('rootfs.img', 'image');
writeFileSync(
  join(dir, 'kata-ts-guest.json'),
  JSON.stringify({ kernel: { file: 'vmlinux', sha256: 'ab'.repeat(32), size: 6 }, image: { file: 'rootfs.img', sha256: 'cd'.repeat(32), size: 999 } }),
);

after(() => rmSync(dir, { recursive: true, force: true }));

function cfg(over: Partial<VmConfig> = {}): VmConfig {
  return {
    sandboxId: 'sb1',
    vmDir: '/run/vc/vm/sb1',
    hypervisorPath: qemu,
    kernelPath: kernel,
    initrdPath: initrd,
    imagePath: image,
    kernelParams: ['cgroup_no_v1=all'],
    machineType: 'microvm',
    accel: 'tcg',
    vcpus: 1,
    memoryMiB: 512,
    memoryBackend: { kind: 'anonymous' },
    agentChannel: { kind: 'virtio-serial', socketPath: '/run/vc/vm/sb1/agent.sock' },
    devices: [{ kind: '9p', id: 'kata-shared-fs', hostPath: '/run/kata-containers/shared/sandboxes/sb1/shared', tag: 'kataShared', readonly: false }],
    ...over,
  };
}

function runtimeConfig(extra = ''): RuntimeConfig {
  return parseConfig(
    `[hypervisor.qemu]\npath = "${qemu}"\nkernel = "${kernel}"\ninitrd = "${initrd}"\nimage = "${image}"\n` +
      `shared_fs = "virtio-9p"\nmachine_type = "microvm"\ndefault_memory = 512\nkernel_params = "cgroup_no_v1=all"\n${extra}`,
    join(dir, 'configuration.toml'),
  );
}

describe('template key', () => {
  test('per-sandbox backends (ids, sockets, 9p export dir, RAM backend) do not change the key', () => {
    const a = templateKey(cfg()).key;
    const b = templateKey(
      cfg({
        sandboxId: 'other',
        vmDir: '/run/vc/vm/other',
        agentChannel: { kind: 'virtio-serial', socketPath: '/run/vc/vm/other/agent.sock' },
        devices: [{ kind: '9p', id: 'kata-shared-fs', hostPath: '/elsewhere/shared', tag: 'kataShared', readonly: false }],
        memoryBackend: { kind: 'file', path: '/proc/1/fd/9', share: false },
        netnsPath: '/var/run/netns/x',
      }),
    ).key;
    assert.equal(a, b);
    assert.match(a, /^[0-9a-f]{64}$/);
  });

  test('everything the guest saw at boot changes the key', () => {
    const base = templateKey(cfg()).key;
    const variants: Partial<VmConfig>[] = [
      { memoryMiB: 384 },
      { vcpus: 2 },
      { machineType: 'q35' },
      { kernelParams: ['cgroup_no_v1=all', 'agent.log=debug'] },
      { devices: [{ kind: '9p', id: 'kata-shared-fs', hostPath: '/x', tag: 'otherTag', readonly: false }] },
      { devices: [] },
      { initrdPath: undefined },
      { extraArgs: ['-device', 'virtio-balloon-device'] },
    ];
    for (const v of variants) assert.notEqual(templateKey(cfg(v)).key, base, JSON.stringify(v));
  });

  test('a rebuilt kernel (new mtime) or QEMU changes the key, and status names what changed', () => {
    const before = templateKey(cfg());
    utimesSync(kernel, new Date(), new Date(Date.now() + 5000));
    const afterKernel = templateKey(cfg());
    assert.notEqual(afterKernel.key, before.key);
    assert.notEqual(afterKernel.family, before.family, 'other guest assets: another family');
    assert.deepEqual(describeMismatch(before.inputs, afterKernel.inputs), ['kernel file changed']);
    const more = templateKey(cfg({ memoryMiB: 384 }));
    assert.ok(describeMismatch(afterKernel.inputs, more.inputs).some((d) => d.includes('384M')));
  });

  test('the guest manifest hash is used when it describes the same file', () => {
    const { inputs } = templateKey(cfg());
    assert.equal(inputs.files.kernel?.sha256, 'ab'.repeat(32));
    // The manifest's image entry has another size: not trusted.
    assert.equal(inputs.files.image?.sha256, undefined);
  });

  test('virtio-fs and block devices are not template material; 9p and NICs are', () => {
    assert.equal(templateIneligibility(cfg()), undefined);
    const fs: VmDevice = { kind: 'virtio-fs', id: 'kata-shared-fs', socketPath: '/s', tag: 'kataShared' };
    assert.match(templateIneligibility(cfg({ devices: [fs], memoryBackend: { kind: 'memfd' } }))!, /virtio-fs.*virtio-9p/);
    assert.equal(templateIneligibility(cfg({ devices: [{ kind: 'net-tap', id: 'n0', ifname: 'tap0', mac: '02:00:00:00:00:01' }] })), undefined);
    assert.match(templateIneligibility(cfg({ devices: [{ kind: 'block', id: 'b0', path: '/b', readonly: true }] }))!, /block/);
    assert.match(templateIneligibility(cfg({ incomingStatePath: '/s' }))!, /restores/);
  });

  test('a NIC: its MAC, tap, fd and netns do not change the key; the NIC count does, but not the family', () => {
    const share = cfg().devices[0]!;
    const withNic = (nic: VmDevice, netnsPath?: string) => templateKey(cfg({ devices: [share, nic], netnsPath }));
    const tcfilter = withNic({ kind: 'net-tap', id: 'network-0', ifname: 'tap0_kata', mac: '0a:58:0a:58:00:05', netnsPath: '/var/run/netns/a' }, '/var/run/netns/a');
    const macvtap = withNic({ kind: 'net-tap', id: 'network-0', fdPath: '/tmp/x/net/tap7', mac: '0a:58:0a:58:00:09', netnsPath: '/var/run/netns/b' }, '/var/run/netns/b');
    assert.equal(tcfilter.key, macvtap.key);
    const none = templateKey(cfg());
    assert.notEqual(tcfilter.key, none.key);
    assert.equal(tcfilter.family, none.family);
    assert.equal(templateKey(cfg({ memoryMiB: 384 })).family, none.family, 'another shape, same family');
    const mac = templateNicMac('network-0');
    assert.match(mac, /^02:6b(:[0-9a-f]{2}){4}$/);
    assert.equal(templateNicMac('network-0'), mac, 'deterministic');
    assert.notEqual(templateNicMac('network-1'), mac);
  });

  test("factory init computes the same key as a sandbox start (Sandbox.create's VM config)", async () => {
    const root = mkdtempSync(join(tmpdir(), 'kata-ts-tplkey-sb-'));
    try {
      for (const extra of ['', '[agent.kata]\nenable_debug = true\n']) {
        const config = runtimeConfig(extra);
        let seen: VmConfig | undefined;
        const paths = { vmRoot: join(root, 'vm'), sandboxRoot: join(root, 'sbs'), sharedRoot: join(root, 'shared') };
        await assert.rejects(
          Sandbox.create(
            { sandboxId: 'keycheck', config, paths },
            {
              vmSource: {
                start: async (vmConfig) => {
                  seen = vmConfig;
                  throw new Error('stop here');
                },
              },
              // The real 9p share's device, without its host directory layout (no mounts in a unit test).
              createShareFs: ({ sandboxId }, log) => {
                const share = new Virtio9p({ sandboxId, sharedRoot: paths.sharedRoot }, log);
                return Object.assign(share, {
                  prepare: async () => ({ kind: '9p', id: 'kata-shared-fs', hostPath: join(share.sandboxDir, 'shared'), tag: 'kataShared', readonly: false }) as VmDevice,
                  cleanup: async () => undefined,
                });
              },
              resolveAccel: async () => 'tcg',
            },
            silentLogger,
          ),
          /stop here/,
        );
        assert.ok(seen);
        assert.equal(templateKey(seen).key, templateKey(sandboxVmConfigFor(config, 'tcg')).key, `config extra: ${extra}`);
        // A pod with one interface: the sandbox adds its tap (in the pod netns, with the pod's MAC).
        const netns = '/var/run/netns/pod';
        const nic: VmDevice = { kind: 'net-tap', id: 'network-0', ifname: 'tap0_kata', mac: '0a:58:0a:58:00:05', netnsPath: netns };
        assert.equal(
          templateKey({ ...seen, devices: [...seen.devices, nic], netnsPath: netns }).key,
          templateKey(sandboxVmConfigFor(config, 'tcg', 1)).key,
        );
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
