import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  isMountPoint,
  isUnder,
  listMounts,
  mountsUnder,
  parseMountInfo,
  parseMountInfoLine,
  propagationOf,
  unescapeMountField,
} from './mountinfo.js';

test('parses a line with optional fields and octal escapes', () => {
  const e = parseMountInfoLine(
    '45 41 254:0 /tmp/a\\040b /run/x\\040y\\012z\\134w rw,relatime shared:2 master:1 - ext4 /dev/vda rw,discard',
  );
  assert.equal(e.mountId, 45);
  assert.equal(e.parentId, 41);
  assert.equal(e.major, 254);
  assert.equal(e.minor, 0);
  assert.equal(e.root, '/tmp/a b');
  assert.equal(e.mountPoint, '/run/x y\nz\\w');
  assert.deepEqual(e.mountOptions, ['rw', 'relatime']);
  assert.deepEqual(e.optionalFields, ['shared:2', 'master:1']);
  assert.equal(e.fsType, 'ext4');
  assert.equal(e.source, '/dev/vda');
  assert.deepEqual(e.superOptions, ['rw', 'discard']);
  assert.deepEqual(propagationOf(e), { shared: 2, master: 1, unbindable: false });
});

test('parses a line without optional fields', () => {
  const [e] = parseMountInfo('21 26 0:20 / /proc rw,relatime - proc proc rw\n\n');
  assert.equal(e!.mountPoint, '/proc');
  assert.deepEqual(e!.optionalFields, []);
  assert.deepEqual(propagationOf(e!), { unbindable: false });
});

test('refuses malformed lines', () => {
  assert.throws(() => parseMountInfoLine('garbage'), { kind: 'InvalidArgument' });
  assert.throws(() => parseMountInfoLine('1 2 x:y / / rw - a b c'), { kind: 'InvalidArgument' });
});

test('unescape leaves plain text and decodes tab', () => {
  assert.equal(unescapeMountField('a\\011b'), 'a\tb');
  assert.equal(unescapeMountField('plain'), 'plain');
});

test('isUnder compares whole components', () => {
  assert.ok(isUnder('/a/b', '/a'));
  assert.ok(isUnder('/a', '/a/'));
  assert.ok(!isUnder('/ab', '/a'));
  assert.ok(isUnder('/x', '/'));
});

test('reads the real mount table', async () => {
  const mounts = await listMounts();
  assert.ok(mounts.some((m) => m.mountPoint === '/'));
  assert.ok(await isMountPoint('/proc'));
  const dir = await mkdtemp(path.join(tmpdir(), 'mi-'));
  try {
    assert.equal(await isMountPoint(dir), false);
    assert.deepEqual(await mountsUnder(dir), []);
    assert.ok((await mountsUnder('/proc')).length >= 1);
  } finally {
    await rm(dir, { recursive: true });
  }
});
