import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { silentLogger } from '../../base/logger.js';
import { Request, Response } from '../gen/ttrpc.js';
import { FrameDecoder, FrameType, HEADER_BYTES, encodeFrame, type Frame } from './frame-codec.js';
import { MemoryDuplex } from './memory-duplex.js';
import { ServerSession } from './server-session.js';

/** mulberry32: small, seeded, reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SEED = Number(process.env['TTRPC_FUZZ_SEED'] ?? 0x5eed);

function fuzzTools(seed: number) {
  const rand = prng(seed);
  const int = (n: number): number => Math.floor(rand() * n);
  const bytes = (n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = int(256);
    return b;
  };
  const frames = (count: number, maxLen: number): Frame[] =>
    Array.from({ length: count }, () => ({
      streamId: int(4) === 0 ? int(2 ** 32) : int(64),
      type: int(5) === 0 ? int(256) : 1 + int(3),
      flags: int(4) === 0 ? int(256) : 0,
      payload: bytes(int(maxLen + 1)),
    }));
  const mutate = (input: Buffer): Buffer => {
    let b = Buffer.from(input);
    const rounds = 1 + int(4);
    for (let r = 0; r < rounds; r++) {
      switch (int(6)) {
        case 0: // bit flips
          for (let i = 0, n = 1 + int(8); i < n && b.length > 0; i++) b[int(b.length)]! ^= 1 << int(8);
          break;
        case 1: // truncate
          b = b.subarray(0, int(b.length + 1));
          break;
        case 2: // insert random bytes
          {
            const at = int(b.length + 1);
            b = Buffer.concat([b.subarray(0, at), bytes(int(32)), b.subarray(at)]);
          }
          break;
        case 3: // lie about a length somewhere
          if (b.length >= 4) b.writeUInt32BE(int(4) === 0 ? int(2 ** 32) : int(2048), int(b.length - 3));
          break;
        case 4: // duplicate a slice
          {
            const from = int(b.length + 1);
            const to = from + int(b.length - from + 1);
            b = Buffer.concat([b, b.subarray(from, to)]);
          }
          break;
        default: // delete a slice
          {
            const from = int(b.length + 1);
            const to = from + int(16);
            b = Buffer.concat([b.subarray(0, from), b.subarray(to)]);
          }
      }
    }
    return b;
  };
  const chunks = (b: Buffer): Buffer[] => {
    const out: Buffer[] = [];
    let pos = 0;
    while (pos < b.length) {
      const style = int(3);
      const n = style === 0 ? 1 : style === 1 ? 1 + int(16) : 1 + int(b.length);
      out.push(b.subarray(pos, pos + n));
      pos += n;
    }
    return out;
  };
  return { rand, int, bytes, frames, mutate, chunks };
}

describe('FrameDecoder fuzz', () => {
  it(`survives random and garbled streams with bounded buffering (seed ${SEED})`, () => {
    const t = fuzzTools(SEED);
    const limits = [0, 16, 256, 4096];
    let totalFrames = 0;
    let totalOversized = 0;
    for (let iter = 0; iter < 4000; iter++) {
      const maxPayload = limits[t.int(limits.length)]!;
      let input: Buffer;
      const kind = t.int(3);
      if (kind === 0) input = t.bytes(t.int(2048));
      else {
        const wire = Buffer.concat(t.frames(1 + t.int(8), maxPayload + 8).map((f) => encodeFrame(f, 1 << 20)));
        input = kind === 1 ? t.mutate(wire) : Buffer.concat([t.bytes(t.int(24)), wire]);
      }
      let consumedPayload = 0;
      const decoder = new FrameDecoder(
        {
          frame: (f) => {
            assert.ok(f.payload.length <= maxPayload, 'frame larger than the limit delivered');
            consumedPayload += HEADER_BYTES + f.payload.length;
            totalFrames++;
          },
          oversized: (_streamId, _type, length) => {
            assert.ok(length > maxPayload);
            totalOversized++;
          },
        },
        { maxPayload },
      );
      for (const c of t.chunks(input)) {
        assert.doesNotThrow(() => decoder.push(c), `iteration ${iter}`);
        assert.ok(decoder.bufferedBytes <= HEADER_BYTES + maxPayload, `unbounded buffering at iteration ${iter}`);
      }
      assert.ok(consumedPayload <= input.length, 'decoded more bytes than were pushed');
    }
    // The generator must actually reach both paths, or the test proves nothing.
    assert.ok(totalFrames > 1000, `frames decoded: ${totalFrames}`);
    assert.ok(totalOversized > 1000, `oversized frames seen: ${totalOversized}`);
  });

  it(`decodes unmutated streams exactly under random chunking (seed ${SEED})`, () => {
    const t = fuzzTools(SEED + 1);
    for (let iter = 0; iter < 1000; iter++) {
      const sent = t.frames(1 + t.int(10), 600);
      const wire = Buffer.concat(sent.map((f) => encodeFrame(f)));
      const got: Frame[] = [];
      const decoder = new FrameDecoder({ frame: (f) => got.push(f), oversized: () => assert.fail('oversized') });
      for (const c of t.chunks(wire)) decoder.push(c);
      assert.deepEqual(got, sent, `iteration ${iter}`);
      assert.equal(decoder.bufferedBytes, 0);
    }
  });
});

describe('ServerSession fuzz', () => {
  it(`answers garbage with well-formed Response frames only, and never throws (seed ${SEED})`, async () => {
    const t = fuzzTools(SEED + 2);
    let handled = 0;
    const lookup = (service: string, method: string) => {
      if (service !== 'fuzz.Echo') return 'no-service' as const;
      if (method !== 'Echo') return 'no-method' as const;
      return async (payload: Buffer) => {
        handled++;
        return payload;
      };
    };
    const validRequest = (streamId: number): Buffer =>
      encodeFrame({
        streamId,
        type: FrameType.Request,
        payload: Request.encode({
          service: t.int(4) === 0 ? 'other' : 'fuzz.Echo',
          method: t.int(4) === 0 ? 'Nope' : 'Echo',
          payload: t.bytes(t.int(64)),
          timeoutNano: t.int(2) * t.int(1e9),
          metadata: [{ key: 'K', value: 'v' }],
        }).finish(),
      });

    let responses = 0;
    for (let iter = 0; iter < 300; iter++) {
      const conn = new MemoryDuplex();
      const session = new ServerSession(conn, lookup, silentLogger, { maxPayload: 1024 });
      let input: Buffer;
      const wire = Buffer.concat(Array.from({ length: 1 + t.int(6) }, (_, i) => validRequest(2 * i + 1)));
      switch (t.int(3)) {
        case 0:
          input = t.bytes(t.int(1024));
          break;
        case 1:
          input = t.mutate(wire);
          break;
        default:
          input = Buffer.concat([
            wire,
            encodeFrame({ streamId: t.int(100), type: 1 + t.int(3), flags: t.int(8), payload: t.bytes(t.int(40)) }),
          ]);
      }
      for (const c of t.chunks(input)) conn.feed(c);
      await tick();
      await tick();
      const out = new FrameDecoder({
        frame: (f) => {
          assert.equal(f.type, FrameType.Response);
          assert.equal(f.flags, 0);
          const res = Response.decode(f.payload);
          assert.ok(res.status === undefined || res.status.code !== 0, 'OK answers carry no status');
          responses++;
        },
        oversized: () => assert.fail('server wrote an oversized frame'),
      });
      for (const w of conn.written) out.push(w);
      assert.equal(out.bufferedBytes, 0, 'server wrote a partial frame');
      assert.equal(session.closed, false);
      session.destroy();
    }
    assert.ok(handled > 50, `handled calls: ${handled}`);
    assert.ok(responses > 300, `responses: ${responses}`);
  });
});
