import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { OutputBuffer } from './output-buffer.js';

test('reads wait for data, split at the requested length, and end with an empty read', async () => {
  const src = new PassThrough();
  const buf = new OutputBuffer();
  buf.attach(src);
  const pending = buf.read(4);
  src.write('hello world');
  assert.equal((await pending).toString(), 'hell');
  assert.equal((await buf.read(100)).toString(), 'o world');
  src.end();
  assert.equal((await buf.read(10)).length, 0);
  assert.equal(buf.isEnded, true);
});

test('data written before the end is delivered before EOF, in order', async () => {
  const buf = new OutputBuffer();
  buf.push(Buffer.from('a'));
  buf.push(Buffer.from('b'));
  buf.end();
  assert.equal((await buf.read(10)).toString(), 'ab');
  assert.equal((await buf.read(10)).length, 0);
});

test('an aborted read returns empty without losing later data', async () => {
  const buf = new OutputBuffer();
  const ac = new AbortController();
  const r = buf.read(10, ac.signal);
  ac.abort();
  assert.equal((await r).length, 0);
  buf.push(Buffer.from('x'));
  assert.equal((await buf.read(10)).toString(), 'x');
});

test('pauses the source above the high-water mark and resumes after reads', async () => {
  const src = new PassThrough();
  const buf = new OutputBuffer(8);
  buf.attach(src);
  src.write(Buffer.alloc(16, 1));
  await new Promise((r) => setImmediate(r));
  assert.equal(src.isPaused(), true);
  await buf.read(16);
  assert.equal(src.isPaused(), false);
});
