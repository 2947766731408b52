import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { errors, type KataError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import { Request, Response } from '../gen/ttrpc.js';
import { FrameDecoder, FrameType, MAX_PAYLOAD, encodeFrame, type Frame } from './frame-codec.js';
import { GrpcCode, statusFromError } from './status.js';

export interface CallContext {
  service: string;
  method: string;
  streamId: number;
  /** Request metadata, keys lower-cased; for a repeated key the last value wins. */
  metadata: Map<string, string>;
  /** Aborted when the deadline passes (reason: DeadlineExceeded) or the connection ends (reason: Unavailable). */
  signal: AbortSignal;
  /** Epoch milliseconds, from the request's `timeout_nano`. */
  deadline?: number;
}

export type UnaryHandler = (payload: Buffer, ctx: CallContext) => Promise<Uint8Array>;

/** How a session finds handlers; the server's registry, read at call time. */
export type HandlerLookup = (service: string, method: string) => UnaryHandler | 'no-service' | 'no-method';

interface InFlight {
  controller: AbortController;
  timer: NodeJS.Timeout | undefined;
}

/** Node timers overflow above this and fire at once. */
const MAX_TIMER_MS = 0x7fffffff;
/** Streams already answered for Data frames; bounded so a peer cannot grow it without limit. */
const MAX_REFUSED_STREAMS = 1024;
/** Status messages are truncated to this many characters so an error text can never make a frame too large. */
const MAX_STATUS_MESSAGE_CHARS = 16 * 1024;

/**
 * One connection's ttrpc server state: stream-id bookkeeping and in-flight calls. When its connection ends,
 * every in-flight handler's signal aborts and whatever they return later is dropped, never written anywhere:
 * a guest agent that reuses one byte stream across host reconnects makes a fresh Duplex and session each time.
 *
 * Emits 'close' once the connection is gone.
 */
export class ServerSession extends EventEmitter {
  private readonly log: Logger;
  private readonly maxPayload: number;
  private readonly decoder: FrameDecoder;
  private readonly inFlight = new Map<number, InFlight>();
  private readonly refusedStreams = new Set<number>();
  private lastStreamId = 0;
  private closing = false;
  private isClosed = false;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly conn: Duplex,
    private readonly lookup: HandlerLookup,
    log: Logger,
    opts: { maxPayload?: number } = {},
  ) {
    super();
    this.log = log;
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
      this.closing = true;
      queueMicrotask(() => this.shutdown('connection already destroyed'));
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Handlers running now. */
  get inFlightCalls(): number {
    return this.inFlight.size;
  }

  /** Registers `cb` for 'close'; returns a function that unregisters it. Fires at once if already closed. */
  onClose(cb: () => void): () => void {
    if (this.isClosed) {
      queueMicrotask(cb);
      return () => {};
    }
    this.once('close', cb);
    return () => this.off('close', cb);
  }

  /**
   * Graceful: new requests get Unavailable; with `abortInFlight` the running handlers' signals abort (reason
   * Unavailable) so long polls return; their responses are still written. Then the connection is ended, and
   * destroyed if it has not closed within `graceMs`.
   */
  async close(opts: { abortInFlight?: boolean; graceMs?: number } = {}): Promise<void> {
    this.closing = true;
    if (this.isClosed) return;
    const graceMs = opts.graceMs ?? 1000;
    const fallback = setTimeout(() => this.destroy(), graceMs);
    try {
      if (opts.abortInFlight) {
        const reason = errors.unavailable('TTRPC_SHUTDOWN', 'ttrpc server shutting down');
        for (const call of this.inFlight.values()) call.controller.abort(reason);
      }
      if (this.inFlight.size > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
      if (this.isClosed) return;
      const closed = new Promise<void>((resolve) => this.onClose(resolve));
      this.conn.end();
      await closed;
    } finally {
      clearTimeout(fallback);
    }
  }

  /** Forceful: aborts in-flight handlers (their results are dropped) and destroys the connection. */
  destroy(): void {
    this.shutdown('session destroyed');
    this.conn.destroy();
  }

  private readonly onData = (chunk: Buffer | string): void => {
    try {
      this.decoder.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    } catch (err) {
      this.log.error({ err }, 'ttrpc server frame handling failed');
    }
  };

  private readonly onEnd = (): void => {
    // The client sends nothing more. Like containerd/ttrpc, end the session: nobody waits for the answers.
    this.shutdown('connection closed by peer');
    if (!this.conn.writableEnded) this.conn.end();
  };

  private readonly onError = (err: Error): void => {
    this.log.debug({ err }, 'ttrpc server connection error');
    this.shutdown(`connection error: ${err.message}`);
  };

  private readonly onConnClose = (): void => {
    this.shutdown('connection closed');
  };

  private onFrame(f: Frame): void {
    switch (f.type) {
      case FrameType.Request:
        this.onRequest(f);
        return;
      case FrameType.Data:
        this.refuseStream(f.streamId, GrpcCode.UNIMPLEMENTED, 'streaming is not supported: unary calls only');
        return;
      default:
        this.log.debug({ streamId: f.streamId, type: f.type }, 'ttrpc server: ignoring frame of unexpected type');
    }
  }

  private onOversized(streamId: number, type: number, length: number): void {
    this.log.warn({ streamId, type, length }, 'ttrpc server: discarding oversized frame');
    if (type === FrameType.Request && streamId % 2 === 1 && streamId > this.lastStreamId) {
      this.lastStreamId = streamId;
    }
    this.refuseStream(
      streamId,
      GrpcCode.RESOURCE_EXHAUSTED,
      `message length ${length} exceeds maximum message size of ${this.maxPayload}`,
    );
  }

  /** Answers a stream with an error status once; later frames of that stream are ignored. */
  private refuseStream(streamId: number, code: GrpcCode, message: string): void {
    if (this.refusedStreams.has(streamId)) return;
    if (this.refusedStreams.size >= MAX_REFUSED_STREAMS) this.refusedStreams.clear();
    this.refusedStreams.add(streamId);
    this.respond(streamId, code, message);
  }

  private onRequest(f: Frame): void {
    const streamId = f.streamId;
    if (this.closing) {
      this.respond(streamId, GrpcCode.UNAVAILABLE, 'ttrpc server shutting down');
      return;
    }
    if (streamId % 2 !== 1) {
      this.respond(streamId, GrpcCode.INVALID_ARGUMENT, 'stream id must be odd for client initiated streams');
      return;
    }
    if (streamId <= this.lastStreamId) {
      this.respond(streamId, GrpcCode.INVALID_ARGUMENT, 'stream id cannot be reused and must increase');
      return;
    }
    this.lastStreamId = streamId;
    if (f.flags !== 0) {
      this.refuseStream(streamId, GrpcCode.UNIMPLEMENTED, 'streaming is not supported: unary calls only');
      return;
    }

    let req: Request;
    try {
      req = Request.decode(f.payload);
    } catch (err) {
      this.log.debug({ err, streamId }, 'ttrpc server: undecodable request envelope');
      this.respond(streamId, GrpcCode.INVALID_ARGUMENT, 'undecodable ttrpc request');
      return;
    }
    const handler = this.lookup(req.service, req.method);
    if (handler === 'no-service') {
      this.respond(streamId, GrpcCode.UNIMPLEMENTED, `service ${req.service}`);
      return;
    }
    if (handler === 'no-method') {
      this.respond(streamId, GrpcCode.UNIMPLEMENTED, `method ${req.method}`);
      return;
    }
    this.dispatch(streamId, req, handler);
  }

  private dispatch(streamId: number, req: Request, handler: UnaryHandler): void {
    const controller = new AbortController();
    const metadata = new Map<string, string>();
    for (const kv of req.metadata) metadata.set(kv.key.toLowerCase(), kv.value);
    let deadline: number | undefined;
    let timer: NodeJS.Timeout | undefined;
    if (req.timeoutNano > 0) {
      const timeoutMs = req.timeoutNano / 1e6;
      deadline = Date.now() + timeoutMs;
      if (timeoutMs <= MAX_TIMER_MS) {
        timer = setTimeout(
          () =>
            controller.abort(
              errors.deadline('TTRPC_DEADLINE', `${req.service}/${req.method}: deadline of ${timeoutMs} ms exceeded`),
            ),
          timeoutMs,
        );
      }
    }
    this.inFlight.set(streamId, { controller, timer });
    const ctx: CallContext = {
      service: req.service,
      method: req.method,
      streamId,
      metadata,
      signal: controller.signal,
      ...(deadline === undefined ? {} : { deadline }),
    };
    this.log.trace({ streamId, service: req.service, method: req.method }, 'ttrpc call');

    const run = async (): Promise<Uint8Array> => handler(req.payload, ctx);
    run().then(
      (payload) => this.finish(streamId, GrpcCode.OK, '', payload),
      (err: unknown) => {
        const status = statusFromError(err);
        if (status.code === GrpcCode.UNKNOWN) {
          this.log.debug({ err, service: req.service, method: req.method }, 'ttrpc handler failed');
        }
        this.finish(streamId, status.code, status.message);
      },
    );
  }

  private finish(streamId: number, code: number, message: string, payload?: Uint8Array): void {
    const call = this.inFlight.get(streamId);
    if (call?.timer) clearTimeout(call.timer);
    this.inFlight.delete(streamId);
    if (this.isClosed) {
      this.log.debug({ streamId }, 'ttrpc server: dropping response, its connection is gone');
    } else {
      this.respond(streamId, code, message, payload);
    }
    if (this.inFlight.size === 0) this.notifyDrained();
  }

  private respond(streamId: number, code: number, message: string, payload?: Uint8Array): void {
    if (this.isClosed || this.conn.destroyed || this.conn.writableEnded) return;
    let frame: Buffer;
    try {
      frame = this.encodeResponse(streamId, code, message, payload);
    } catch (err) {
      const status = statusFromError(err);
      frame = this.encodeResponse(streamId, status.code, status.message);
    }
    this.conn.write(frame);
  }

  private encodeResponse(streamId: number, code: number, message: string, payload?: Uint8Array): Buffer {
    // An OK response carries no status at all, byte for byte what containerd/ttrpc sends.
    const body = Response.encode({
      status: code === GrpcCode.OK ? undefined : { code, message: message.slice(0, MAX_STATUS_MESSAGE_CHARS), details: [] },
      payload: payload ? Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength) : Buffer.alloc(0),
    }).finish();
    return encodeFrame({ streamId, type: FrameType.Response, payload: body }, this.maxPayload);
  }

  private shutdown(why: string): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closing = true;
    this.conn.off('data', this.onData);
    this.decoder.reset();
    const reason: KataError = errors.unavailable('TTRPC_CLOSED', `ttrpc connection ended: ${why}`);
    for (const call of this.inFlight.values()) {
      if (call.timer) clearTimeout(call.timer);
      call.controller.abort(reason);
    }
    this.log.debug({ inFlight: this.inFlight.size, why }, 'ttrpc session closed');
    this.notifyDrained();
    this.emit('close');
  }

  private notifyDrained(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
