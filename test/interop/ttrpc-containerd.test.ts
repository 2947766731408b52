/**
 * Interop: our ttrpc client against the real containerd ttrpc server (containerd 1.6.20 from Debian).
 * Starts a private containerd (temp root/state/sockets/opt), needs root; skipped otherwise.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { KataError } from '../../src/base/errors.js';
import { silentLogger } from '../../src/base/logger.js';
import { Any } from '../../src/protocol/gen/google/protobuf/any.js';
import { Timestamp } from '../../src/protocol/gen/google/protobuf/timestamp.js';
import { Request, Response } from '../../src/protocol/gen/ttrpc.js';
import { TtrpcClient } from '../../src/protocol/ttrpc/client.js';
import { FrameDecoder, FrameType, HEADER_BYTES, encodeFrame, type Frame } from '../../src/protocol/ttrpc/frame-codec.js';
import { GrpcCode, TtrpcStatusError } from '../../src/protocol/ttrpc/status.js';

const EVENTS = 'containerd.services.events.ttrpc.v1.Events';

function onPath(bin: string): string | undefined {
  for (const d of (process.env['PATH'] ?? '').split(delimiter)) {
    if (d && existsSync(join(d, bin))) return join(d, bin);
  }
  return undefined;
}

const containerdBin = onPath('containerd');
const skip = process.getuid?.() !== 0 ? 'needs root' : containerdBin === undefined ? 'containerd not on PATH' : false;

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

/** A valid `ForwardRequest{envelope}`: containerd 1.6.20 panics on a Forward without an envelope. */
function forwardRequest(): Uint8Array {
  const envelope = new BinaryWriter();
  Timestamp.encode({ seconds: Math.floor(Date.now() / 1000), nanos: 0 }, envelope.uint32(10).fork()).join();
  envelope.uint32(18).string('default');
  envelope.uint32(26).string('/kata-ts/interop');
  Any.encode(
    { typeUrl: 'types.googleapis.com/google.protobuf.Empty', value: Buffer.alloc(0) },
    envelope.uint32(34).fork(),
  ).join();
  return new BinaryWriter().uint32(10).bytes(envelope.finish()).finish();
}

describe('ttrpc interop with containerd', { skip }, () => {
  let dir: string;
  let containerd: ChildProcess | undefined;
  let ttrpcPath: string;
  let stderrTail = '';
  const optExisted = existsSync('/opt/containerd');

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kata-ttrpc-ctd-'));
    ttrpcPath = join(dir, 'containerd.sock.ttrpc');
    const config = join(dir, 'config.toml');
    await writeFile(
      config,
      [
        'version = 2',
        `root = "${dir}/root"`,
        `state = "${dir}/state"`,
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        '[grpc]',
        `  address = "${dir}/containerd.sock"`,
        '[ttrpc]',
        `  address = "${ttrpcPath}"`,
        '[debug]',
        '  address = ""',
        '[metrics]',
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        `  path = "${dir}/opt"`,
        '',
      ].join('\n'),
    );
    containerd = spawn(containerdBin!, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    containerd.stderr!.on('data', (c: Buffer) => {
      stderrTail = (stderrTail + c.toString()).slice(-8192);
    });
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (containerd.exitCode !== null) assert.fail(`containerd exited early:\n${stderrTail}`);
      try {
        (await connect(ttrpcPath)).destroy();
        break;
      } catch {
        if (Date.now() > deadline) assert.fail(`containerd ttrpc socket not ready:\n${stderrTail}`);
        await sleep(20);
      }
    }
  });

  after(async () => {
    if (containerd && containerd.exitCode === null && containerd.signalCode === null) {
      const exited = new Promise<void>((resolve) => containerd!.once('exit', () => resolve()));
      containerd.kill('SIGTERM');
      const timer = setTimeout(() => containerd!.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    if (dir) {
      const mounts = await readFile('/proc/self/mounts', 'utf8');
      assert.ok(!mounts.includes(dir), 'containerd left a mount behind');
      await rm(dir, { recursive: true, force: true });
    }
    assert.equal(existsSync('/opt/containerd'), optExisted, 'containerd touched /opt/containerd');
  });

  it('an unknown method and an unknown service answer Unimplemented through our client', async () => {
    const client = new TtrpcClient(await connect(ttrpcPath), silentLogger);
    try {
      await assert.rejects(client.call(EVENTS, 'NoSuchMethod', Buffer.alloc(0), { timeoutMs: 5000 }), (err: unknown) => {
        assert.ok(err instanceof TtrpcStatusError);
        assert.equal(err.grpcCode, GrpcCode.UNIMPLEMENTED);
        assert.equal(err.kind, 'NotImplemented');
        assert.match(err.message, /method NoSuchMethod/);
        return true;
      });
      await assert.rejects(client.call('no.such.Service', 'Forward', Buffer.alloc(0)), (err: unknown) => {
        assert.ok(err instanceof TtrpcStatusError);
        assert.equal(err.grpcCode, GrpcCode.UNIMPLEMENTED);
        assert.match(err.message, /service no\.such\.Service/);
        return true;
      });
    } finally {
      client.destroy();
    }
  });

  it('a real Forward succeeds, with metadata and a deadline, and concurrent calls multiplex', async () => {
    const client = new TtrpcClient(await connect(ttrpcPath), silentLogger);
    try {
      const calls = Array.from({ length: 10 }, (_, i) =>
        i % 2 === 0
          ? client.call(EVENTS, 'Forward', forwardRequest(), {
              timeoutMs: 5000,
              metadata: { 'containerd-namespace-ttrpc': 'default' },
            })
          : client.call(EVENTS, `Missing${i}`, Buffer.alloc(0)).catch((err: KataError) => err),
      );
      const results = await Promise.all(calls);
      results.forEach((r, i) => {
        if (i % 2 === 0) assert.deepEqual(r, Buffer.alloc(0));
        else assert.match((r as KataError).message, new RegExp(`method Missing${i}`));
      });
      await client.close();
      assert.equal(client.closed, true);
    } finally {
      client.destroy();
    }
  });

  it('frame level: even stream id and oversized frame answer with status, the connection stays up', async () => {
    const sock = await connect(ttrpcPath);
    try {
      const frames: Frame[] = [];
      const decoder = new FrameDecoder({ frame: (f) => frames.push(f), oversized: () => assert.fail('oversized') });
      sock.on('data', (c: Buffer) => decoder.push(c));
      const req = Request.encode({ service: 'no.Such', method: 'X', payload: Buffer.alloc(0), timeoutNano: 0, metadata: [] }).finish();
      sock.write(encodeFrame({ streamId: 2, type: FrameType.Request, payload: req }));
      const header = Buffer.alloc(HEADER_BYTES);
      header.writeUInt32BE(5 << 20, 0);
      header.writeUInt32BE(3, 4);
      header.writeUInt8(FrameType.Request, 8);
      sock.write(header);
      sock.write(Buffer.alloc(5 << 20));
      sock.write(encodeFrame({ streamId: 5, type: FrameType.Request, payload: req }));
      const deadline = Date.now() + 5000;
      while (frames.length < 3 && Date.now() < deadline) await sleep(10);
      const got = frames.map((f) => [f.streamId, f.type, Response.decode(f.payload).status?.code]);
      assert.deepEqual(got, [
        [2, FrameType.Response, GrpcCode.INVALID_ARGUMENT],
        [3, FrameType.Response, GrpcCode.RESOURCE_EXHAUSTED],
        [5, FrameType.Response, GrpcCode.UNIMPLEMENTED],
      ]);
    } finally {
      sock.destroy();
    }
  });
});
