import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { KataError } from '../../base/errors.js';
import { QmpClient, QmpError } from './qmp-client.js';

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\r\n';

type Handler = (cmd: { execute: string; arguments?: Record<string, unknown>; id?: unknown }, conn: net.Socket) => void;

/** A fake QEMU: greets, answers qmp_capabilities, hands every other command to `handler`. */
class FakeQmpServer {
  readonly received: string[] = [];
  readonly conns = new Set<net.Socket>();
  private server: net.Server;

  constructor(
    readonly sockPath: string,
    private handler: Handler,
    private opts: { greet?: boolean } = {},
  ) {
    this.server = net.createServer((conn) => {
      this.conns.add(conn);
      conn.on('close', () => this.conns.delete(conn));
      conn.on('error', () => undefined);
      if (this.opts.greet !== false) conn.write(GREETING);
      let buf = '';
      conn.on('data', (d) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const cmd = JSON.parse(line);
          this.received.push(cmd.execute);
          if (cmd.execute === 'qmp_capabilities') reply(conn, { return: {}, id: cmd.id });
          else this.handler(cmd, conn);
        }
      });
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.sockPath, resolve));
  }

  close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function reply(conn: net.Socket, msg: unknown): void {
  conn.write(`${JSON.stringify(msg)}\r\n`);
}

let dir: string;
let servers: FakeQmpServer[];
let clients: QmpClient[];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-test-'));
  servers = [];
  clients = [];
});

afterEach(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(fs.existsSync(dir), false);
});

async function startServer(handler: Handler, opts?: { greet?: boolean }): Promise<FakeQmpServer> {
  const s = new FakeQmpServer(path.join(dir, 'qmp.sock'), handler, opts);
  servers.push(s);
  await s.listen();
  return s;
}

async function connect(sockPath: string, timeoutMs = 2000, signal?: AbortSignal): Promise<QmpClient> {
  const c = await QmpClient.connect(sockPath, { timeoutMs, signal });
  clients.push(c);
  return c;
}

test('connect reads the greeting and negotiates capabilities first', async () => {
  const s = await startServer((cmd, conn) => reply(conn, { return: { status: 'running' }, id: cmd.id }));
  const c = await connect(s.sockPath);
  assert.equal(c.greeting.version.qemu.major, 7);
  assert.deepEqual(await c.execute('query-status'), { status: 'running' });
  assert.deepEqual(s.received, ['qmp_capabilities', 'query-status']);
});

test('connect retries until the socket appears', async () => {
  const sockPath = path.join(dir, 'qmp.sock');
  const t0 = Date.now();
  setTimeout(() => void startServer((cmd, conn) => reply(conn, { return: 1, id: cmd.id })), 150);
  const c = await connect(sockPath);
  assert.ok(Date.now() - t0 >= 140);
  assert.equal(await c.execute('x'), 1);
});

test('connect gives up at the deadline when no socket appears', async () => {
  const t0 = Date.now();
  await assert.rejects(QmpClient.connect(path.join(dir, 'none.sock'), { timeoutMs: 150 }), (e: unknown) => {
    assert.ok(e instanceof KataError);
    assert.equal(e.kind, 'DeadlineExceeded');
    assert.equal(e.code, 'KATA_QMP_CONNECT_TIMEOUT');
    return true;
  });
  const took = Date.now() - t0;
  assert.ok(took >= 140 && took < 1000, `took ${took} ms`);
});

test('connect gives up at the deadline when the server never greets', async () => {
  const s = await startServer(() => undefined, { greet: false });
  await assert.rejects(QmpClient.connect(s.sockPath, { timeoutMs: 150 }), { code: 'KATA_QMP_CONNECT_TIMEOUT' });
});

test('connect fails when the peer closes before the greeting', async () => {
  const sockPath = path.join(dir, 'qmp.sock');
  const server = net.createServer((conn) => conn.destroy());
  await new Promise<void>((r) => server.listen(sockPath, r));
  try {
    await assert.rejects(QmpClient.connect(sockPath, { timeoutMs: 1000 }), { kind: 'Unavailable' });
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('connect can be aborted while waiting for the socket', async () => {
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  await assert.rejects(
    QmpClient.connect(path.join(dir, 'none.sock'), { timeoutMs: 5000, signal: ac.signal }),
    { kind: 'Cancelled' },
  );
});

test('concurrent commands are matched by id even when answered out of order', async () => {
  const held: { id: unknown; conn: net.Socket; name: string }[] = [];
  const s = await startServer((cmd, conn) => {
    held.push({ id: cmd.id, conn, name: cmd.execute });
    if (held.length === 3) for (const h of held.reverse()) reply(h.conn, { return: h.name, id: h.id });
  });
  const c = await connect(s.sockPath);
  const results = await Promise.all([c.execute('a'), c.execute('b'), c.execute('c')]);
  assert.deepEqual(results, ['a', 'b', 'c']);
});

test('an error reply becomes a QmpError with class and desc', async () => {
  const s = await startServer((cmd, conn) =>
    reply(conn, { id: cmd.id, error: { class: 'CommandNotFound', desc: 'The command foo has not been found' } }),
  );
  const c = await connect(s.sockPath);
  await assert.rejects(c.execute('foo'), (e: unknown) => {
    assert.ok(e instanceof QmpError);
    assert.ok(e instanceof KataError);
    assert.equal(e.code, 'KATA_QMP_ERROR');
    assert.equal(e.qmpClass, 'CommandNotFound');
    assert.equal(e.kind, 'NotImplemented');
    assert.match(e.message, /CommandNotFound.*The command foo has not been found/);
    return true;
  });
});

test('events reach listeners and waitEvent', async () => {
  const s = await startServer((cmd, conn) => {
    reply(conn, { event: 'STOP', timestamp: { seconds: 1, microseconds: 0 } });
    reply(conn, { event: 'DEVICE_DELETED', data: { device: 'other' } });
    reply(conn, { event: 'DEVICE_DELETED', data: { device: 'b1' } });
    reply(conn, { return: {}, id: cmd.id });
  });
  const c = await connect(s.sockPath);
  const seen: string[] = [];
  c.on('event', (ev) => seen.push(ev.event));
  const stop = c.waitEvent('STOP', 1000);
  const del = c.waitEvent('DEVICE_DELETED', 1000, { match: (ev) => ev.data?.device === 'b1' });
  await c.execute('stop');
  assert.equal((await stop).event, 'STOP');
  assert.deepEqual((await del).data, { device: 'b1' });
  assert.deepEqual(seen, ['STOP', 'DEVICE_DELETED', 'DEVICE_DELETED']);
});

test('a throwing event listener does not break the client', async () => {
  const s = await startServer((cmd, conn) => {
    reply(conn, { event: 'STOP' });
    reply(conn, { return: 'ok', id: cmd.id });
  });
  const c = await connect(s.sockPath);
  c.on('event', () => {
    throw new Error('boom');
  });
  assert.equal(await c.execute('stop'), 'ok');
});

test('waitEvent times out', async () => {
  const s = await startServer(() => undefined);
  const c = await connect(s.sockPath);
  await assert.rejects(c.waitEvent('NEVER', 50), { kind: 'DeadlineExceeded', code: 'KATA_QMP_TIMEOUT' });
});

test('a command times out, a late reply is ignored, the client keeps working', async () => {
  let first: { id: unknown; conn: net.Socket } | undefined;
  const s = await startServer((cmd, conn) => {
    if (!first) {
      first = { id: cmd.id, conn };
      return;
    }
    reply(first.conn, { return: 'late', id: first.id });
    reply(conn, { return: 'second', id: cmd.id });
  });
  const c = await connect(s.sockPath);
  await assert.rejects(c.execute('slow', undefined, { timeoutMs: 50 }), { kind: 'DeadlineExceeded' });
  assert.equal(await c.execute('fast'), 'second');
});

test('connection loss rejects pending commands and waiters with Unavailable', async () => {
  const s = await startServer((_cmd, conn) => setTimeout(() => conn.destroy(), 20));
  const c = await connect(s.sockPath);
  let closed = false;
  c.on('close', () => (closed = true));
  const waiter = c.waitEvent('SHUTDOWN', 5000);
  await assert.rejects(c.execute('quit'), { kind: 'Unavailable', code: 'KATA_QMP_DISCONNECTED' });
  await assert.rejects(waiter, { kind: 'Unavailable' });
  assert.equal(closed, true);
  assert.equal(c.closed, true);
  await assert.rejects(c.execute('query-status'), { kind: 'Unavailable' });
  await assert.rejects(c.waitEvent('X', 100), { kind: 'Unavailable' });
});

test('close() rejects pending commands', async () => {
  const s = await startServer(() => undefined);
  const c = await connect(s.sockPath);
  const p = c.execute('hang');
  c.close();
  c.close();
  await assert.rejects(p, { kind: 'Unavailable' });
});

test('a command can be aborted', async () => {
  const s = await startServer(() => undefined);
  const c = await connect(s.sockPath);
  const ac = new AbortController();
  const p = c.execute('hang', undefined, { signal: ac.signal });
  ac.abort();
  await assert.rejects(p, { kind: 'Cancelled' });
});

test('arguments are sent as given', async () => {
  let got: unknown;
  const s = await startServer((cmd, conn) => {
    got = cmd.arguments;
    reply(conn, { return: {}, id: cmd.id });
  });
  const c = await connect(s.sockPath);
  await c.execute('migrate', { uri: 'exec:cat > /tmp/x' });
  assert.deepEqual(got, { uri: 'exec:cat > /tmp/x' });
  await assert.rejects(c.execute('bad name'), { kind: 'InvalidArgument' });
});
