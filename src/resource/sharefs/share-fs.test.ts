import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readFile, readdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { silentLogger } from '../../base/logger.js';
import { unmountTree } from '../../platform/mount.js';
import { mountsUnder, propagationOf } from '../../platform/mountinfo.js';
import { createShareFs, GUEST_SHARED_DIR, shareNameComponent, type ShareFs } from './index.js';
import { checkId } from '../../base/ids.js';

const isRoot = process.getuid?.() === 0;

/** Temp sharedRoot; after the test nothing may be mounted under it (forced cleanup, then asserted). */
async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await realpath(await mkdtemp(path.join(tmpdir(), 'kata-sharefs-')));
  let leftover: string[];
  try {
    await fn(root);
    leftover = (await mountsUnder(root)).map((m) => m.mountPoint);
  } finally {
    await unmountTree(root).catch(() => undefined);
    const still = await mountsUnder(root);
    if (still.length === 0) await rm(root, { recursive: true, force: true });
    assert.deepEqual(still, [], 'mounts left after forced cleanup');
  }
  assert.deepEqual(leftover, [], 'test left mounts behind');
}

function make9p(root: string, sandboxId = 'sb1'): ShareFs {
  return createShareFs('virtio-9p', { sandboxId, vmDir: path.join(root, 'vm'), sharedRoot: path.join(root, 'sandboxes') }, silentLogger);
}

test('ids and names that could escape are refused', () => {
  // The share layer uses the runtime's one id rule (checkId).
  for (const bad of ['', '.', '..', '../x', 'a/b', '/abs', 'a\0b', '-x', '.hidden', 'a b', 'a..b', 'x'.repeat(200)]) {
    assert.throws(() => checkId(bad, 'container id'), { kind: 'InvalidArgument', code: 'KATA_BAD_ID' }, bad);
  }
  for (const ok of ['a', 'A1', 'abc.def_g-h', '0123456789abcdef'.repeat(4)]) checkId(ok, 'container id');
  assert.throws(() => createShareFs('virtio-9p', { sandboxId: '../etc', vmDir: '/tmp/x' }, silentLogger), { kind: 'InvalidArgument' });
  assert.throws(() => createShareFs('virtio-fs', { sandboxId: 'a/b', vmDir: '/tmp/x' }, silentLogger), { kind: 'InvalidArgument' });
  for (const bad of ['/', '/..', '/a/.', '', 'a\0b']) {
    assert.throws(() => shareNameComponent(bad), { kind: 'InvalidArgument' }, bad);
  }
  assert.equal(shareNameComponent('/etc/hosts'), 'hosts');
  assert.equal(shareNameComponent('/data/'), 'data');
  assert.throws(() => createShareFs('none' as 'virtio-fs', { sandboxId: 'a', vmDir: '/tmp/x' }, silentLogger), { kind: 'InvalidArgument' });
});

test('guest storage follows the reference', () => {
  const p9 = createShareFs('virtio-9p', { sandboxId: 's', vmDir: '/tmp/x' }, silentLogger);
  assert.deepEqual(p9.guestStorage(), {
    driver: '9p',
    driverOptions: [],
    source: 'kataShared',
    fstype: '9p',
    options: ['trans=virtio', 'version=9p2000.L', 'cache=mmap', 'nodev', 'msize=524288'],
    mountPoint: '/run/kata-containers/shared/containers/',
  });
  const small = createShareFs('virtio-9p', { sandboxId: 's', vmDir: '/tmp/x', msize9p: 8192, cache9p: 'mmap' }, silentLogger);
  assert.ok(small.guestStorage().options.includes('msize=8192'));
  assert.ok(small.guestStorage().options.includes('cache=mmap'));
  assert.throws(() => createShareFs('virtio-9p', { sandboxId: 's', vmDir: '/x', msize9p: 12 }, silentLogger), { kind: 'InvalidArgument' });
  const vfs = createShareFs('virtio-fs', { sandboxId: 's', vmDir: '/tmp/x' }, silentLogger);
  assert.deepEqual(vfs.guestStorage(), {
    driver: 'virtio-fs',
    driverOptions: [],
    source: 'kataShared',
    fstype: 'virtiofs',
    options: [],
    mountPoint: GUEST_SHARED_DIR,
  });
  assert.equal(vfs.sandboxDir, '/run/kata-containers/shared/sandboxes/s');
});

describe('shared dir layout (root)', { skip: !isRoot && 'needs root' }, () => {
  test('prepare builds Kata layout with the right propagation', async () => {
    await withRoot(async (root) => {
      const fs = make9p(root);
      try {
        const dev = await fs.prepare();
        const dir = fs.sandboxDir;
        assert.equal(dir, path.join(root, 'sandboxes', 'sb1'));
        assert.deepEqual(dev, { kind: '9p', id: 'kata-shared-fs', hostPath: path.join(dir, 'shared'), tag: 'kataShared', readonly: false });
        assert.deepEqual((await readdir(dir)).sort(), ['mounts', 'private', 'shared']);
        const byPath = new Map((await mountsUnder(dir)).map((m) => [m.mountPoint, m]));
        const m = byPath.get(path.join(dir, 'mounts'))!;
        const s = byPath.get(path.join(dir, 'shared'))!;
        const p = byPath.get(path.join(dir, 'private'))!;
        assert.ok(propagationOf(m).shared !== undefined, 'mounts/ is shared');
        assert.equal(propagationOf(s).master, propagationOf(m).shared, 'shared/ is a slave of mounts/');
        assert.ok(s.mountOptions.includes('ro'), 'shared/ is read-only');
        assert.deepEqual(p.optionalFields, [], 'private/ is private');
        await assert.rejects(writeFile(path.join(dir, 'shared', 'x'), ''), { code: 'EROFS' });
        // A second prepare of the same sandbox is refused and must not damage the first.
        await assert.rejects(make9p(root).prepare(), { kind: 'AlreadyExists' });
        assert.equal((await mountsUnder(dir)).length, 3);
      } finally {
        await fs.cleanup();
      }
      await assert.rejects(lstat(fs.sandboxDir), { code: 'ENOENT' });
      await fs.cleanup(); // idempotent
    });
  });

  test('rootfs and mounts are visible in shared/, read-only ones are really read-only', async () => {
    await withRoot(async (root) => {
      const host = path.join(root, 'host');
      await mkdir(path.join(host, 'rootfs', 'etc'), { recursive: true });
      await mkdir(path.join(host, 'vol'));
      await writeFile(path.join(host, 'rootfs', 'etc', 'os'), 'debian');
      await writeFile(path.join(host, 'hosts'), '127.0.0.1 localhost\n');
      await writeFile(path.join(host, 'vol', 'data'), 'v');
      const fs = make9p(root);
      try {
        await fs.prepare();
        const shared = path.join(fs.sandboxDir, 'shared');
        const guestRootfs = await fs.shareRootfs('c1', path.join(host, 'rootfs'));
        assert.equal(guestRootfs, '/run/kata-containers/shared/containers/c1/rootfs');
        assert.equal(await readFile(path.join(shared, 'c1', 'rootfs', 'etc', 'os'), 'utf8'), 'debian');
        await writeFile(path.join(shared, 'c1', 'rootfs', 'written'), 'w'); // rootfs is writable
        assert.equal(await readFile(path.join(host, 'rootfs', 'written'), 'utf8'), 'w');

        const guestHosts = await fs.shareFile('c1', path.join(host, 'hosts'), '/etc/hosts', true);
        assert.match(guestHosts, /^\/run\/kata-containers\/shared\/containers\/c1-[0-9a-f]{16}-hosts$/);
        const hostsName = path.posix.basename(guestHosts);
        assert.equal(await readFile(path.join(shared, hostsName), 'utf8'), '127.0.0.1 localhost\n');
        await assert.rejects(writeFile(path.join(shared, hostsName), 'evil'), { code: 'EROFS' });
        await assert.rejects(writeFile(path.join(fs.sandboxDir, 'mounts', hostsName), 'evil'), { code: 'EROFS' });
        assert.deepEqual(await readdir(path.join(fs.sandboxDir, 'private')), [], 'staging is gone');

        const guestVolRo = await fs.shareMount('c1', path.join(host, 'vol'), '/data', true);
        const guestVolRw = await fs.shareMount('c1', path.join(host, 'vol'), '/scratch', false);
        await assert.rejects(writeFile(path.join(shared, path.posix.basename(guestVolRo), 'x'), ''), { code: 'EROFS' });
        await writeFile(path.join(shared, path.posix.basename(guestVolRw), 'x'), 'rw');
        assert.equal(await readFile(path.join(host, 'vol', 'x'), 'utf8'), 'rw');
        await assert.rejects(fs.shareFile('c1', path.join(host, 'vol'), '/d', false), { kind: 'InvalidArgument' });
        await assert.rejects(fs.shareMount('c1', path.join(host, 'missing'), '/d', false), { kind: 'NotFound' });
        await assert.rejects(fs.shareRootfs('../c1', path.join(host, 'rootfs')), { kind: 'InvalidArgument' });
        await assert.rejects(fs.shareMount('c1', path.join(host, 'vol'), '/..', false), { kind: 'InvalidArgument' });
        await assert.rejects(fs.shareMount('c/1', path.join(host, 'vol'), '/x', false), { kind: 'InvalidArgument' });

        await fs.shareRootfs('c2', path.join(host, 'rootfs'));
        await assert.rejects(fs.shareRootfs('c2', path.join(host, 'rootfs')), { kind: 'AlreadyExists' });
        const c2Vol = await fs.shareMount('c2', path.join(host, 'vol'), '/data', true);
        await fs.unshareContainer('c1');
        const left = (await readdir(path.join(fs.sandboxDir, 'mounts'))).sort();
        assert.deepEqual(left, ['c2', path.posix.basename(c2Vol)].sort());
        assert.ok((await mountsUnder(path.join(fs.sandboxDir, 'mounts'))).every((m) => !m.mountPoint.includes('/c1')));
        assert.ok((await mountsUnder(shared)).every((m) => !m.mountPoint.includes('/c1')));
        await fs.unshareContainer('c1'); // idempotent
        // Host data untouched by unsharing.
        assert.equal(await readFile(path.join(host, 'vol', 'data'), 'utf8'), 'v');
        assert.equal(await readFile(path.join(host, 'hosts'), 'utf8'), '127.0.0.1 localhost\n');
      } finally {
        await fs.cleanup();
      }
      assert.deepEqual(await mountsUnder(root), []);
      assert.equal(await readFile(path.join(host, 'rootfs', 'etc', 'os'), 'utf8'), 'debian');
      assert.equal(await readFile(path.join(host, 'vol', 'data'), 'utf8'), 'v');
    });
  });

  test('cleanup never follows symlinks out of the sandbox dir', async () => {
    await withRoot(async (root) => {
      const outside = path.join(root, 'outside');
      await mkdir(outside);
      await writeFile(path.join(outside, 'precious'), 'keep');
      const fs = make9p(root);
      await fs.prepare();
      await symlink(outside, path.join(fs.sandboxDir, 'link'));
      await symlink(outside, path.join(fs.sandboxDir, 'private', 'link'));
      await fs.cleanup();
      await assert.rejects(lstat(fs.sandboxDir), { code: 'ENOENT' });
      assert.equal(await readFile(path.join(outside, 'precious'), 'utf8'), 'keep');

      // The sandbox dir itself replaced by a link: only the link goes.
      await symlink(outside, fs.sandboxDir);
      await fs.cleanup();
      await assert.rejects(lstat(fs.sandboxDir), { code: 'ENOENT' });
      assert.equal(await readFile(path.join(outside, 'precious'), 'utf8'), 'keep');
    });
  });

  test('a fresh instance cleans up after a lost one (restart)', async () => {
    await withRoot(async (root) => {
      const host = path.join(root, 'host');
      await mkdir(host);
      const lost = make9p(root);
      await lost.prepare();
      await lost.shareRootfs('c1', host);
      await lost.shareMount('c1', host, '/v', true);
      const fresh = make9p(root);
      await fresh.unshareContainer('c1'); // rootfs dir is found without in-memory state
      assert.equal((await mountsUnder(path.join(fresh.sandboxDir, 'mounts', 'c1'))).length, 0);
      await fresh.cleanup();
      assert.deepEqual(await mountsUnder(root), []);
      await assert.rejects(lstat(fresh.sandboxDir), { code: 'ENOENT' });
    });
  });

  test('sharing before prepare is refused', async () => {
    await withRoot(async (root) => {
      const fs = make9p(root);
      await assert.rejects(fs.shareRootfs('c1', root), { kind: 'FailedPrecondition' });
      await fs.cleanup();
    });
  });
});
