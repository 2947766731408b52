import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import {
  bindMount,
  makePrivate,
  makeShared,
  makeSlave,
  mountFs,
  remountReadOnly,
  unmount,
  unmountTree,
  validateMountOptions,
} from './mount.js';
import { isMountPoint, mountsUnder, propagationOf } from './mountinfo.js';

const isRoot = process.getuid?.() === 0;

/** A temp dir; afterwards everything mounted in it is unmounted and the test fails if anything was left. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await realpath(await mkdtemp(path.join(tmpdir(), 'kata-mount-')));
  let leftover: string[];
  try {
    await fn(dir);
    leftover = (await mountsUnder(dir)).map((m) => m.mountPoint);
  } finally {
    await unmountTree(dir).catch(() => undefined);
    const still = await mountsUnder(dir);
    if (still.length === 0) await rm(dir, { recursive: true, force: true });
    assert.deepEqual(still, [], 'mounts left after forced cleanup');
  }
  assert.deepEqual(leftover, [], 'test left mounts behind');
}

test('validates options and paths without running anything', async () => {
  assert.throws(() => validateMountOptions(['size=1m,exec']), { kind: 'InvalidArgument' });
  assert.throws(() => validateMountOptions(['']), { kind: 'InvalidArgument' });
  assert.throws(() => validateMountOptions(['lowerdir=/a:rel']), { kind: 'InvalidArgument' });
  assert.throws(() => validateMountOptions(['upperdir=rel']), { kind: 'InvalidArgument' });
  validateMountOptions(['lowerdir=/a:/b', 'upperdir=/u', 'workdir=/w', 'size=1m', 'ro']);
  await assert.rejects(bindMount('relative', '/tmp'), { kind: 'InvalidArgument' });
  await assert.rejects(bindMount('/tmp', '-o'), { kind: 'InvalidArgument' });
  await assert.rejects(bindMount('/tmp', '/tmp/a\0b'), { kind: 'InvalidArgument' });
  await assert.rejects(mountFs('tmpfs', '-oexec', '/tmp/x', []), { kind: 'InvalidArgument' });
  await assert.rejects(mountFs('tmp fs', 'tmpfs', '/tmp/x', []), { kind: 'InvalidArgument' });
  await assert.rejects(mountFs('tmpfs', 'tmpfs', '/tmp/x', ['size=1m,suid']), { kind: 'InvalidArgument' });
  await assert.rejects(unmountTree('/'), { kind: 'InvalidArgument' });
});

describe('mounts (root)', { skip: !isRoot && 'needs root' }, () => {
  test('bind, read-only bind, unmount', async () => {
    await withTempDir(async (dir) => {
      const src = path.join(dir, 'src');
      const rw = path.join(dir, 'rw');
      const ro = path.join(dir, 'ro');
      await mkdir(src);
      await mkdir(rw);
      await mkdir(ro);
      await writeFile(path.join(src, 'f'), 'hello');
      await bindMount(src, rw);
      await bindMount(src, ro, { readonly: true });
      assert.ok(await isMountPoint(rw));
      assert.equal(await readFile(path.join(ro, 'f'), 'utf8'), 'hello');
      await writeFile(path.join(rw, 'g'), 'x');
      await assert.rejects(writeFile(path.join(ro, 'h'), 'x'), { code: 'EROFS' });
      const [roEntry] = await mountsUnder(ro);
      assert.ok(roEntry!.mountOptions.includes('ro'));
      await unmount(rw);
      await unmount(ro);
      assert.equal(await isMountPoint(rw), false);
      // Not mounted and missing paths are fine.
      await unmount(rw);
      await unmount(path.join(dir, 'missing'));
      await unmount(rw, { lazy: true });
    });
  });

  test('bind of a missing source fails with the command stderr', async () => {
    await withTempDir(async (dir) => {
      await mkdir(path.join(dir, 't'));
      await assert.rejects(bindMount(path.join(dir, 'nope'), path.join(dir, 't')), (err: Error & { kind?: string; code?: string }) => {
        assert.equal(err.kind, 'Internal');
        assert.equal(err.code, 'KATA_MOUNT_FAILED');
        assert.match(err.message, /mount/);
        assert.match(err.message, /nope/);
        return true;
      });
    });
  });

  test('hostile path names stay one argument', async () => {
    await withTempDir(async (dir) => {
      const weird = path.join(dir, 'a b\nc,ro -o x\\y');
      const src = path.join(dir, '--bind');
      await mkdir(weird);
      await mkdir(src);
      await writeFile(path.join(src, 'f'), '1');
      await bindMount(src, weird, { readonly: true });
      const entries = await mountsUnder(dir);
      assert.deepEqual(entries.map((e) => e.mountPoint), [weird]);
      assert.equal(await readFile(path.join(weird, 'f'), 'utf8'), '1');
      assert.equal(await unmountTree(dir), 1);
    });
  });

  test('tmpfs and overlay with options', async () => {
    await withTempDir(async (dir) => {
      const t = path.join(dir, 't');
      await mkdir(t);
      await mountFs('tmpfs', 'tmpfs', t, ['size=1m', 'mode=0700', 'nosuid']);
      const [e] = await mountsUnder(t);
      assert.equal(e!.fsType, 'tmpfs');
      assert.ok(e!.mountOptions.includes('nosuid'));
      assert.ok(e!.superOptions.includes('size=1024k'));
      for (const d of ['lower', 'upper', 'work', 'merged']) await mkdir(path.join(t, d));
      await writeFile(path.join(t, 'lower', 'l'), 'low');
      const merged = path.join(t, 'merged');
      await mountFs('overlay', 'overlay', merged, [
        `lowerdir=${path.join(t, 'lower')}`,
        `upperdir=${path.join(t, 'upper')}`,
        `workdir=${path.join(t, 'work')}`,
      ]);
      assert.equal(await readFile(path.join(merged, 'l'), 'utf8'), 'low');
      await writeFile(path.join(merged, 'u'), 'up');
      assert.equal(await readFile(path.join(t, 'upper', 'u'), 'utf8'), 'up');
      // Deepest first: the overlay goes before the tmpfs under it.
      assert.equal(await unmountTree(dir), 2);
    });
  });

  test('unmountTree handles nesting and stacking', async () => {
    await withTempDir(async (dir) => {
      const a = path.join(dir, 'a');
      await mkdir(a);
      await mountFs('tmpfs', 'tmpfs', a, ['size=1m']);
      await mkdir(path.join(a, 'b'));
      await mountFs('tmpfs', 'tmpfs', path.join(a, 'b'), ['size=1m']);
      await mkdir(path.join(a, 'b', 'c'));
      await mountFs('tmpfs', 'tmpfs', path.join(a, 'b', 'c'), ['size=1m']);
      // Two mounts stacked on one path.
      await mountFs('tmpfs', 'tmpfs', path.join(a, 'b', 'c'), ['size=1m']);
      assert.equal((await mountsUnder(dir)).length, 4);
      assert.equal(await unmountTree(dir), 4);
      assert.equal((await mountsUnder(dir)).length, 0);
    });
  });

  test('propagation: shared peer group to a slave', async () => {
    await withTempDir(async (dir) => {
      const m = path.join(dir, 'mounts');
      const s = path.join(dir, 'shared');
      const src = path.join(dir, 'src');
      for (const d of [m, s, src]) await mkdir(d);
      await writeFile(path.join(src, 'f'), 'p');
      await bindMount(m, m);
      await makePrivate(m);
      await makeShared(m);
      await bindMount(m, s);
      await makeSlave(s);
      await remountReadOnly(s);
      const [me] = await mountsUnder(m);
      const [se] = await mountsUnder(s);
      assert.ok(propagationOf(me!).shared !== undefined);
      assert.equal(propagationOf(se!).master, propagationOf(me!).shared);
      await mkdir(path.join(m, 'x'));
      await bindMount(src, path.join(m, 'x'));
      assert.equal(await readFile(path.join(s, 'x', 'f'), 'utf8'), 'p');
      // The child mount is writable even though shared/ itself is read-only.
      await assert.rejects(writeFile(path.join(s, 'new'), ''), { code: 'EROFS' });
      await unmount(path.join(m, 'x'));
      assert.equal(await isMountPoint(path.join(s, 'x')), false, 'unmount propagates to the slave');
      await assert.rejects(makeShared(path.join(dir, 'src')), { code: 'KATA_MOUNT_FAILED' });
      assert.equal(await unmountTree(dir), 2);
    });
  });
});
