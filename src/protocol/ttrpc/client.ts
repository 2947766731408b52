import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { KataError, errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import { Request, Response } from '../gen/ttrpc.js';
import { FrameDecoder, FrameType, MAX_PAYLOAD, encodeFrame, type Frame } from './frame-codec.js';
import type { MessageCodec } from './message-codec.js';
import { GrpcCode, TtrpcStatusError } from './status.js';

export interface CallOptions {
  /** Sent as `timeout_nano` and enforced locally: the call rejects with DeadlineExceeded when it passes. */
  timeoutMs?: number;
  /** Aborting rejects the call with Cancelled; a response arriving later is dropped. */
  signal?: AbortSignal;
  /** ttrpc metadata; keys are lower-cased as containerd/ttrpc does. */
  metadata?: Record<string, string>;
}


interface PendingCall {
  what: string;
  resolve(payload: Buffer): void;
  reject(err: KataError): void;
}

/** Largest `timeout_nano` we send: stays a safe integer. */
const MAX_TIMEOUT_MS = Math.floor(Number.MAX_SAFE_INTEGER / 1e6);
/** Node timers overflow above this and fire at once. */
const MAX_TIMER_MS = 0x7fffffff;
const MAX_STREAM_ID = 0xffffffff;

/**
 * A ttrpc client over any Duplex (unix socket, or a stream wrapping a virtio-serial port). Unary calls only;
 * each gets the next odd stream id, and any number run concurrently on the one connection.
 *
 * Emits 'close' (with the KataError that ended it, if any) once, when the connection is gone; every pending
 * call then rejects with Unavailable and later calls fail at once.
 */
export class TtrpcClient extends EventEmitter {
  private readonly log: Logger;
  private readonly maxPayload: number;
  private readonly decoder: FrameDecoder;
  private readonly pending = new Map<number, PendingCall>();
  private nextStreamId = 1;
  private closing = false;
  private closedWith: KataError | undefined;
  private isClosed = false;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly conn: Duplex,
    log: Logger,
    opts: { maxPayload?: number } = {},
  ) {
    super();
    this.log = log.child({ subsystem: 'ttrpc-client' });
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD;
    this.decoder = new FrameDecoder(
      {
        frame: (f) => this.onFrame(f),
        oversized: (streamId, type, length) => this.onOversized(streamId, type, length),
      },
      { maxPayload: this.maxPayload },
    );
    conn.on('data', this.onData);
    conn.on('end', this.onEnd);
    conn.on('error', this.onError);
    conn.on('close', this.onConnClose);
    if (conn.destroyed) {
      // Fail calls at once; 'close' is emitted after the caller had a chance to listen.
      this.closing = true;
      queueMicrotask(() => this.shutdown(this.unavailable('connection already destroyed')));
    }
  }

  /** True once the connection is gone (or close/destroy was called and finished). */
  get closed(): boolean {
    return this.isClosed;
  }

  /** Number of calls awaiting a response. */
  get pendingCalls(): number {
    return this.pending.size;
  }

  /** Registers `cb` for 'close'; returns a function that unregisters it. Fires at once if already closed. */
  onClose(cb: (err?: KataError) => void): () => void {
    if (this.isClosed) {
      queueMicrotask(() => cb(this.closedWith));
      return () => {};
    }
    this.once('close', cb);
    return () => this.off('close', cb);
  }

  async call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Buffer> {
    const what = `ttrpc ${service}/${method}`;
    if (this.isClosed || this.closing) {
      throw this.closedWith
        ? new KataError('Unavailable', 'TTRPC_CLOSED', `${what}: ${this.closedWith.message}`, {
            cause: this.closedWith,
          })
        : this.unavailable(`${what}: client closed`);
    }
    if (opts.signal?.aborted) throw errors.cancelled('TTRPC_CANCELLED', `${what}: cancelled`, opts.signal.reason);
    if (this.nextStreamId > MAX_STREAM_ID) throw this.unavailable(`${what}: stream ids exhausted, reconnect`);

    let timeoutNano = 0;
    if (opts.timeoutMs !== undefined) {
      if (!(opts.timeoutMs >= 0)) throw errors.invalid('TTRPC_BAD_TIMEOUT', `${what}: bad timeoutMs ${opts.timeoutMs}`);
      // timeout_nano 0 means "no deadline" on the wire; a zero timeout still sends the smallest deadline.
      timeoutNano = Math.max(1, Math.round(Math.min(opts.timeoutMs, MAX_TIMEOUT_MS) * 1e6));
    }
    const metadata = Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key: key.toLowerCase(), value }));
    const envelope = Request.encode({
      service,
      method,
      payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
      timeoutNano,
      metadata,
    }).finish();

    const streamId = this.nextStreamId;
    let frame: Buffer;
    try {
      frame = encodeFrame({ streamId, type: FrameType.Request, payload: envelope }, this.maxPayload);
    } catch (err) {
      throw err instanceof KataError ? new KataError(err.kind, err.code, `${what}: ${err.message}`) : err;
    }
    this.nextStreamId += 2;

    return new Promise<Buffer>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => {
        settle();
        reject(errors.cancelled('TTRPC_CANCELLED', `${what}: cancelled`, opts.signal?.reason));
      };
      const settle = (): void => {
        this.pending.delete(streamId);
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        if (this.pending.size === 0) this.notifyDrained();
      };
      this.pending.set(streamId, {
        what,
        resolve: (p) => {
          settle();
          resolve(p);
        },
        reject: (e) => {
          settle();
          reject(e);
        },
      });
      if (opts.timeoutMs !== undefined && opts.timeoutMs <= MAX_TIMER_MS) {
        timer = setTimeout(() => {
          settle();
          reject(errors.deadline('TTRPC_DEADLINE', `${what}: no response within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.conn.write(frame);
    });
  }

  /**
   * Graceful: refuses new calls, waits for the pending ones to settle (they end by response, deadline, abort
   * or connection loss), then ends the connection and resolves once it is closed.
   */
  async close(): Promise<void> {
    this.closing = true;
    if (this.pending.size > 0 && !this.isClosed) {
      await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    }
    if (this.isClosed) return;
    const closed = new Promise<void>((resolve) => this.onClose(() => resolve()));
    this.conn.end();
    // A peer that never closes its side must not keep us waiting.
    const fallback = setTimeout(() => this.conn.destroy(), 1000);
    await closed;
    clearTimeout(fallback);
  }

  /** Forceful: rejects every pending call with Unavailable and destroys the connection. */
  destroy(): void {
    this.shutdown(this.unavailable('client destroyed'));
    this.conn.destroy();
  }

  private readonly onData = (chunk: Buffer | string): void => {
    try {
      this.decoder.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    } catch (err) {
      // Only our own frame handlers can throw here; keep the connection but say so.
      this.log.error({ err }, 'ttrpc client frame handling failed');
    }
  };

  private readonly onEnd = (): void => {
    // The server will send nothing more: no pending call can complete.
    this.shutdown(this.unavailable('connection closed by peer'));
    this.conn.destroy();
  };

  private readonly onError = (err: Error): void => {
    this.shutdown(this.unavailable(`connection error: ${err.message}`, err));
  };

  private readonly onConnClose = (): void => {
    this.shutdown(this.unavailable('connection closed'));
  };

  private onFrame(f: Frame): void {
    if (f.type !== FrameType.Response) {
      // Data frames and server-initiated requests belong to streaming, which this client does not open.
      this.log.debug({ streamId: f.streamId, type: f.type }, 'ttrpc client: ignoring non-response frame');
      return;
    }
    const call = this.pending.get(f.streamId);
    if (!call) {
      this.log.debug({ streamId: f.streamId }, 'ttrpc client: dropping response for no pending call');
      return;
    }
    let res: Response;
    try {
      res = Response.decode(f.payload);
    } catch (err) {
      call.reject(errors.internal('TTRPC_BAD_RESPONSE', `${call.what}: undecodable response`, err));
      return;
    }
    const code = res.status?.code ?? GrpcCode.OK;
    if (code !== GrpcCode.OK) {
      call.reject(new TtrpcStatusError(code, `${call.what}: ${res.status?.message ?? ''}`));
      return;
    }
    call.resolve(res.payload);
  }

  private onOversized(streamId: number, type: number, length: number): void {
    const call = type === FrameType.Response ? this.pending.get(streamId) : undefined;
    this.log.warn({ streamId, type, length }, 'ttrpc client: discarding oversized frame');
    call?.reject(
      new TtrpcStatusError(
        GrpcCode.RESOURCE_EXHAUSTED,
        `${call.what}: response length ${length} exceeds maximum message size of ${this.maxPayload}`,
      ),
    );
  }

  private shutdown(reason: KataError): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedWith = reason;
    this.conn.off('data', this.onData);
    this.decoder.reset();
    const calls = [...this.pending.values()];
    for (const call of calls) {
      call.reject(new KataError('Unavailable', 'TTRPC_CLOSED', `${call.what}: ${reason.message}`, { cause: reason }));
    }
    this.notifyDrained();
    this.log.debug({ pending: calls.length, reason: reason.message }, 'ttrpc client closed');
    this.emit('close', reason);
  }

  private notifyDrained(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  private unavailable(message: string, cause?: unknown): KataError {
    return errors.unavailable('TTRPC_CLOSED', message, cause);
  }
}

/** A typed unary call with ts-proto codecs: `callTyped(c, 'grpc.Health', 'Check', CheckRequest, {...}, HealthCheckResponse)`. */
export async function callTyped<Req, Res>(
  client: TtrpcClient,
  service: string,
  method: string,
  reqCodec: MessageCodec<Req>,
  req: Req,
  resCodec: MessageCodec<Res>,
  opts?: CallOptions,
): Promise<Res> {
  const bytes = await client.call(service, method, reqCodec.encode(req).finish(), opts);
  try {
    return resCodec.decode(bytes);
  } catch (err) {
    throw errors.internal('TTRPC_BAD_RESPONSE', `ttrpc ${service}/${method}: undecodable response payload`, err);
  }
}
