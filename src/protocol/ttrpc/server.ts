import { lstat, chmod, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server } from 'node:net';
import type { Duplex } from 'node:stream';
import { KataError, errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { MessageCodec } from './message-codec.js';
import { ServerSession, type CallContext, type UnaryHandler } from './server-session.js';

export { ServerSession, type CallContext, type UnaryHandler } from './server-session.js';

/**
 * A unary ttrpc server: a registry of services plus one ServerSession per connection. Connections come from
 * `listen` (a unix socket) or from the caller through `serveConnection` (any Duplex, e.g. a virtio-serial port).
 */
export class TtrpcServer {
  private readonly log: Logger;
  private readonly services = new Map<string, Map<string, UnaryHandler>>();
  private readonly sessions = new Set<ServerSession>();
  private readonly maxPayload: number | undefined;
  private listener: Server | undefined;
  private socketPath: string | undefined;
  private closed = false;

  constructor(log: Logger, opts: { maxPayload?: number } = {}) {
    this.log = log.child({ subsystem: 'ttrpc-server' });
    this.maxPayload = opts.maxPayload;
  }

  /** Adds a service (fully qualified name, e.g. `grpc.AgentService`); a name may be registered once. */
  register(service: string, methods: Record<string, UnaryHandler>): void {
    if (this.services.has(service)) {
      throw new KataError('AlreadyExists', 'TTRPC_DUPLICATE_SERVICE', `ttrpc service ${service} already registered`);
    }
    this.services.set(service, new Map(Object.entries(methods)));
  }

  /** Serves ttrpc on `conn` until it ends. */
  serveConnection(conn: Duplex): ServerSession {
    if (this.closed) {
      conn.destroy();
      throw errors.unavailable('TTRPC_SERVER_CLOSED', 'ttrpc server is closed');
    }
    const session = new ServerSession(
      conn,
      (service, method) => {
        const methods = this.services.get(service);
        if (!methods) return 'no-service';
        return methods.get(method) ?? 'no-method';
      },
      this.log,
      this.maxPayload === undefined ? {} : { maxPayload: this.maxPayload },
    );
    this.sessions.add(session);
    session.onClose(() => this.sessions.delete(session));
    return session;
  }

  /**
   * Listens on a unix socket at `socketPath` (mode 0600). A stale socket file (nobody accepting) is removed
   * first; a live one, or a file that is not a socket, is refused.
   */
  async listen(socketPath: string): Promise<void> {
    if (this.closed) throw errors.unavailable('TTRPC_SERVER_CLOSED', 'ttrpc server is closed');
    if (this.listener) throw errors.precondition('TTRPC_ALREADY_LISTENING', `ttrpc server already listens`);
    await removeStaleSocket(socketPath);
    const listener = createServer((sock) => {
      try {
        this.serveConnection(sock);
      } catch (err) {
        this.log.debug({ err }, 'ttrpc server: refused connection');
      }
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(socketPath, () => {
        listener.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      throw errors.unavailable('TTRPC_LISTEN', `listen on ${socketPath}: ${(err as Error).message}`, err);
    });
    listener.on('error', (err) => this.log.error({ err, socketPath }, 'ttrpc listener error'));
    this.listener = listener;
    this.socketPath = socketPath;
    try {
      await chmod(socketPath, 0o600);
    } catch (err) {
      await this.close();
      throw errors.internal('TTRPC_LISTEN', `chmod ${socketPath}: ${(err as Error).message}`, err);
    }
    this.log.debug({ socketPath }, 'ttrpc server listening');
  }

  /**
   * Stops accepting connections, aborts the signals of running handlers so long polls return, writes their
   * answers, then ends every connection (destroying any still open after `graceMs`) and removes the socket file.
   */
  async close(opts: { graceMs?: number } = {}): Promise<void> {
    this.closed = true;
    const listener = this.listener;
    this.listener = undefined;
    const listenerClosed = listener
      ? new Promise<void>((resolve) => listener.close(() => resolve()))
      : Promise.resolve();
    await Promise.all(
      [...this.sessions].map((s) => s.close({ abortInFlight: true, graceMs: opts.graceMs ?? 1000 })),
    );
    await listenerClosed;
    if (this.socketPath) {
      await unlink(this.socketPath).catch(() => {});
      this.socketPath = undefined;
    }
  }
}

/**
 * Typed adapter from ts-proto codecs: the request payload is decoded (failure answers Internal, as
 * containerd/ttrpc does for an unmarshal error) and the result encoded.
 */
export function unaryHandler<Req, Res>(
  reqCodec: MessageCodec<Req>,
  resCodec: MessageCodec<Res>,
  fn: (req: Req, ctx: CallContext) => Promise<Res>,
): UnaryHandler {
  return async (payload, ctx) => {
    let req: Req;
    try {
      req = reqCodec.decode(payload);
    } catch (err) {
      throw errors.internal('TTRPC_BAD_REQUEST', `${ctx.method}: unmarshal request: ${(err as Error).message}`, err);
    }
    return resCodec.encode(await fn(req, ctx)).finish();
  };
}

async function removeStaleSocket(socketPath: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(socketPath)).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw errors.internal('TTRPC_LISTEN', `stat ${socketPath}: ${(err as Error).message}`, err);
  }
  if (!isSocket) {
    throw errors.precondition('TTRPC_LISTEN', `${socketPath} exists and is not a socket`);
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new KataError('AlreadyExists', 'TTRPC_SOCKET_IN_USE', `${socketPath} is in use by a live server`);
  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw errors.internal('TTRPC_LISTEN', `remove stale ${socketPath}: ${err.message}`, err);
  });
}
