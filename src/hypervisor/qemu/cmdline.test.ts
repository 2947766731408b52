import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KataError } from '../../base/errors.js';
import type { VmConfig, VmDevice } from '../hypervisor.js';
import {
  TUNED_KERNEL_PARAMS,
  blockdevAddArgs,
  buildQemuArgs,
  deviceDriver,
  hotplugPortIds,
  kernelCmdline,
  optValue,
  passedFdPaths,
  qemuPaths,
} from './cmdline.js';

function cfg(over: Partial<VmConfig> = {}): VmConfig {
  return {
    sandboxId: 'sb1',
    vmDir: '/run/vc/vm/sb1',
    hypervisorPath: '/usr/bin/qemu-system-x86_64',
    kernelPath: '/k/vmlinux',
    kernelParams: [],
    machineType: 'microvm',
    accel: 'tcg',
    vcpus: 1,
    memoryMiB: 256,
    memoryBackend: { kind: 'anonymous' },
    agentChannel: { kind: 'virtio-serial', socketPath: '/run/vc/vm/sb1/agent.sock' },
    devices: [],
    ...over,
  };
}

/** Every value following `flag`. */
function values(args: string[], flag: string): string[] {
  const out: string[] = [];
  args.forEach((a, i) => {
    if (a === flag) out.push(args[i + 1]!);
  });
  return out;
}

function one(args: string[], flag: string): string {
  const v = values(args, flag);
  assert.equal(v.length, 1, `expected exactly one ${flag}, got ${JSON.stringify(v)}`);
  return v[0]!;
}

function invalidConfig(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KataError, String(e));
    assert.equal(e.kind, 'InvalidArgument');
    assert.equal(e.code, 'KATA_VM_CONFIG_INVALID');
    assert.match(e.message, re);
    return true;
  });
}

test('microvm defaults', () => {
  const a = buildQemuArgs(cfg());
  assert.equal(one(a, '-machine'), 'microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on');
  assert.equal(one(a, '-accel'), 'tcg');
  assert.deepEqual(values(a, '-cpu'), [], 'TCG uses the default CPU model (-cpu max is slower)');
  assert.equal(one(a, '-smp'), '1');
  assert.equal(one(a, '-m'), '256M');
  assert.deepEqual(values(a, '-object'), ['rng-random,id=rng0,filename=/dev/urandom'], 'only the entropy source');
  for (const f of ['-nodefaults', '-no-user-config', '-no-reboot']) assert.ok(a.includes(f), f);
  assert.equal(one(a, '-display'), 'none');
  assert.equal(one(a, '-global'), 'virtio-mmio.force-legacy=false');
  assert.equal(one(a, '-pidfile'), '/run/vc/vm/sb1/qemu.pid');
  assert.equal(one(a, '-mon'), 'chardev=qmp,mode=control');
  assert.equal(one(a, '-serial'), 'chardev:console');
  const chardevs = values(a, '-chardev');
  assert.ok(chardevs.includes('socket,id=qmp,path=/run/vc/vm/sb1/qmp.sock,server=on,wait=off'));
  assert.ok(chardevs.includes('file,id=console,path=/run/vc/vm/sb1/console.log'));
  assert.ok(chardevs.includes('socket,id=agent,path=/run/vc/vm/sb1/agent.sock,server=on,wait=off'));
  assert.equal(one(a, '-kernel'), '/k/vmlinux');
  assert.deepEqual(values(a, '-initrd'), []);
  assert.equal(one(a, '-name'), 'sandbox-sb1');
  assert.ok(!a.includes('-S') && !a.includes('-incoming'));
  const devices = values(a, '-device');
  assert.deepEqual(devices, [
    'virtio-serial-device,id=serial0',
    'virtserialport,chardev=agent,name=agent',
    'virtio-rng-device,id=rng,rng=rng0',
  ]);
});

test('q35 and pc use PCI device names and no virtio-mmio global', () => {
  for (const machineType of ['q35', 'pc'] as const) {
    const a = buildQemuArgs(
      cfg({
        machineType,
        imagePath: '/img/root.img',
        memoryBackend: { kind: 'memfd' },
        devices: [
          { kind: 'virtio-fs', id: 'fs0', socketPath: '/run/vfs.sock', tag: 'kataShared', queueSize: 1024 },
          { kind: '9p', id: 'p9', hostPath: '/srv/share', tag: 't9' },
          { kind: 'block', id: 'b1', path: '/img/vol.img', readonly: false },
          { kind: 'net-tap', id: 'eth0', ifname: 'tap0', mac: '02:AB:cd:00:00:01' },
        ],
      }),
    );
    assert.equal(one(a, '-machine'), `${machineType},memory-backend=mem`);
    assert.deepEqual(values(a, '-global'), []);
    const devs = values(a, '-device');
    assert.ok(devs.includes('virtio-serial-pci,id=serial0'));
    assert.ok(devs.includes('virtio-blk-pci,id=image,drive=drive-image'));
    assert.ok(devs.includes('vhost-user-fs-pci,id=fs0,chardev=char-fs0,tag=kataShared,queue-size=1024'));
    assert.ok(devs.includes('virtio-9p-pci,id=p9,fsdev=fsdev-p9,mount_tag=t9'));
    assert.ok(devs.includes('virtio-blk-pci,id=b1,drive=drive-b1'));
    assert.ok(devs.includes('virtio-net-pci,id=eth0,netdev=netdev-eth0,mac=02:ab:cd:00:00:01,romfile='));
    assert.equal(devs.filter((d) => d.startsWith('pcie-root-port')).length, machineType === 'q35' ? 2 : 0);
  }
});

test('microvm device names', () => {
  const a = buildQemuArgs(
    cfg({
      memoryBackend: { kind: 'memfd' },
      imagePath: '/img/root.img',
      devices: [
        { kind: 'virtio-fs', id: 'fs0', socketPath: '/run/vfs.sock', tag: 'kataShared' },
        { kind: '9p', id: 'p9', hostPath: '/srv/share', tag: 't9', readonly: true },
        { kind: 'block', id: 'b1', path: '/img/vol.img', readonly: true },
        { kind: 'net-tap', id: 'eth0', ifname: 'tap0', mac: '02:00:00:00:00:01' },
      ],
    }),
  );
  const devs = values(a, '-device');
  assert.deepEqual(devs, [
    'virtio-blk-device,id=image,drive=drive-image',
    'virtio-serial-device,id=serial0',
    'virtserialport,chardev=agent,name=agent',
    'virtio-rng-device,id=rng,rng=rng0',
    'vhost-user-fs-device,id=fs0,chardev=char-fs0,tag=kataShared',
    'virtio-9p-device,id=p9,fsdev=fsdev-p9,mount_tag=t9',
    'virtio-blk-device,id=b1,drive=drive-b1',
    'virtio-net-device,id=eth0,netdev=netdev-eth0,mac=02:00:00:00:00:01',
  ]);
  assert.ok(values(a, '-chardev').includes('socket,id=char-fs0,path=/run/vfs.sock'));
  assert.equal(one(a, '-fsdev'), 'local,id=fsdev-p9,path=/srv/share,security_model=none,readonly=on');
  assert.equal(one(a, '-netdev'), 'tap,id=netdev-eth0,ifname=tap0,script=no,downscript=no,vhost=off');
  assert.deepEqual(values(a, '-blockdev'), [
    'driver=raw,node-name=drive-image,read-only=on,file.driver=file,file.filename=/img/root.img,file.aio=threads',
    'driver=raw,node-name=drive-b1,read-only=on,file.driver=file,file.filename=/img/vol.img,file.aio=threads',
  ]);
  assert.equal(deviceDriver('microvm', 'vsock'), 'vhost-vsock-device');
  assert.equal(deviceDriver('q35', 'vsock'), 'vhost-vsock-pci');
});

test('the root image is the first block device', () => {
  const a = buildQemuArgs(
    cfg({ imagePath: '/img/root.img', devices: [{ kind: 'block', id: 'a0', path: '/img/a.img', readonly: false }] }),
  );
  const blk = values(a, '-device').filter((d) => d.startsWith('virtio-blk'));
  assert.deepEqual(blk, ['virtio-blk-device,id=image,drive=drive-image', 'virtio-blk-device,id=a0,drive=drive-a0']);
  assert.ok(values(a, '-blockdev')[0]!.includes('read-only=on'), 'root image is read-only');
  assert.ok(values(a, '-blockdev')[1]!.includes('read-only=off'));
});

/** The memory backend object (the entropy source is the other -object). */
function memObject(a: string[]): string {
  const objs = values(a, '-object').filter((v) => !v.startsWith('rng-random'));
  assert.equal(objs.length, 1, `expected one memory backend, got ${JSON.stringify(objs)}`);
  return objs[0]!;
}

test('memory backends', () => {
  const memfd = buildQemuArgs(cfg({ memoryBackend: { kind: 'memfd' }, memoryMiB: 512 }));
  assert.equal(memObject(memfd), 'memory-backend-memfd,id=mem,size=512M,share=on');
  assert.equal(one(memfd, '-m'), '512M');
  assert.match(one(memfd, '-machine'), /,memory-backend=mem$/);

  const tmpl = buildQemuArgs(cfg({ memoryBackend: { kind: 'file', path: '/dev/shm/tmpl', share: true } }));
  assert.equal(memObject(tmpl), 'memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/tmpl,share=on');
  const clone = buildQemuArgs(
    cfg({ memoryBackend: { kind: 'file', path: '/dev/shm/tmpl', share: false }, incomingStatePath: '/t/state' }),
  );
  assert.equal(memObject(clone), 'memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/tmpl,share=off');
});

test('kernel command line: tuned defaults, tsc_early_khz, panic=-1, then user params', () => {
  const a = buildQemuArgs(cfg({ kernelParams: ['kata.floor=1', 'agent.log=debug'] }), { tscKhz: 2096005 });
  const append = one(a, '-append').split(' ');
  assert.deepEqual(append.slice(0, TUNED_KERNEL_PARAMS.length), [...TUNED_KERNEL_PARAMS]);
  assert.deepEqual(append.slice(TUNED_KERNEL_PARAMS.length), ['tsc_early_khz=2096005', 'panic=-1', 'kata.floor=1', 'agent.log=debug']);
  assert.ok(append.includes('console=ttyS0'));
  assert.ok(!kernelCmdline({ kernelParams: [] }).includes('tsc_early_khz'));
  assert.ok(!kernelCmdline({ kernelParams: [] }, { tscKhz: 0 }).includes('tsc_early_khz'));
});

test('initrd is passed when set', () => {
  const a = buildQemuArgs(cfg({ initrdPath: '/k/initrd.img' }));
  assert.equal(one(a, '-initrd'), '/k/initrd.img');
});

test('no kernel: no -kernel/-append (firmware only, used by tests)', () => {
  const a = buildQemuArgs(cfg({ kernelPath: '' }));
  assert.deepEqual(values(a, '-kernel'), []);
  assert.deepEqual(values(a, '-append'), []);
  invalidConfig(() => buildQemuArgs(cfg({ kernelPath: '', initrdPath: '/i' })), /need a kernelPath/);
});

test('accelerators and TCG threading', () => {
  const kvm = buildQemuArgs(cfg({ accel: 'kvm', vcpus: 2 }));
  assert.equal(one(kvm, '-accel'), 'kvm');
  assert.equal(one(kvm, '-cpu'), 'host,pmu=off');
  assert.equal(one(kvm, '-smp'), '2');
  assert.equal(one(buildQemuArgs(cfg(), { tcgThread: 'single' }), '-accel'), 'tcg,thread=single');
  assert.equal(one(buildQemuArgs(cfg(), { tcgThread: 'multi' }), '-accel'), 'tcg,thread=multi');
  invalidConfig(() => buildQemuArgs(cfg({ accel: 'kvm' }), { tcgThread: 'single' }), /tcgThread/);
});

test('vsock agent channel', () => {
  const a = buildQemuArgs(cfg({ agentChannel: { kind: 'vsock', guestCid: 3, port: 1024 } }));
  assert.deepEqual(values(a, '-device'), ['vhost-vsock-device,id=vsock0,guest-cid=3', 'virtio-rng-device,id=rng,rng=rng0']);
  assert.ok(!values(a, '-chardev').some((c) => c.includes('id=agent')));
  const q = buildQemuArgs(cfg({ machineType: 'q35', agentChannel: { kind: 'vsock', guestCid: 42, port: 1024 } }));
  assert.ok(values(q, '-device').includes('vhost-vsock-pci,id=vsock0,guest-cid=42'));
  invalidConfig(() => buildQemuArgs(cfg({ agentChannel: { kind: 'vsock', guestCid: 2, port: 1 } })), /guestCid/);
});

test('clone: -S -incoming defer', () => {
  const a = buildQemuArgs(cfg({ incomingStatePath: '/run/vc/vm/template/state' }));
  const i = a.indexOf('-incoming');
  assert.equal(a[i + 1], 'defer');
  assert.ok(a.includes('-S'), 'a clone stays paused until resume()');
});

test('q35 hotplug ports', () => {
  assert.deepEqual(hotplugPortIds({ machineType: 'q35' }), ['rp0', 'rp1']);
  assert.deepEqual(hotplugPortIds({ machineType: 'q35' }, { hotplugPorts: 3 }), ['rp0', 'rp1', 'rp2']);
  assert.deepEqual(hotplugPortIds({ machineType: 'pc' }), []);
  assert.deepEqual(hotplugPortIds({ machineType: 'microvm' }), []);
  const a = buildQemuArgs(cfg({ machineType: 'q35' }), { hotplugPorts: 1 });
  assert.deepEqual(values(a, '-device').filter((d) => d.startsWith('pcie')), ['pcie-root-port,id=rp0,bus=pcie.0,chassis=1']);
});

test('commas in paths and ids are escaped for QEMU option syntax', () => {
  assert.equal(optValue('/a,b,,c'), '/a,,b,,,,c');
  const a = buildQemuArgs(
    cfg({
      sandboxId: 'x,y',
      vmDir: '/run/a,b',
      imagePath: '/img/r,o.img',
      agentChannel: { kind: 'virtio-serial', socketPath: '/run/a,b/agent.sock' },
    }),
  );
  assert.equal(one(a, '-name'), 'sandbox-x,,y');
  assert.ok(values(a, '-chardev').includes('socket,id=qmp,path=/run/a,,b/qmp.sock,server=on,wait=off'));
  assert.ok(values(a, '-blockdev')[0]!.includes('file.filename=/img/r,,o.img,'));
  assert.equal(one(a, '-pidfile'), '/run/a,b/qemu.pid', '-pidfile is not an option list');
});

test('extra args come last', () => {
  const a = buildQemuArgs(cfg({ extraArgs: ['-trace', 'virtio*'] }));
  assert.deepEqual(a.slice(-2), ['-trace', 'virtio*']);
});

test('qemuPaths', () => {
  assert.deepEqual(qemuPaths('/v'), {
    qmpSocket: '/v/qmp.sock',
    consoleLog: '/v/console.log',
    pidFile: '/v/qemu.pid',
    qemuLog: '/v/qemu.log',
  });
});

test('blockdevAddArgs mirrors the cold-plug blockdev', () => {
  assert.deepEqual(blockdevAddArgs({ kind: 'block', id: 'v1', path: '/x.img', readonly: true }), {
    driver: 'raw',
    'node-name': 'drive-v1',
    'read-only': true,
    file: { driver: 'file', filename: '/x.img', aio: 'threads' },
  });
});

test('rejects impossible configs', () => {
  const fs: VmDevice = { kind: 'virtio-fs', id: 'fs0', socketPath: '/run/v.sock', tag: 'kataShared' };
  invalidConfig(() => buildQemuArgs(cfg({ devices: [fs] })), /virtio-fs needs shared guest memory/);
  invalidConfig(
    () => buildQemuArgs(cfg({ devices: [fs], memoryBackend: { kind: 'file', path: '/dev/shm/t', share: false } })),
    /virtio-fs needs shared guest memory/,
  );
  invalidConfig(() => buildQemuArgs(cfg({ vcpus: 0 })), /vcpus/);
  invalidConfig(() => buildQemuArgs(cfg({ vcpus: 1.5 })), /vcpus/);
  invalidConfig(() => buildQemuArgs(cfg({ vcpus: 256 })), /vcpus/);
  invalidConfig(() => buildQemuArgs(cfg({ memoryMiB: 0 })), /memoryMiB/);
  invalidConfig(() => buildQemuArgs(cfg({ vmDir: 'relative/dir' })), /vmDir/);
  invalidConfig(() => buildQemuArgs(cfg({ kernelPath: 'vmlinux' })), /kernelPath/);
  invalidConfig(() => buildQemuArgs(cfg({ sandboxId: '' })), /sandboxId/);
  invalidConfig(() => buildQemuArgs(cfg({ machineType: 'virt' as 'pc' })), /machineType/);
  invalidConfig(() => buildQemuArgs(cfg({ accel: 'hvf' as 'kvm' })), /accel/);
  invalidConfig(() => buildQemuArgs(cfg({ kernelParams: ['a\nb'] })), /kernel parameter/);
  invalidConfig(() => buildQemuArgs(cfg({ incomingStatePath: 'state' })), /incomingStatePath/);
  invalidConfig(() => buildQemuArgs(cfg({ memoryBackend: { kind: 'file', path: '', share: true } })), /memoryBackend.path/);
  invalidConfig(() => buildQemuArgs(cfg({ agentChannel: { kind: 'virtio-serial', socketPath: 'a.sock' } })), /socketPath/);
  invalidConfig(() => buildQemuArgs(cfg(), { tscKhz: -5 }), /tscKhz/);

  const blk = (id: string): VmDevice => ({ kind: 'block', id, path: '/a.img', readonly: true });
  invalidConfig(() => buildQemuArgs(cfg({ devices: [blk('d1'), blk('d1')] })), /duplicate device id d1/);
  for (const id of ['image', 'agent', 'serial0', 'rp0', '0abc', 'a b', 'a,b', '']) {
    invalidConfig(() => buildQemuArgs(cfg({ devices: [blk(id)] })), /device id/);
  }
  invalidConfig(() => buildQemuArgs(cfg({ devices: [{ kind: 'block', id: 'q', path: '/a', readonly: true, format: 'qcow2' as 'raw' }] })), /raw/);
  invalidConfig(
    () => buildQemuArgs(cfg({ memoryBackend: { kind: 'memfd' }, devices: [{ ...fs, tag: 'x'.repeat(37) } as VmDevice] })),
    /tag/,
  );
  invalidConfig(
    () => buildQemuArgs(cfg({ memoryBackend: { kind: 'memfd' }, devices: [{ ...fs, queueSize: 1000 } as VmDevice] })),
    /queueSize/,
  );
  const tap = (over: Partial<Extract<VmDevice, { kind: 'net-tap' }>>): VmDevice => ({
    kind: 'net-tap',
    id: 'n0',
    ifname: 'tap0',
    mac: '02:00:00:00:00:01',
    ...over,
  });
  invalidConfig(() => buildQemuArgs(cfg({ devices: [tap({ mac: '02:00:00:00:00' })] })), /bad MAC/);
  invalidConfig(() => buildQemuArgs(cfg({ devices: [tap({ mac: '01:00:00:00:00:01' })] })), /multicast/);
  invalidConfig(() => buildQemuArgs(cfg({ devices: [tap({ ifname: 'a-very-long-tap-name' })] })), /tap name/);
  invalidConfig(() => buildQemuArgs(cfg({ devices: [tap({ netnsPath: '/run/netns/x' })] })), /QEMU runs in the host netns/);
  // Same netns as QEMU: fine.
  buildQemuArgs(cfg({ netnsPath: '/run/netns/x', devices: [tap({ netnsPath: '/run/netns/x' })] }));
});

test('taps by fd: the driver passes them as fds 3, 4, ... in device order', () => {
  const a = buildQemuArgs(
    cfg({
      devices: [
        { kind: 'net-tap', id: 'n0', fdPath: '/run/t/tap7', mac: '02:00:00:00:00:07' },
        { kind: 'net-tap', id: 'n1', ifname: 'tap1_kata', mac: '02:00:00:00:00:08' },
        { kind: 'net-tap', id: 'n2', fdPath: '/run/t/tap9', mac: '02:00:00:00:00:09' },
      ],
    }),
  );
  assert.deepEqual(values(a, '-netdev'), [
    'tap,id=netdev-n0,fd=3,vhost=off',
    'tap,id=netdev-n1,ifname=tap1_kata,script=no,downscript=no,vhost=off',
    'tap,id=netdev-n2,fd=4,vhost=off',
  ]);
  assert.deepEqual(passedFdPaths({ devices: cfg({ devices: [{ kind: 'net-tap', id: 'n0', fdPath: '/x', mac: '02:00:00:00:00:01' }] }).devices }), ['/x']);
  invalidConfig(() => buildQemuArgs(cfg({ devices: [{ kind: 'net-tap', id: 'n', mac: '02:00:00:00:00:01' }] })), /exactly one of ifname and fdPath/);
});
