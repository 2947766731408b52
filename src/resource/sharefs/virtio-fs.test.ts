import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, lstat, mkdir, mkdtemp, readFile, readdir, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { sleep } from '../../base/deadline.js';
import { silentLogger } from '../../base/logger.js';
import { bindMount, remountReadOnly, unmount, unmountTree } from '../../platform/mount.js';
import { listMounts, mountsUnder } from '../../platform/mountinfo.js';
import { DEFAULT_VIRTIOFSD, VirtioFs, virtiofsdArgs } from './virtio-fs.js';

const isRoot = process.getuid?.() === 0;
const QEMU = '/usr/bin/qemu-system-x86_64';
const exists = (p: string) => access(p).then(() => true, () => false);
const haveDaemon = await exists(DEFAULT_VIRTIOFSD);
const haveQemu = await exists(QEMU);

/** Live (non-zombie) processes whose command line mentions `marker`. */
async function processesMentioning(marker: string): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8');
      if (!cmdline.includes(marker)) continue;
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state !== 'Z' && state !== 'X') found.push(Number(name));
    } catch {
      // raced with exit
    }
  }
  return found;
}

async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(rest[1]) === pid) out.push(Number(name));
  }
  return out;
}

/** Temp root; afterwards no mount under it and no process mentioning it may be left. */
async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await realpath(await mkdtemp(path.join(tmpdir(), 'kata-vfs-')));
  let leftMounts: string[];
  let leftProcs: number[];
  try {
    await fn(root);
    leftMounts = (await mountsUnder(root)).map((m) => m.mountPoint);
    leftProcs = await processesMentioning(root);
  } finally {
    for (const pid of await processesMentioning(root)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await unmountTree(root).catch(() => undefined);
    const still = await mountsUnder(root);
    if (still.length === 0) await rm(root, { recursive: true, force: true });
    assert.deepEqual(still, [], 'mounts left after forced cleanup');
  }
  assert.deepEqual(leftMounts, [], 'test left mounts behind');
  assert.deepEqual(leftProcs, [], 'test left processes behind');
}

function makeVfs(root: string, extra: Partial<ConstructorParameters<typeof VirtioFs>[0]> = {}): VirtioFs {
  return new VirtioFs({ sandboxId: 'sb1', vmDir: path.join(root, 'vm', 'sb1'), sharedRoot: path.join(root, 'sandboxes'), ...extra }, silentLogger);
}

async function assertAllGone(root: string, fs: VirtioFs): Promise<void> {
  assert.deepEqual(await mountsUnder(root), []);
  assert.deepEqual(await processesMentioning(root), []);
  assert.deepEqual(fs.pids(), []);
  await assert.rejects(lstat(fs.sandboxDir), { code: 'ENOENT' });
  await assert.rejects(lstat(fs.socketPath), { code: 'ENOENT' });
}

test('virtiofsd arguments', () => {
  assert.deepEqual(virtiofsdArgs({ socketPath: '/run/vc/vm/s/vhost-fs.sock', sourceDir: '/x/shared', cache: 'always', extraArgs: ['--thread-pool-size=1'] }), [
    '--socket-path=/run/vc/vm/s/vhost-fs.sock',
    '-o',
    'source=/x/shared',
    '-o',
    'cache=always',
    '--thread-pool-size=1',
  ]);
  assert.ok(virtiofsdArgs({ socketPath: '/s', sourceDir: '/d', cache: 'never', extraArgs: [] }).includes('cache=none'));
  assert.throws(() => virtiofsdArgs({ socketPath: '/s', sourceDir: '/d', cache: 'metadata', extraArgs: [] }), { kind: 'InvalidArgument' });
  assert.throws(() => virtiofsdArgs({ socketPath: '/s', sourceDir: '/d', cache: 'auto', extraArgs: ['-o', 'source=/'] }), { kind: 'InvalidArgument' });
  assert.throws(() => virtiofsdArgs({ socketPath: '/s', sourceDir: '/d', cache: 'auto', extraArgs: ['--socket-path=/x'] }), { kind: 'InvalidArgument' });
  assert.throws(() => new VirtioFs({ sandboxId: 's', vmDir: 'rel' }, silentLogger), { kind: 'InvalidArgument' });
  assert.throws(() => new VirtioFs({ sandboxId: 's', vmDir: '/v', cache: 'bogus' }, silentLogger), { kind: 'InvalidArgument' });
});

describe('virtiofsd (root)', { skip: (!isRoot && 'needs root') || (!haveDaemon && `no ${DEFAULT_VIRTIOFSD}`) }, () => {
  test('starts, reports its pid, stops on cleanup', async () => {
    await withRoot(async (root) => {
      const fs = makeVfs(root);
      try {
        const dev = await fs.prepare();
        assert.deepEqual(dev, { kind: 'virtio-fs', id: 'kata-shared-fs', socketPath: path.join(root, 'vm', 'sb1', 'vhost-fs.sock'), tag: 'kataShared', queueSize: 1024 });
        assert.ok((await lstat(fs.socketPath)).isSocket());
        const [pid] = fs.pids();
        assert.ok(pid && pid > 1);
        const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
        assert.ok(cmdline.includes(`source=${path.join(fs.sandboxDir, 'shared')}`));
        assert.ok(cmdline.includes('cache=always'));
        assert.equal((await readFile(fs.pidPath, 'utf8')).trim(), String(pid));
        assert.match(await readFile(fs.logPath, 'utf8'), /Waiting for vhost-user socket connection/);
      } finally {
        await fs.cleanup();
      }
      await assertAllGone(root, fs);
      await fs.cleanup(); // idempotent
    });
  });

  test('a missing daemon fails prepare and leaves nothing', async () => {
    await withRoot(async (root) => {
      const fs = makeVfs(root, { daemonPath: path.join(root, 'no-such-virtiofsd') });
      await assert.rejects(fs.prepare(), { kind: 'Unavailable', code: 'KATA_VIRTIOFSD_START' });
      await assertAllGone(root, fs);
    });
  });

  test('a daemon that dies early: the error carries its stderr', async () => {
    await withRoot(async (root) => {
      const fs = makeVfs(root, { extraArgs: ['--no-such-option'] });
      await assert.rejects(fs.prepare(), (err: Error & { kind?: string; code?: string }) => {
        assert.equal(err.kind, 'Unavailable');
        assert.equal(err.code, 'KATA_VIRTIOFSD_EXITED');
        assert.match(err.message, /exited early/);
        assert.match(err.message, /no-such-option/);
        return true;
      });
      await assertAllGone(root, fs);
    });
  });

  test('a daemon that never listens times out and is killed', async () => {
    await withRoot(async (root) => {
      const fake = path.join(root, 'fake-virtiofsd');
      // Ignores SIGTERM so the SIGKILL path runs too.
      await writeFile(fake, `#!/bin/sh\ntrap '' TERM\necho fake daemon starting >&2\nsleep 30 & wait\n`);
      await chmod(fake, 0o755);
      const fs = makeVfs(root, { daemonPath: fake, startTimeoutMs: 300, stopTimeoutMs: 300 });
      await assert.rejects(fs.prepare(), (err: Error & { kind?: string }) => {
        assert.equal(err.kind, 'DeadlineExceeded');
        assert.match(err.message, /fake daemon starting/);
        return true;
      });
      await assertAllGone(root, fs);
    });
  });

  test('an aborted prepare leaves nothing', async () => {
    await withRoot(async (root) => {
      const fake = path.join(root, 'fake-virtiofsd');
      await writeFile(fake, '#!/bin/sh\nexec sleep 30\n');
      await chmod(fake, 0o755);
      const fs = makeVfs(root, { daemonPath: fake });
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      await assert.rejects(fs.prepare({ signal: ac.signal }), { kind: 'Cancelled' });
      await assertAllGone(root, fs);
    });
  });

  test('a fresh instance stops the daemon a lost instance left (pid file)', async () => {
    await withRoot(async (root) => {
      const lost = makeVfs(root);
      await lost.prepare();
      const [pid] = lost.pids();
      const fresh = makeVfs(root);
      await fresh.cleanup();
      for (let i = 0; i < 100 && lost.pids().length > 0; i++) await sleep(10);
      assert.deepEqual(lost.pids(), [], `virtiofsd ${pid} still runs`);
      await assertAllGone(root, fresh);
    });
  });

  test(
    'binds made after QEMU connected are visible in virtiofsd\'s mount namespace',
    { skip: !haveQemu && `no ${QEMU}` },
    async () => {
      await withRoot(async (root) => {
        const host = path.join(root, 'host');
        await mkdir(path.join(host, 'rootfs'), { recursive: true });
        await writeFile(path.join(host, 'rootfs', 'hello'), 'from host');
        await writeFile(path.join(host, 'hosts'), '127.0.0.1 localhost\n');
        const fs = makeVfs(root);
        let qemu: ChildProcess | undefined;
        try {
          const dev = await fs.prepare();
          assert.equal(dev.kind, 'virtio-fs');
          // A frozen (-S) microvm is enough: QEMU connects the vhost-user socket when the device is
          // realized, and only then does virtiofsd enter its sandbox (new mount ns, pivot into shared/).
          qemu = spawn(
            QEMU,
            [
              '-M', 'microvm,memory-backend=mem', '-accel', 'tcg', '-S', '-nodefaults', '-display', 'none',
              '-object', 'memory-backend-memfd,id=mem,size=64M,share=on',
              '-global', 'virtio-mmio.force-legacy=false',
              '-chardev', `socket,id=vfs,path=${fs.socketPath}`,
              '-device', 'vhost-user-fs-device,chardev=vfs,tag=kataShared,queue-size=1024',
              '-name', `kata-vfs-test-${root}`,
            ],
            { stdio: 'ignore' },
          );
          const [daemon] = fs.pids();
          let worker: number | undefined;
          for (let i = 0; i < 500 && worker === undefined; i++) {
            worker = (await childrenOf(daemon!))[0];
            if (worker === undefined) await sleep(10);
          }
          assert.ok(worker, 'virtiofsd forked its sandboxed worker after QEMU connected');
          // Wait until the worker pivoted into shared/.
          let theirs: Awaited<ReturnType<typeof listMounts>> = [];
          for (let i = 0; i < 500; i++) {
            theirs = await listMounts(worker);
            if (theirs.some((m) => m.mountPoint === '/' && m.root.endsWith('/mounts'))) break;
            await sleep(10);
          }
          const view = `/proc/${worker}/root`;
          assert.ok(theirs.some((m) => m.mountPoint === '/'), 'worker has its own root');
          assert.deepEqual(await readdir(view), []);

          const guestRootfs = await fs.shareRootfs('c1', path.join(host, 'rootfs'));
          const guestHosts = await fs.shareFile('c1', path.join(host, 'hosts'), '/etc/hosts', true);
          const rel = (g: string) => g.slice('/run/kata-containers/shared/containers/'.length);
          assert.equal(await readFile(path.join(view, rel(guestRootfs), 'hello'), 'utf8'), 'from host');
          assert.equal(await readFile(path.join(view, rel(guestHosts)), 'utf8'), '127.0.0.1 localhost\n');
          const theirMounts = new Map((await listMounts(worker)).map((m) => [m.mountPoint, m]));
          assert.ok(theirMounts.get('/' + rel(guestRootfs))!.mountOptions.includes('rw'));
          assert.ok(theirMounts.get('/' + rel(guestHosts))!.mountOptions.includes('ro'), 'ro share is ro in virtiofsd');
          await assert.rejects(writeFile(path.join(view, rel(guestHosts)), 'evil'), { code: 'EROFS' });
          await writeFile(path.join(view, rel(guestRootfs), 'from-guest-side'), 'ok');
          assert.equal(await readFile(path.join(host, 'rootfs', 'from-guest-side'), 'utf8'), 'ok');

          // Why Kata stages read-only binds: a ro remount made after the bind does not reach the copy.
          const naive = path.join(fs.sandboxDir, 'mounts', 'naive');
          await mkdir(naive);
          await bindMount(path.join(host, 'rootfs'), naive);
          await remountReadOnly(naive);
          const naiveTheirs = (await listMounts(worker)).find((m) => m.mountPoint === '/naive');
          assert.ok(naiveTheirs, 'naive bind propagated');
          assert.ok(naiveTheirs.mountOptions.includes('rw'), 'the later ro remount did not propagate');
          await unmount(naive);

          await fs.unshareContainer('c1');
          const after = (await listMounts(worker)).map((m) => m.mountPoint);
          assert.deepEqual(after, ['/'], 'unmounts propagate too');
        } finally {
          if (qemu && qemu.exitCode === null) {
            const gone = new Promise((r) => qemu!.once('exit', r));
            qemu.kill('SIGKILL');
            await gone;
          }
          await fs.cleanup();
        }
        await assertAllGone(root, fs);
      });
    },
  );
});
