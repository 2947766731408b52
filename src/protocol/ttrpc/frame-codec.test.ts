import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KataError } from '../../base/errors.js';
import { FrameDecoder, FrameType, HEADER_BYTES, MAX_PAYLOAD, encodeFrame, type Frame } from './frame-codec.js';

function collect(opts?: { maxPayload?: number }): {
  decoder: FrameDecoder;
  frames: Frame[];
  oversized: { streamId: number; type: number; length: number }[];
} {
  const frames: Frame[] = [];
  const oversized: { streamId: number; type: number; length: number }[] = [];
  const decoder = new FrameDecoder(
    { frame: (f) => frames.push(f), oversized: (streamId, type, length) => oversized.push({ streamId, type, length }) },
    opts,
  );
  return { decoder, frames, oversized };
}

describe('encodeFrame', () => {
  it('writes the 10-byte big-endian header then the payload', () => {
    const buf = encodeFrame({ streamId: 0x01020304, type: FrameType.Response, flags: 0x05, payload: Buffer.from('hi') });
    assert.deepEqual([...buf], [0, 0, 0, 2, 1, 2, 3, 4, 2, 5, 0x68, 0x69]);
  });

  it('defaults flags to 0 and accepts an empty payload', () => {
    const buf = encodeFrame({ streamId: 1, type: FrameType.Request, payload: new Uint8Array(0) });
    assert.deepEqual([...buf], [0, 0, 0, 0, 0, 0, 0, 1, 1, 0]);
  });

  it('refuses an oversized payload with ResourceExhausted', () => {
    assert.throws(
      () => encodeFrame({ streamId: 1, type: 1, payload: Buffer.alloc(MAX_PAYLOAD + 1) }),
      (err: unknown) => err instanceof KataError && err.kind === 'ResourceExhausted',
    );
    // Exactly the limit is fine.
    assert.equal(encodeFrame({ streamId: 1, type: 1, payload: Buffer.alloc(MAX_PAYLOAD) }).length, MAX_PAYLOAD + 10);
  });

  it('refuses out-of-range header fields', () => {
    for (const bad of [
      { streamId: -1, type: 1 },
      { streamId: 2 ** 32, type: 1 },
      { streamId: 1.5, type: 1 },
      { streamId: 1, type: 256 },
      { streamId: 1, type: 1, flags: -1 },
    ]) {
      assert.throws(
        () => encodeFrame({ ...bad, payload: Buffer.alloc(0) }),
        (err: unknown) => err instanceof KataError && err.kind === 'InvalidArgument',
      );
    }
  });
});

describe('FrameDecoder', () => {
  const sample = [
    { streamId: 1, type: FrameType.Request, flags: 0, payload: Buffer.from('first request') },
    { streamId: 3, type: FrameType.Data, flags: 0x04, payload: Buffer.alloc(0) },
    { streamId: 0xffffffff, type: FrameType.Response, flags: 0, payload: Buffer.from([0, 1, 2, 255]) },
    { streamId: 7, type: 0xee, flags: 0xff, payload: Buffer.alloc(300, 7) },
  ];
  const wire = Buffer.concat(sample.map((f) => encodeFrame(f)));

  it('round-trips many frames pushed in one chunk', () => {
    const { decoder, frames, oversized } = collect();
    decoder.push(wire);
    assert.deepEqual(frames, sample);
    assert.equal(oversized.length, 0);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('decodes identically at every split point', () => {
    for (let cut = 0; cut <= wire.length; cut++) {
      const { decoder, frames } = collect();
      decoder.push(wire.subarray(0, cut));
      decoder.push(wire.subarray(cut));
      assert.deepEqual(frames, sample, `split at ${cut}`);
    }
  });

  it('decodes identically at every pair of split points', () => {
    const small = Buffer.concat(sample.slice(0, 3).map((f) => encodeFrame(f)));
    for (let a = 0; a <= small.length; a++) {
      for (let b = a; b <= small.length; b++) {
        const { decoder, frames } = collect();
        decoder.push(small.subarray(0, a));
        decoder.push(small.subarray(a, b));
        decoder.push(small.subarray(b));
        assert.deepEqual(frames, sample.slice(0, 3), `split at ${a},${b}`);
      }
    }
  });

  it('decodes one byte at a time', () => {
    const { decoder, frames } = collect();
    for (const byte of wire) decoder.push(Uint8Array.of(byte));
    assert.deepEqual(frames, sample);
  });

  it('copies payloads: reusing the pushed chunk does not change delivered frames', () => {
    const { decoder, frames } = collect();
    const chunk = Buffer.from(wire);
    decoder.push(chunk);
    chunk.fill(0xaa);
    assert.deepEqual(frames, sample);
  });

  it('skips a 5 MiB frame without buffering it and decodes the next frame', () => {
    const { decoder, frames, oversized } = collect();
    const bigLength = 5 << 20;
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32BE(bigLength, 0);
    header.writeUInt32BE(9, 4);
    header.writeUInt8(FrameType.Request, 8);
    decoder.push(header);
    assert.deepEqual(oversized, [{ streamId: 9, type: FrameType.Request, length: bigLength }]);
    const chunk = Buffer.alloc(64 * 1024, 0x5a);
    let sent = 0;
    let maxBuffered = 0;
    while (sent < bigLength) {
      const n = Math.min(chunk.length, bigLength - sent);
      decoder.push(chunk.subarray(0, n));
      sent += n;
      maxBuffered = Math.max(maxBuffered, decoder.bufferedBytes);
    }
    assert.equal(maxBuffered, 0, 'oversized payload must not be buffered');
    const next = { streamId: 11, type: FrameType.Request, flags: 0, payload: Buffer.from('after') };
    decoder.push(encodeFrame(next));
    assert.deepEqual(frames, [next]);
    assert.equal(oversized.length, 1);
  });

  it('skips an oversized frame whose tail shares a chunk with the next frame', () => {
    const { decoder, frames, oversized } = collect({ maxPayload: 4 });
    const big = encodeFrame({ streamId: 1, type: 1, payload: Buffer.from('too long') }, 100);
    const ok = { streamId: 3, type: 1, flags: 0, payload: Buffer.from('ok') };
    decoder.push(Buffer.concat([big, encodeFrame(ok)]));
    assert.deepEqual(oversized, [{ streamId: 1, type: 1, length: 8 }]);
    assert.deepEqual(frames, [ok]);
  });

  it('treats a non-zero reserved byte as an oversized length', () => {
    const { decoder, oversized } = collect();
    decoder.push(Buffer.from([1, 0, 0, 0, 0, 0, 0, 1, 1, 0]));
    assert.equal(oversized[0]?.length, 1 << 24);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('never holds more than the declared payload while it trickles in', () => {
    const { decoder, frames } = collect({ maxPayload: 1000 });
    const f = encodeFrame({ streamId: 1, type: 1, payload: Buffer.alloc(1000, 1) });
    for (let i = 0; i < f.length; i += 7) {
      decoder.push(f.subarray(i, i + 7));
      assert.ok(decoder.bufferedBytes <= 1000);
    }
    assert.equal(frames.length, 1);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('stays in step when a handler throws, and rethrows its error after the chunk', () => {
    let calls = 0;
    const seen: number[] = [];
    const decoder = new FrameDecoder({
      frame: (f) => {
        seen.push(f.streamId);
        if (calls++ === 0) throw new Error('handler bug');
      },
      oversized: () => {},
    });
    assert.throws(() => decoder.push(wire), /handler bug/);
    assert.deepEqual(seen, [1, 3, 0xffffffff, 7]);
    decoder.push(encodeFrame({ streamId: 9, type: 1, payload: Buffer.from('x') }));
    assert.deepEqual(seen, [1, 3, 0xffffffff, 7, 9]);
  });

  it('reset() drops a partial frame, also from inside a handler', () => {
    const { decoder, frames } = collect();
    decoder.push(wire.subarray(0, 15));
    assert.ok(decoder.bufferedBytes > 0);
    decoder.reset();
    assert.equal(decoder.bufferedBytes, 0);
    decoder.push(wire);
    assert.deepEqual(frames, sample);

    let count = 0;
    const resetting: FrameDecoder = new FrameDecoder({
      frame: () => {
        count++;
        resetting.reset();
      },
      oversized: () => {},
    });
    resetting.push(wire);
    assert.equal(count, 1, 'the rest of the chunk is abandoned after reset');
    assert.equal(resetting.bufferedBytes, 0);
  });
});
