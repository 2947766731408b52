import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { KataError, type ErrorKind } from '../../base/errors.js';
import { silentLogger } from '../../base/logger.js';
import { KeyValue, Request, Response } from '../gen/ttrpc.js';
import { TtrpcClient, callTyped } from './client.js';
import { FrameDecoder, FrameFlag, FrameType, HEADER_BYTES, MAX_PAYLOAD, encodeFrame, type Frame } from './frame-codec.js';
import { MemoryDuplex } from './memory-duplex.js';
import { TtrpcServer, unaryHandler, type CallContext } from './server.js';
import { GrpcCode, TtrpcStatusError } from './status.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kata-ttrpc-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let socketCounter = 0;
const nextSocketPath = (): string => join(dir, `s${socketCounter++}.sock`);

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    sock.once('connect', () => {
      sock.off('error', reject);
      resolve(sock);
    });
    sock.once('error', reject);
  });
}

/** A hand-driven peer: writes raw frames and reads frames back. */
async function rawPeer(path: string) {
  const sock = await connect(path);
  const frames: Frame[] = [];
  const waiters: (() => void)[] = [];
  const decoder = new FrameDecoder({
    frame: (f) => {
      frames.push(f);
      waiters.splice(0).forEach((w) => w());
    },
    oversized: () => assert.fail('server sent an oversized frame'),
  });
  sock.on('data', (c: Buffer) => decoder.push(c));
  return {
    sock,
    send: (streamId: number, type: number, payload: Uint8Array, flags = 0) =>
      sock.write(encodeFrame({ streamId, type, flags, payload })),
    async next(): Promise<{ streamId: number; code: number; message: string; payload: Buffer; frameBytes: number }> {
      while (frames.length === 0) await new Promise<void>((r) => waiters.push(r));
      const f = frames.shift()!;
      assert.equal(f.type, FrameType.Response);
      const res = Response.decode(f.payload);
      return {
        streamId: f.streamId,
        code: res.status?.code ?? 0,
        message: res.status?.message ?? '',
        payload: res.payload,
        frameBytes: f.payload.length,
      };
    },
  };
}

const requestBytes = (service: string, method: string, payload = Buffer.alloc(0)) =>
  Request.encode({ service, method, payload, timeoutNano: 0, metadata: [] }).finish();

function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const isStatus = (code: number, kind: ErrorKind, text?: string) => (err: unknown) => {
  assert.ok(err instanceof TtrpcStatusError, `expected TtrpcStatusError, got ${String(err)}`);
  assert.equal(err.grpcCode, code);
  assert.equal(err.kind, kind);
  if (text) assert.match(err.message, new RegExp(text));
  return true;
};

const isKind = (kind: ErrorKind) => (err: unknown) => {
  assert.ok(err instanceof KataError, `expected KataError, got ${String(err)}`);
  assert.equal(err.kind, kind, err.message);
  return true;
};

describe('ttrpc client and server over a unix socket', () => {
  let server: TtrpcServer;
  let path: string;
  let client: TtrpcClient;
  const seen: CallContext[] = [];
  let release = deferred();
  const lateResults: string[] = [];

  beforeEach(async () => {
    seen.length = 0;
    lateResults.length = 0;
    release = deferred();
    server = new TtrpcServer(silentLogger);
    server.register('test.Echo', {
      Echo: async (payload, ctx) => {
        seen.push(ctx);
        const delayMs = payload.length > 0 ? payload[0]! : 0;
        await sleep(delayMs);
        return payload;
      },
      Fail: async (payload) => {
        const kind = payload.toString() as ErrorKind;
        if (kind === ('plain' as ErrorKind)) throw new Error('plain failure');
        throw new KataError(kind, 'TEST', `failed with ${kind}`);
      },
      Wait: async (_payload, ctx) => {
        seen.push(ctx);
        await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve(), { once: true }));
        throw ctx.signal.reason;
      },
      IgnoreSignal: async () => {
        await release.promise;
        lateResults.push('done');
        return Buffer.from('late');
      },
      Big: async () => Buffer.alloc(MAX_PAYLOAD + 1),
      Slow: async (_payload, ctx) => {
        await new Promise<void>((resolve) => ctx.signal.addEventListener('abort', () => resolve(), { once: true }));
        return Buffer.from('slow');
      },
    });
    server.register('test.Typed', {
      Swap: unaryHandler(KeyValue, KeyValue, async (kv) => ({ key: kv.value, value: kv.key })),
    });
    path = nextSocketPath();
    await server.listen(path);
    client = new TtrpcClient(await connect(path), silentLogger);
  });

  afterEach(async () => {
    release.resolve();
    client.destroy();
    await server.close({ graceMs: 200 });
  });

  it('creates the socket with mode 0600', async () => {
    assert.equal((await stat(path)).mode & 0o777, 0o600);
  });

  it('multiplexes concurrent calls that complete out of order', async () => {
    const order: number[] = [];
    const calls = Array.from({ length: 20 }, (_, i) => {
      const delayMs = (20 - i) * 3;
      return client.call('test.Echo', 'Echo', Buffer.from([delayMs, i])).then((res) => {
        order.push(i);
        return res;
      });
    });
    const results = await Promise.all(calls);
    results.forEach((res, i) => assert.deepEqual([...res], [(20 - i) * 3, i]));
    assert.deepEqual(order.slice(0, 3), [19, 18, 17], 'shortest delays finish first');
    assert.deepEqual(
      seen.map((c) => c.streamId).sort((a, b) => a - b),
      Array.from({ length: 20 }, (_, i) => 2 * i + 1),
      'odd stream ids from 1 stepping by 2',
    );
  });

  it('a long-poll handler does not block other calls on the same connection', async () => {
    const poll = client.call('test.Echo', 'Slow', Buffer.alloc(0), { timeoutMs: 2000 });
    for (let i = 0; i < 5; i++) assert.deepEqual([...(await client.call('test.Echo', 'Echo', Buffer.from([0, i])))], [0, i]);
    assert.equal(client.pendingCalls, 1);
    client.destroy();
    await assert.rejects(poll, isKind('Unavailable'));
  });

  it('passes metadata (lower-cased keys) and timeout_nano as a deadline', async () => {
    const before = Date.now();
    await client.call('test.Echo', 'Echo', Buffer.alloc(0), {
      timeoutMs: 5000,
      metadata: { 'Containerd-Namespace-Ttrpc': 'k8s.io' },
    });
    const ctx = seen[0]!;
    assert.equal(ctx.service, 'test.Echo');
    assert.equal(ctx.method, 'Echo');
    assert.equal(ctx.metadata.get('containerd-namespace-ttrpc'), 'k8s.io');
    assert.ok(ctx.deadline !== undefined && ctx.deadline >= before + 4900 && ctx.deadline <= Date.now() + 5000);
    await client.call('test.Echo', 'Echo', Buffer.alloc(0));
    assert.equal(seen[1]!.deadline, undefined);
  });

  it('enforces the deadline locally and aborts the handler signal on the server', async () => {
    const t0 = Date.now();
    await assert.rejects(client.call('test.Echo', 'Wait', Buffer.alloc(0), { timeoutMs: 60 }), isKind('DeadlineExceeded'));
    assert.ok(Date.now() - t0 < 1000);
    await sleep(20);
    assert.equal(seen[0]!.signal.aborted, true);
    assert.equal((seen[0]!.signal.reason as KataError).kind, 'DeadlineExceeded');
    assert.equal(client.pendingCalls, 0);
  });

  it('drops a late response after a local deadline and keeps working', async () => {
    await assert.rejects(
      client.call('test.Echo', 'IgnoreSignal', Buffer.alloc(0), { timeoutMs: 30 }),
      isKind('DeadlineExceeded'),
    );
    release.resolve();
    await sleep(20);
    assert.deepEqual(lateResults, ['done']);
    assert.equal(client.closed, false);
    assert.deepEqual([...(await client.call('test.Echo', 'Echo', Buffer.from([0, 7])))], [0, 7]);
  });

  it('rejects with Cancelled when the signal aborts', async () => {
    const ac = new AbortController();
    const p = client.call('test.Echo', 'Wait', Buffer.alloc(0), { signal: ac.signal });
    ac.abort();
    await assert.rejects(p, isKind('Cancelled'));
    await assert.rejects(client.call('test.Echo', 'Echo', Buffer.alloc(0), { signal: ac.signal }), isKind('Cancelled'));
  });

  it('answers Unimplemented for an unknown service or method', async () => {
    await assert.rejects(
      client.call('no.Such', 'Echo', Buffer.alloc(0)),
      isStatus(GrpcCode.UNIMPLEMENTED, 'NotImplemented', 'service no.Such'),
    );
    await assert.rejects(
      client.call('test.Echo', 'Nope', Buffer.alloc(0)),
      isStatus(GrpcCode.UNIMPLEMENTED, 'NotImplemented', 'method Nope'),
    );
  });

  it('maps handler error kinds to status codes and back', async () => {
    const kinds: [ErrorKind, number][] = [
      ['NotFound', 5],
      ['AlreadyExists', 6],
      ['InvalidArgument', 3],
      ['FailedPrecondition', 9],
      ['Unavailable', 14],
      ['DeadlineExceeded', 4],
      ['Cancelled', 1],
      ['NotImplemented', 12],
      ['ResourceExhausted', 8],
      ['Internal', 13],
    ];
    for (const [kind, code] of kinds) {
      await assert.rejects(
        client.call('test.Echo', 'Fail', Buffer.from(kind)),
        isStatus(code, kind, `failed with ${kind}`),
      );
    }
    await assert.rejects(
      client.call('test.Echo', 'Fail', Buffer.from('plain')),
      isStatus(GrpcCode.UNKNOWN, 'Internal', 'plain failure'),
    );
  });

  it('typed calls round-trip, and an undecodable request answers Internal', async () => {
    const res = await callTyped(client, 'test.Typed', 'Swap', KeyValue, { key: 'a', value: 'b' }, KeyValue);
    assert.deepEqual(res, { key: 'b', value: 'a' });
    await assert.rejects(
      client.call('test.Typed', 'Swap', Buffer.from([0x0a, 0x7f])),
      isStatus(GrpcCode.INTERNAL, 'Internal', 'unmarshal'),
    );
  });

  it('refuses an oversized request before sending, and an oversized response with ResourceExhausted', async () => {
    await assert.rejects(client.call('test.Echo', 'Echo', Buffer.alloc(MAX_PAYLOAD)), isKind('ResourceExhausted'));
    await assert.rejects(
      client.call('test.Echo', 'Big', Buffer.alloc(0)),
      isStatus(GrpcCode.RESOURCE_EXHAUSTED, 'ResourceExhausted'),
    );
    assert.deepEqual([...(await client.call('test.Echo', 'Echo', Buffer.from([0, 1])))], [0, 1]);
  });

  it('rejects pending calls with Unavailable when the server goes away, and later calls fail fast', async () => {
    const closedWith = deferred<KataError | undefined>();
    client.onClose((err) => closedWith.resolve(err));
    const settled = Promise.allSettled([
      client.call('test.Echo', 'IgnoreSignal', Buffer.alloc(0)),
      client.call('test.Echo', 'Wait', Buffer.alloc(0)),
    ]);
    await sleep(10);
    await server.close({ graceMs: 50 });
    const results = await settled;
    // Wait answers (Unavailable status, its signal was aborted by the shutdown); IgnoreSignal never answers.
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal((r.reason as KataError).kind, 'Unavailable');
    }
    assert.equal((await closedWith.promise)?.kind, 'Unavailable');
    assert.equal(client.closed, true);
    const t0 = Date.now();
    await assert.rejects(client.call('test.Echo', 'Echo', Buffer.alloc(0)), isKind('Unavailable'));
    assert.ok(Date.now() - t0 < 50);
  });

  it('close() waits for pending calls, then ends the connection', async () => {
    const p = client.call('test.Echo', 'Echo', Buffer.from([30, 1]));
    const closing = client.close();
    await assert.rejects(client.call('test.Echo', 'Echo', Buffer.alloc(0)), isKind('Unavailable'));
    assert.deepEqual([...(await p)], [30, 1]);
    await closing;
    assert.equal(client.closed, true);
  });

  it('refuses even, reused and lower stream ids with InvalidArgument', async () => {
    const p2 = await rawPeer(path);
    p2.send(2, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    let r = await p2.next();
    assert.deepEqual([r.streamId, r.code], [2, GrpcCode.INVALID_ARGUMENT]);
    p2.send(0, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    r = await p2.next();
    assert.deepEqual([r.streamId, r.code], [0, GrpcCode.INVALID_ARGUMENT]);
    p2.send(5, FrameType.Request, requestBytes('test.Echo', 'Echo', Buffer.from([0, 5])));
    r = await p2.next();
    assert.deepEqual([r.streamId, r.code, [...r.payload]], [5, GrpcCode.OK, [0, 5]]);
    p2.send(5, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    r = await p2.next();
    assert.deepEqual([r.streamId, r.code], [5, GrpcCode.INVALID_ARGUMENT]);
    p2.send(3, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    r = await p2.next();
    assert.deepEqual([r.streamId, r.code], [3, GrpcCode.INVALID_ARGUMENT]);
    p2.send(7, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    r = await p2.next();
    assert.deepEqual([r.streamId, r.code], [7, GrpcCode.OK]);
    assert.equal(r.frameBytes, 0, 'an empty OK response is an empty frame, as containerd/ttrpc sends it');
    p2.sock.destroy();
  });

  it('answers ResourceExhausted to an oversized frame and keeps the connection', async () => {
    const peer = await rawPeer(path);
    const bigLength = 5 << 20;
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32BE(bigLength, 0);
    header.writeUInt32BE(1, 4);
    header.writeUInt8(FrameType.Request, 8);
    peer.sock.write(header);
    const junk = Buffer.alloc(1 << 20, 0xab);
    for (let i = 0; i < 5; i++) peer.sock.write(junk);
    peer.send(3, FrameType.Request, requestBytes('test.Echo', 'Echo', Buffer.from([0, 3])));
    const first = await peer.next();
    assert.deepEqual([first.streamId, first.code], [1, GrpcCode.RESOURCE_EXHAUSTED]);
    const second = await peer.next();
    assert.deepEqual([second.streamId, second.code, [...second.payload]], [3, GrpcCode.OK, [0, 3]]);
    peer.sock.destroy();
  });

  it('answers Unimplemented to streaming (Data frames, non-unary flags) and keeps the connection', async () => {
    const peer = await rawPeer(path);
    peer.send(1, FrameType.Request, requestBytes('test.Echo', 'Echo'), FrameFlag.RemoteOpen);
    let r = await peer.next();
    assert.deepEqual([r.streamId, r.code], [1, GrpcCode.UNIMPLEMENTED]);
    peer.send(1, FrameType.Data, Buffer.from('more'));
    peer.send(1, FrameType.Data, Buffer.alloc(0), FrameFlag.RemoteClosed | FrameFlag.NoData);
    peer.send(9, FrameType.Data, Buffer.from('stray'));
    r = await peer.next();
    assert.deepEqual([r.streamId, r.code], [9, GrpcCode.UNIMPLEMENTED], 'stream 1 is answered once only');
    peer.send(11, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    r = await peer.next();
    assert.deepEqual([r.streamId, r.code], [11, GrpcCode.OK]);
    peer.sock.destroy();
  });

  it('answers InvalidArgument to an undecodable request envelope', async () => {
    const peer = await rawPeer(path);
    peer.send(1, FrameType.Request, Buffer.from([0x0a, 0x7f, 0x01]));
    const r = await peer.next();
    assert.deepEqual([r.streamId, r.code], [1, GrpcCode.INVALID_ARGUMENT]);
    peer.send(3, FrameType.Request, requestBytes('test.Echo', 'Echo'));
    assert.equal((await peer.next()).code, GrpcCode.OK);
    peer.sock.destroy();
  });

  it('aborts in-flight handler signals when the connection drops', async () => {
    const p = client.call('test.Echo', 'Wait', Buffer.alloc(0));
    while (seen.length === 0) await sleep(2);
    client.destroy();
    await assert.rejects(p, isKind('Unavailable'));
    await sleep(20);
    assert.equal(seen[0]!.signal.aborted, true);
    assert.equal((seen[0]!.signal.reason as KataError).kind, 'Unavailable');
  });
});

describe('ttrpc server sessions', () => {
  it("drops a handler's late response once its connection is gone, writing it to no later connection", async () => {
    const server = new TtrpcServer(silentLogger);
    const gate = deferred();
    const signals: AbortSignal[] = [];
    server.register('test.Agent', {
      Hold: async (payload, ctx) => {
        signals.push(ctx.signal);
        await gate.promise;
        return payload;
      },
      Quick: async (payload) => payload,
    });
    // The guest agent's case: one byte stream, a fresh Duplex and session per host connection. The first
    // Duplex records every write even after it ended, like a thin wrapper around a shared fd would.
    class SharedFdDuplex extends MemoryDuplex {
      override write(chunk: unknown): boolean {
        this.written.push(Buffer.from(chunk as Uint8Array));
        return true;
      }
    }
    const first = new SharedFdDuplex();
    const firstSession = server.serveConnection(first);
    first.feed(encodeFrame({ streamId: 1, type: FrameType.Request, payload: requestBytes('test.Agent', 'Hold', Buffer.from('one')) }));
    await sleep(5);
    assert.equal(firstSession.inFlightCalls, 1);
    first.feedEnd();
    await sleep(5);
    assert.equal(firstSession.closed, true);
    assert.equal(signals[0]!.aborted, true);
    const firstBytes = first.writtenBytes;

    const second = new MemoryDuplex();
    server.serveConnection(second);
    second.feed(encodeFrame({ streamId: 1, type: FrameType.Request, payload: requestBytes('test.Agent', 'Quick', Buffer.from('two')) }));
    await sleep(5);
    gate.resolve();
    await sleep(10);

    assert.equal(first.writtenBytes, firstBytes, 'nothing written to the dead connection');
    const frames: Frame[] = [];
    const d = new FrameDecoder({ frame: (f) => frames.push(f), oversized: () => assert.fail() });
    for (const w of second.written) d.push(w);
    assert.equal(frames.length, 1, 'only the second connection’s own answer');
    assert.equal(Response.decode(frames[0]!.payload).payload.toString(), 'two');
    await server.close({ graceMs: 50 });
  });

  it('listen removes a stale socket file, refuses a live one and a non-socket file', async () => {
    const path = nextSocketPath();
    // A stale socket: a process bound it and exited without unlinking.
    const made = spawnSync(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`,
    ]);
    assert.equal(made.status, 0);
    assert.ok((await stat(path)).isSocket());

    const server = new TtrpcServer(silentLogger);
    await server.listen(path);
    const other = new TtrpcServer(silentLogger);
    await assert.rejects(other.listen(path), isKind('AlreadyExists'));
    await server.close();
    await assert.rejects(stat(path), /ENOENT/);

    const file = join(dir, 'plain-file');
    await writeFile(file, 'x');
    await assert.rejects(new TtrpcServer(silentLogger).listen(file), isKind('FailedPrecondition'));
  });

  it('a client over a destroyed duplex fails fast with Unavailable', async () => {
    const conn = new MemoryDuplex();
    conn.destroy();
    const client = new TtrpcClient(conn, silentLogger);
    await assert.rejects(client.call('a.B', 'C', Buffer.alloc(0)), isKind('Unavailable'));
  });

  it('a client ignores responses for unknown streams and handles a server over a MemoryDuplex', async () => {
    const conn = new MemoryDuplex();
    const client = new TtrpcClient(conn, silentLogger);
    const p = client.call('a.B', 'C', Buffer.from('x'));
    const sent: Frame[] = [];
    const d = new FrameDecoder({ frame: (f) => sent.push(f), oversized: () => {} });
    for (const w of conn.written) d.push(w);
    assert.equal(sent[0]!.streamId, 1);
    assert.deepEqual(Request.decode(sent[0]!.payload).service, 'a.B');
    const respond = (streamId: number, payload: string) =>
      conn.feed(
        encodeFrame({
          streamId,
          type: FrameType.Response,
          payload: Response.encode({ status: { code: 0, message: '', details: [] }, payload: Buffer.from(payload) }).finish(),
        }),
      );
    respond(99, 'stray');
    respond(1, 'answer');
    assert.equal((await p).toString(), 'answer');
    client.destroy();
  });

  it('a client fails only the stream of an oversized response and keeps the connection', async () => {
    const conn = new MemoryDuplex();
    const client = new TtrpcClient(conn, silentLogger, { maxPayload: 64 });
    const big = client.call('a.B', 'Big', Buffer.alloc(0));
    const small = client.call('a.B', 'Small', Buffer.alloc(0));
    const response = (streamId: number, payload: Buffer) =>
      encodeFrame(
        { streamId, type: FrameType.Response, payload: Response.encode({ payload }).finish() },
        1 << 20,
      );
    conn.feed(Buffer.concat([response(1, Buffer.alloc(500, 1)), response(3, Buffer.from('ok'))]));
    await assert.rejects(big, isStatus(GrpcCode.RESOURCE_EXHAUSTED, 'ResourceExhausted'));
    assert.equal((await small).toString(), 'ok');
    assert.equal(client.closed, false);
    client.destroy();
  });
});
