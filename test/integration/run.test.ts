import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { defaultSpec, makeBundle, type Bundle } from '../helpers/bundle.js';
import { writeTestConfig } from '../helpers/config.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';
import { runCli } from '../helpers/run-cli.js';

/**
 * `kata-runtime run` end to end: real QEMU (TCG), the real guest kernel and agent, crun in the guest.
 * Every test checks that nothing was left behind on the host.
 */

/** This test's sandbox ids all carry its pid. */
const MINE = new RegExp(`/[tk]${process.pid}`);
const hostKernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();

async function runInVm(
  args: string[],
  opts: { config?: Record<string, string>; input?: string; terminal?: boolean; onStdout?: (out: string, child: ChildProcess) => void } = {},
) {
  const bundle = await makeBundle(defaultSpec(args, { terminal: opts.terminal }));
  const cfg = writeTestConfig(opts.config);
  try {
    const res = await runCli(['--config', cfg.path, 'run', '--bundle', bundle.dir, `t${process.pid}x${Date.now()}`], {
      input: opts.input,
      onStdout: opts.onStdout,
    });
    return { ...res, bundle };
  } finally {
    cfg.remove();
  }
}

describe('kata-runtime run', () => {
  let snap: HostSnapshot;
  const bundles: Bundle[] = [];
  before(() => {
    snap = snapshotHost(MINE);
  });
  after(async () => {
    for (const b of bundles) await b.remove();
    const leaks = await leaksSince(snap, MINE);
    assert.deepEqual(leaks, { processes: [], mounts: [], entries: [] });
  });

  test('uname -r prints the guest kernel, not the host one; nproc and MemTotal match the VM', async () => {
    const r = await runInVm(['sh', '-c', 'uname -r; nproc; head -n 1 /proc/meminfo'], {
      config: { default_vcpus: '2', default_memory: '384' },
    });
    bundles.push(r.bundle);
    assert.equal(r.code, 0, r.stderr);
    const [kernel, nproc, meminfo] = r.stdout.trim().split('\n');
    assert.notEqual(kernel, hostKernel);
    assert.match(kernel!, /^6\.1\.\d+.*amd64$/);
    assert.equal(nproc, '2');
    const kb = Number(/MemTotal:\s+(\d+) kB/.exec(meminfo!)?.[1]);
    assert.ok(kb > 300 * 1024 && kb <= 384 * 1024, `MemTotal ${kb} kB for a 384 MiB VM`);
  });

  test('a kata-runtime run killed with SIGKILL leaves its VM; the next run reaps it (VM, mounts, state)', async () => {
    const vmsOfThisFile = () =>
      execFileSync('ps', ['-eo', 'args='], { encoding: 'utf8' })
        .split('\n')
        .flatMap((l) => (l.includes('qemu-system') ? [new RegExp(`/run/vc/vm/(t${process.pid}x\\d+)/`).exec(l)?.[1]] : []))
        .filter((x): x is string => x !== undefined);
    const before = new Set(vmsOfThisFile());
    const killed = await runInVm(['sh', '-c', 'echo up; exec sleep 600'], {
      onStdout: (out, child) => {
        if (out.includes('up')) child.kill('SIGKILL');
      },
    });
    bundles.push(killed.bundle);
    assert.equal(killed.code, null, 'killed');
    const orphans = vmsOfThisFile().filter((id) => !before.has(id));
    assert.equal(orphans.length, 1, 'SIGKILL cannot be caught: the VM outlives kata-runtime');
    const id = orphans[0]!;
    const next = await runInVm(['true']);
    bundles.push(next.bundle);
    assert.equal(next.code, 0, next.stderr);
    assert.ok(!vmsOfThisFile().includes(id), 'the next run reaped the VM');
    for (const d of [`/run/vc/vm/${id}`, `/run/vc/sbs/${id}`, `/run/kata-containers/shared/sandboxes/${id}`]) {
      assert.equal(execFileSync('sh', ['-c', `test -e ${d} && echo yes || echo no`], { encoding: 'utf8' }).trim(), 'no', `${d} removed`);
    }
  });

  test('exit status propagates, and death by signal N gives 128+N', async () => {
    const r7 = await runInVm(['sh', '-c', 'exit 7']);
    bundles.push(r7.bundle);
    assert.equal(r7.code, 7, r7.stderr);
    // Without a PID namespace of its own the shell is not an init process, so SIGKILL to itself works.
    const spec = defaultSpec(['sh', '-c', 'kill -9 $$']);
    spec.linux!.namespaces = spec.linux!.namespaces!.filter((n) => n.type !== 'pid');
    const bk = await makeBundle(spec);
    bundles.push(bk);
    const cfg = writeTestConfig();
    const rk = await runCli(['--config', cfg.path, 'run', '--bundle', bk.dir, `k${process.pid}`]);
    cfg.remove();
    assert.equal(rk.code, 137, rk.stderr);
  });

  test('stdin is piped through to the container', async () => {
    const r = await runInVm(['head', '-n', '1'], { input: 'hi\nthere\n' });
    bundles.push(r.bundle);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hi\n');
  });

  test('SIGTERM sent to kata-runtime reaches the container process', async () => {
    let sent = false;
    const r = await runInVm(['sh', '-c', 'trap "echo got-term; exit 3" TERM; echo ready; while true; do sleep 0.1; done'], {
      onStdout: (out, child) => {
        if (!sent && out.includes('ready')) {
          sent = true;
          child.kill('SIGTERM');
        }
      },
    });
    bundles.push(r.bundle);
    assert.ok(sent, 'container never printed ready');
    assert.match(r.stdout, /got-term/);
    assert.equal(r.code, 3, r.stderr);
  });

  for (const sharedFs of ['virtio-fs', 'virtio-9p']) {
    test(`files the container writes appear in the host rootfs (${sharedFs})`, async () => {
      const r = await runInVm(['sh', '-c', 'echo written-in-guest > /from-guest; cat /from-host'], {
        config: { shared_fs: `"${sharedFs}"` },
      });
      bundles.push(r.bundle);
      assert.equal(r.code, 1, 'cat of a missing file fails');
      assert.equal(await readFile(`${r.bundle.rootfs}/from-guest`, 'utf8'), 'written-in-guest\n');
      await writeFile(`${r.bundle.rootfs}/from-host`, 'x');
    });
  }
});

describe('kata-runtime run: bad input fails clearly and leaves nothing', () => {
  let snap: HostSnapshot;
  before(() => {
    snap = snapshotHost(MINE);
  });
  after(async () => {
    assert.deepEqual(await leaksSince(snap, MINE), { processes: [], mounts: [], entries: [] });
  });

  test('a missing kernel is named', async () => {
    const r = await runInVm(['true'], { config: { kernel: '"/usr/share/kata-containers/no-such-vmlinux"' } });
    await r.bundle.remove();
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no-such-vmlinux/);
  });

  test('an invalid configuration.toml names the file and the key', async () => {
    const r = await runInVm(['true'], { config: { default_memory: '"lots"' } });
    await r.bundle.remove();
    assert.equal(r.code, 2);
    assert.match(r.stderr, /configuration\.toml.*default_memory/);
  });

  test('an invalid config.json names the field', async () => {
    const bundle = await makeBundle(defaultSpec(['true']));
    await writeFile(`${bundle.dir}/config.json`, JSON.stringify({ ociVersion: '1.0.2', root: { path: 'rootfs' }, process: { args: 'true' } }));
    const cfg = writeTestConfig();
    const r = await runCli(['--config', cfg.path, 'run', '--bundle', bundle.dir, `t${process.pid}badspec`]);
    cfg.remove();
    await bundle.remove();
    assert.equal(r.code, 2);
    assert.match(r.stderr, /process\.args/);
  });

  test('QEMU dying during boot reports the last guest console lines', async () => {
    // A garbage initrd: the kernel panics, QEMU exits (panic=-1, -no-reboot).
    const bad = '/usr/share/kata-containers/test-garbage-initrd.img';
    await writeFile(bad, 'this is not an initramfs');
    try {
      const r = await runInVm(['true'], { config: { initrd: `"${bad}"` } });
      await r.bundle.remove();
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /VM exited during boot|exited/);
      assert.match(r.stderr, /last guest console lines/);
      assert.match(r.stderr, /KATA_INIT_ERROR|Kernel panic|panic/i);
    } finally {
      await import('node:fs/promises').then((fs) => fs.rm(bad, { force: true }));
    }
  });

  test('an agent that does not answer within dial_timeout fails with that reason', async () => {
    const r = await runInVm(['true'], { config: { dial_timeout: '1' } });
    await r.bundle.remove();
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /dial_timeout/);
  });
});
