import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QMP_MAX_LINE_BYTES, QmpDecoder, encodeQmpCommand, parseQmpLine } from './qmp-codec.js';

const GREETING =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}\r\n';

test('parses the greeting', () => {
  const msgs = new QmpDecoder().push(GREETING);
  assert.deepEqual(msgs, [
    {
      type: 'greeting',
      greeting: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'Debian' }, capabilities: ['oob'] },
    },
  ]);
});

test('parses return, error and event messages', () => {
  const d = new QmpDecoder();
  const msgs = d.push(
    '{"return": {"status": "running"}, "id": 3}\r\n' +
      '{"id": 4, "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}\r\n' +
      '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false}}\r\n' +
      '{"return": {}}\n',
  );
  assert.deepEqual(msgs, [
    { type: 'return', id: 3, value: { status: 'running' } },
    { type: 'error', id: 4, error: { class: 'CommandNotFound', desc: 'The command foo has not been found' } },
    {
      type: 'event',
      event: { event: 'SHUTDOWN', data: { guest: false }, timestamp: { seconds: 1, microseconds: 2 } },
    },
    { type: 'return', value: {} },
  ]);
});

test('tolerates chunking anywhere, even inside a UTF-8 sequence', () => {
  const text = '{"return": "h\u00e9\u20ac\u{1F600}", "id": 1}\r\n{"event": "STOP"}\n';
  const bytes = Buffer.from(text, 'utf8');
  for (const size of [1, 2, 3, 5, 7, 64]) {
    const d = new QmpDecoder();
    const out = [];
    for (let i = 0; i < bytes.length; i += size) out.push(...d.push(bytes.subarray(i, i + size)));
    assert.deepEqual(out, [
      { type: 'return', id: 1, value: 'h\u00e9\u20ac\u{1F600}' },
      { type: 'event', event: { event: 'STOP' } },
    ]);
    assert.equal(d.bufferedBytes, 0);
  }
});

test('keeps a partial line until its newline arrives', () => {
  const d = new QmpDecoder();
  assert.deepEqual(d.push('{"return": 1, '), []);
  assert.equal(d.bufferedBytes, 14);
  assert.deepEqual(d.push('"id": 9}'), []);
  assert.deepEqual(d.push('\n'), [{ type: 'return', id: 9, value: 1 }]);
});

test('does not keep a reference to the caller buffer', () => {
  const d = new QmpDecoder();
  const chunk = Buffer.from('{"return": 5, "id"');
  d.push(chunk);
  chunk.fill(0x20);
  assert.deepEqual(d.push(': 2}\n'), [{ type: 'return', id: 2, value: 5 }]);
});

test('reports invalid lines and skips blank ones', () => {
  const msgs = new QmpDecoder().push('\r\n   \nnot json\n[1,2]\n{"foo": 1}\n{"error": 3}\n');
  assert.equal(msgs.length, 4);
  assert.ok(msgs.every((m) => m.type === 'invalid'));
  assert.match((msgs[0] as { reason: string }).reason, /bad JSON/);
  assert.equal(parseQmpLine('  '), undefined);
});

test('drops an over-long line instead of buffering forever', () => {
  const d = new QmpDecoder();
  const big = Buffer.alloc(QMP_MAX_LINE_BYTES + 1, 0x61);
  const msgs = d.push(big);
  assert.equal(msgs.length, 1);
  assert.equal(msgs[0]!.type, 'invalid');
  assert.equal(d.bufferedBytes, 0);
});

test('error without class or desc still yields a usable error', () => {
  assert.deepEqual(parseQmpLine('{"error": {}, "id": 1}'), {
    type: 'error',
    id: 1,
    error: { class: 'GenericError', desc: '{}' },
  });
});

test('encodes commands with id and arguments on one line', () => {
  assert.equal(encodeQmpCommand('query-status', undefined, 7), '{"execute":"query-status","id":7}\n');
  const line = encodeQmpCommand('migrate', { uri: 'exec:cat > /x\ny' }, 8);
  assert.equal(line.indexOf('\n'), line.length - 1);
  assert.deepEqual(JSON.parse(line), { execute: 'migrate', arguments: { uri: 'exec:cat > /x\ny' }, id: 8 });
  assert.throws(() => encodeQmpCommand('bad name"', undefined, 1), TypeError);
  assert.throws(() => encodeQmpCommand('', undefined, 1), TypeError);
});

test('round trip: what the encoder writes the decoder reads back', () => {
  const line = encodeQmpCommand('device_add', { driver: 'virtio-blk-pci', id: 'b1' }, 42);
  const msgs = new QmpDecoder().push(line.replace('"execute"', '"return": {}, "x"'));
  assert.equal(msgs[0]!.type, 'return');
  assert.equal((msgs[0] as { id: number }).id, 42);
});
