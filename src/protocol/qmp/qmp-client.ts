import { EventEmitter } from 'node:events';
import net from 'node:net';
import { KataError, errors, type ErrorKind } from '../../base/errors.js';
import { silentLogger, type Logger } from '../../base/logger.js';
import {
  QmpDecoder,
  encodeQmpCommand,
  type QmpErrorInfo,
  type QmpEvent,
  type QmpGreeting,
  type QmpMessage,
} from './qmp-codec.js';

/** A QMP error reply. Still a KataError (code `KATA_QMP_ERROR`); `qmpClass` lets callers branch without text. */
export class QmpError extends KataError {
  readonly qmpClass: string;
  readonly command: string;

  constructor(command: string, info: QmpErrorInfo) {
    super(qmpClassKind(info.class), 'KATA_QMP_ERROR', `qmp ${command}: ${info.class}: ${info.desc}`);
    this.qmpClass = info.class;
    this.command = command;
  }
}

function qmpClassKind(cls: string): ErrorKind {
  switch (cls) {
    case 'CommandNotFound':
      return 'NotImplemented';
    case 'DeviceNotFound':
      return 'NotFound';
    case 'DeviceNotActive':
    case 'KVMMissingCap':
      return 'FailedPrecondition';
    default:
      return 'Internal';
  }
}

export interface QmpConnectOptions {
  /** Covers waiting for the socket to appear, the greeting and capabilities negotiation. */
  timeoutMs: number;
  signal?: AbortSignal;
  log?: Logger;
  /** Delay between attempts while the socket does not exist or refuses connections. */
  retryIntervalMs?: number;
}

export interface QmpExecuteOptions {
  /** Default 30 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

interface PendingCommand {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  cleanupSignal?: () => void;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;

/**
 * QMP client over a unix socket: concurrent commands matched by id, events to listeners, connection loss
 * rejects everything pending with Unavailable.
 */
export class QmpClient {
  readonly greeting: QmpGreeting;
  private readonly emitter = new EventEmitter();
  private readonly pending = new Map<number, PendingCommand>();
  private nextId = 1;
  private closedWith: KataError | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly decoder: QmpDecoder,
    greeting: QmpGreeting,
    private readonly log: Logger,
  ) {
    this.greeting = greeting;
    // An 'error' without listener would crash the process; errors surface as 'close'.
    this.emitter.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.resume();
    socket.on('error', (err) => this.shutdown(errors.unavailable('KATA_QMP_DISCONNECTED', `qmp: ${err.message}`, err)));
    socket.on('close', () => this.shutdown(errors.unavailable('KATA_QMP_DISCONNECTED', 'qmp: connection closed')));
  }

  /** Connects (retrying until the socket appears), reads the greeting and negotiates capabilities. */
  static async connect(path: string, opts: QmpConnectOptions): Promise<QmpClient> {
    const log = (opts.log ?? silentLogger).child({ subsystem: 'qmp' });
    const deadline = Date.now() + opts.timeoutMs;
    const retryMs = opts.retryIntervalMs ?? 10;
    const timeoutError = (what: string) =>
      errors.deadline('KATA_QMP_CONNECT_TIMEOUT', `qmp connect ${path}: ${what} within ${opts.timeoutMs} ms`);

    let attempts = 0;
    let socket: net.Socket;
    for (;;) {
      if (opts.signal?.aborted) throw errors.cancelled('KATA_CANCELLED', `qmp connect ${path}: cancelled`);
      attempts++;
      try {
        socket = await dialUnix(path);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') {
          throw errors.unavailable('KATA_QMP_CONNECT_FAILED', `qmp connect ${path}: ${(err as Error).message}`, err);
        }
        if (Date.now() + retryMs > deadline) throw timeoutError(`socket not ready (${code}, ${attempts} attempts)`);
        await delay(retryMs, opts.signal);
      }
    }
    log.debug({ path, attempts }, 'qmp socket connected');

    try {
      const { greeting, decoder, rest } = await readGreeting(socket, deadline - Date.now(), opts.signal, path);
      const client = new QmpClient(socket, decoder, greeting, log);
      for (const m of rest) client.dispatch(m);
      const remaining = Math.max(1, deadline - Date.now());
      await client.execute('qmp_capabilities', undefined, { timeoutMs: remaining, signal: opts.signal });
      return client;
    } catch (err) {
      socket.destroy();
      if (err instanceof KataError && err.code === 'KATA_QMP_TIMEOUT') throw timeoutError('no greeting/capabilities');
      throw err;
    }
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Runs one command; resolves with its `return` value. Commands may overlap freely. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    if (this.closedWith) {
      return Promise.reject(
        errors.unavailable('KATA_QMP_DISCONNECTED', `qmp ${command}: ${this.closedWith.message}`, this.closedWith),
      );
    }
    if (opts.signal?.aborted) return Promise.reject(errors.cancelled('KATA_CANCELLED', `qmp ${command}: cancelled`));
    const id = this.nextId++;
    let line: string;
    try {
      line = encodeQmpCommand(command, args, id);
    } catch (err) {
      return Promise.reject(errors.invalid('KATA_QMP_INVALID_COMMAND', (err as Error).message));
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    return new Promise<T>((resolve, reject) => {
      const entry: PendingCommand = {
        command,
        resolve: resolve as (v: unknown) => void,
        reject,
        timer: setTimeout(() => {
          this.settle(id)?.reject(errors.deadline('KATA_QMP_TIMEOUT', `qmp ${command}: no reply within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      if (opts.signal) {
        const onAbort = () => this.settle(id)?.reject(errors.cancelled('KATA_CANCELLED', `qmp ${command}: cancelled`));
        opts.signal.addEventListener('abort', onAbort, { once: true });
        entry.cleanupSignal = () => opts.signal?.removeEventListener('abort', onAbort);
      }
      this.pending.set(id, entry);
      this.log.trace({ command, id }, 'qmp execute');
      this.socket.write(line);
    });
  }

  on(type: 'event', listener: (ev: QmpEvent) => void): this;
  on(type: 'close', listener: (err: KataError) => void): this;
  on(type: 'event' | 'close', listener: (arg: never) => void): this {
    this.emitter.on(type, listener as (...args: unknown[]) => void);
    return this;
  }

  off(type: 'event', listener: (ev: QmpEvent) => void): this;
  off(type: 'close', listener: (err: KataError) => void): this;
  off(type: 'event' | 'close', listener: (arg: never) => void): this {
    this.emitter.off(type, listener as (...args: unknown[]) => void);
    return this;
  }

  /**
   * Resolves with the next event called `name` (and accepted by `match`). Call it BEFORE the command that
   * causes the event, or the event may already be gone.
   */
  waitEvent(
    name: string,
    timeoutMs: number,
    opts: { match?: (ev: QmpEvent) => boolean; signal?: AbortSignal } = {},
  ): Promise<QmpEvent> {
    return new Promise<QmpEvent>((resolve, reject) => {
      if (this.closedWith) {
        reject(errors.unavailable('KATA_QMP_DISCONNECTED', `qmp wait ${name}: ${this.closedWith.message}`));
        return;
      }
      const done = () => {
        clearTimeout(timer);
        this.emitter.off('event', onEvent);
        this.emitter.off('close', onClose);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const onEvent = (ev: QmpEvent) => {
        if (ev.event !== name || (opts.match && !opts.match(ev))) return;
        done();
        resolve(ev);
      };
      const onClose = (err: KataError) => {
        done();
        reject(errors.unavailable('KATA_QMP_DISCONNECTED', `qmp wait ${name}: ${err.message}`, err));
      };
      const onAbort = () => {
        done();
        reject(errors.cancelled('KATA_CANCELLED', `qmp wait ${name}: cancelled`));
      };
      const timer = setTimeout(() => {
        done();
        reject(errors.deadline('KATA_QMP_TIMEOUT', `qmp wait ${name}: no event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.emitter.on('event', onEvent);
      this.emitter.on('close', onClose);
      if (opts.signal) {
        if (opts.signal.aborted) onAbort();
        else opts.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  /** Closes the connection; pending commands fail with Unavailable. Idempotent. */
  close(): void {
    this.shutdown(errors.unavailable('KATA_QMP_DISCONNECTED', 'qmp: client closed'));
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    for (const m of this.decoder.push(chunk)) this.dispatch(m);
  }

  private dispatch(m: QmpMessage): void {
    switch (m.type) {
      case 'return':
      case 'error': {
        const id = typeof m.id === 'number' ? m.id : undefined;
        const entry = id === undefined ? undefined : this.settle(id);
        if (!entry) {
          this.log.debug({ id: m.id, type: m.type }, 'qmp reply for no pending command (late or foreign)');
          return;
        }
        if (m.type === 'return') entry.resolve(m.value);
        else entry.reject(new QmpError(entry.command, m.error));
        return;
      }
      case 'event':
        this.log.trace({ event: m.event.event }, 'qmp event');
        for (const l of this.emitter.listeners('event')) {
          try {
            (l as (ev: QmpEvent) => void)(m.event);
          } catch (err) {
            this.log.warn({ err, event: m.event.event }, 'qmp event listener threw');
          }
        }
        return;
      case 'greeting':
        this.log.warn({}, 'qmp: unexpected second greeting');
        return;
      case 'invalid':
        this.log.warn({ reason: m.reason, line: m.line.slice(0, 200) }, 'qmp: invalid message ignored');
        return;
    }
  }

  private settle(id: number): PendingCommand | undefined {
    const entry = this.pending.get(id);
    if (!entry) return undefined;
    this.pending.delete(id);
    clearTimeout(entry.timer);
    entry.cleanupSignal?.();
    return entry;
  }

  private shutdown(reason: KataError): void {
    if (this.closedWith) return;
    this.closedWith = reason;
    for (const id of [...this.pending.keys()]) {
      const entry = this.settle(id)!;
      entry.reject(errors.unavailable('KATA_QMP_DISCONNECTED', `qmp ${entry.command}: ${reason.message}`, reason));
    }
    this.log.debug({ reason: reason.message }, 'qmp closed');
    this.emitter.emit('close', reason);
  }
}

/** Like sleep, but resolves early on abort and leaves no listener behind (retry loops call it many times). */
function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

function dialUnix(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path });
    const onError = (err: Error) => {
      s.destroy();
      reject(err);
    };
    s.once('error', onError);
    s.once('connect', () => {
      s.off('error', onError);
      resolve(s);
    });
  });
}

function readGreeting(
  socket: net.Socket,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  path: string,
): Promise<{ greeting: QmpGreeting; decoder: QmpDecoder; rest: QmpMessage[] }> {
  const decoder = new QmpDecoder();
  return new Promise((resolve, reject) => {
    const finish = (fn: () => void) => {
      clearTimeout(timer);
      socket.off('data', onData);
      // Hold further bytes until the client attaches its own reader.
      socket.pause();
      socket.off('close', onClose);
      socket.off('error', onError);
      signal?.removeEventListener('abort', onAbort);
      fn();
    };
    const onData = (chunk: Buffer) => {
      const msgs = decoder.push(chunk);
      if (msgs.length === 0) return;
      const [first, ...rest] = msgs;
      if (first!.type !== 'greeting') {
        finish(() =>
          reject(errors.unavailable('KATA_QMP_PROTOCOL', `qmp connect ${path}: expected greeting, got ${first!.type}`)),
        );
        return;
      }
      finish(() => resolve({ greeting: first.greeting, decoder, rest }));
    };
    const onClose = () =>
      finish(() => reject(errors.unavailable('KATA_QMP_DISCONNECTED', `qmp connect ${path}: closed before greeting`)));
    const onError = (err: Error) =>
      finish(() => reject(errors.unavailable('KATA_QMP_DISCONNECTED', `qmp connect ${path}: ${err.message}`, err)));
    const onAbort = () => finish(() => reject(errors.cancelled('KATA_CANCELLED', `qmp connect ${path}: cancelled`)));
    const timer = setTimeout(
      () => finish(() => reject(errors.deadline('KATA_QMP_TIMEOUT', `qmp connect ${path}: no greeting`))),
      Math.max(1, timeoutMs),
    );
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onError);
    if (signal) {
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
  });
}
