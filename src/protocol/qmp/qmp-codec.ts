/**
 * QMP (QEMU Machine Protocol) codec, sans I/O: it is fed bytes and returns parsed messages; it never touches a
 * socket. QMP is newline-delimited JSON in both directions (QEMU ends lines with "\r\n").
 */

/** Command ids are chosen by the client; QEMU echoes any JSON value back, we only send numbers. */
export type QmpId = number | string;

export interface QmpVersionInfo {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  version: QmpVersionInfo;
  capabilities: string[];
}

export interface QmpErrorInfo {
  /** QMP error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`. */
  class: string;
  desc: string;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export type QmpMessage =
  | { type: 'greeting'; greeting: QmpGreeting }
  | { type: 'return'; id?: QmpId; value: unknown }
  | { type: 'error'; id?: QmpId; error: QmpErrorInfo }
  | { type: 'event'; event: QmpEvent }
  /** A line that is not valid QMP; the caller decides (the client logs it and goes on). */
  | { type: 'invalid'; line: string; reason: string };

/** Refuse to buffer more than this without a newline: QEMU never sends lines anywhere near it. */
export const QMP_MAX_LINE_BYTES = 16 * 1024 * 1024;

const NEWLINE = 0x0a;

export class QmpDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  /** Feeds a chunk of any size (split anywhere, even inside a UTF-8 sequence); returns complete messages. */
  push(chunk: Buffer | string): QmpMessage[] {
    let buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    const out: QmpMessage[] = [];
    for (;;) {
      const nl = buf.indexOf(NEWLINE);
      if (nl < 0) break;
      const head = buf.subarray(0, nl);
      buf = buf.subarray(nl + 1);
      const line = this.pendingBytes > 0 ? Buffer.concat([...this.pending, head]) : head;
      this.pending = [];
      this.pendingBytes = 0;
      const msg = parseQmpLine(line.toString('utf8'));
      if (msg) out.push(msg);
    }
    if (buf.length > 0) {
      this.pendingBytes += buf.length;
      if (this.pendingBytes > QMP_MAX_LINE_BYTES) {
        this.pending = [];
        this.pendingBytes = 0;
        out.push({ type: 'invalid', line: '', reason: `line longer than ${QMP_MAX_LINE_BYTES} bytes dropped` });
      } else {
        // Copy: the caller may reuse its buffer.
        this.pending.push(Buffer.from(buf));
      }
    }
    return out;
  }

  /** Bytes held back waiting for a newline. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is QmpId {
  return typeof v === 'number' || typeof v === 'string';
}

/** Parses one line; returns undefined for blank lines. */
export function parseQmpLine(raw: string): QmpMessage | undefined {
  const line = raw.trim();
  if (line === '') return undefined;
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (err) {
    return { type: 'invalid', line, reason: `bad JSON: ${(err as Error).message}` };
  }
  if (!isRecord(v)) return { type: 'invalid', line, reason: 'not a JSON object' };
  const id = isId(v.id) ? v.id : undefined;
  if ('QMP' in v) {
    const g = v.QMP;
    if (!isRecord(g) || !isRecord(g.version)) return { type: 'invalid', line, reason: 'malformed greeting' };
    const caps = Array.isArray(g.capabilities) ? g.capabilities.filter((c) => typeof c === 'string') : [];
    return { type: 'greeting', greeting: { version: g.version as unknown as QmpVersionInfo, capabilities: caps } };
  }
  if ('return' in v) {
    return id === undefined ? { type: 'return', value: v.return } : { type: 'return', id, value: v.return };
  }
  if ('error' in v) {
    const e = v.error;
    if (!isRecord(e)) return { type: 'invalid', line, reason: 'malformed error' };
    const error: QmpErrorInfo = {
      class: typeof e.class === 'string' ? e.class : 'GenericError',
      desc: typeof e.desc === 'string' ? e.desc : JSON.stringify(e),
    };
    return id === undefined ? { type: 'error', error } : { type: 'error', id, error };
  }
  if (typeof v.event === 'string') {
    const event: QmpEvent = { event: v.event };
    if (isRecord(v.data)) event.data = v.data;
    if (isRecord(v.timestamp)) event.timestamp = v.timestamp as unknown as QmpEvent['timestamp'];
    return { type: 'event', event };
  }
  return { type: 'invalid', line, reason: 'unknown message kind' };
}

/** Encodes one command as a QMP line (with its newline). */
export function encodeQmpCommand(command: string, args: Record<string, unknown> | undefined, id: QmpId): string {
  if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(command)) {
    throw new TypeError(`invalid QMP command name: ${JSON.stringify(command)}`);
  }
  const msg: Record<string, unknown> = { execute: command };
  if (args !== undefined) msg.arguments = args;
  msg.id = id;
  // JSON.stringify never emits a raw newline (they are escaped inside strings), so one command is one line.
  return `${JSON.stringify(msg)}\n`;
}
