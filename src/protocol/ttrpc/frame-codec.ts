import { errors } from '../../base/errors.js';

/**
 * ttrpc framing, sans-I/O: bytes in, frames out through callbacks; nothing here touches a socket.
 * Header (10 bytes): uint32 BE payload length, uint32 BE stream id, uint8 type, uint8 flags.
 */

export const HEADER_BYTES = 10;
/** containerd/ttrpc `messageLengthMax`. */
export const MAX_PAYLOAD = 4 << 20;

export const FrameType = {
  Request: 0x01,
  Response: 0x02,
  Data: 0x03,
} as const;

export const FrameFlag = {
  /** Request/Data: the sender will send no more data on this stream. */
  RemoteClosed: 0x01,
  /** Request: Data frames will follow. */
  RemoteOpen: 0x02,
  /** Data: the frame carries no message (a zero-length payload is otherwise an empty message). */
  NoData: 0x04,
} as const;

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  payload: Buffer;
}

export interface FrameInput {
  streamId: number;
  type: number;
  flags?: number;
  payload: Uint8Array;
}

function isUint(n: number, max: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= max;
}

/** One frame as a single Buffer (header + payload), ready for one `write`. */
export function encodeFrame(frame: FrameInput, maxPayload: number = MAX_PAYLOAD): Buffer {
  const flags = frame.flags ?? 0;
  if (!isUint(frame.streamId, 0xffffffff)) {
    throw errors.invalid('TTRPC_BAD_FRAME', `encode frame: stream id ${frame.streamId} is not a uint32`);
  }
  if (!isUint(frame.type, 0xff) || !isUint(flags, 0xff)) {
    throw errors.invalid('TTRPC_BAD_FRAME', `encode frame: type ${frame.type} or flags ${flags} is not a uint8`);
  }
  const length = frame.payload.byteLength;
  if (length > maxPayload) {
    throw errors.exhausted(
      'TTRPC_MESSAGE_TOO_LARGE',
      `encode frame: message length ${length} exceeds maximum message size of ${maxPayload}`,
    );
  }
  const out = Buffer.allocUnsafe(HEADER_BYTES + length);
  out.writeUInt32BE(length, 0);
  out.writeUInt32BE(frame.streamId, 4);
  out.writeUInt8(frame.type, 8);
  out.writeUInt8(flags, 9);
  out.set(frame.payload, HEADER_BYTES);
  return out;
}

export interface FrameHandlers {
  frame(f: Frame): void;
  /** A frame whose declared length exceeds the limit; its payload is being discarded as it arrives. */
  oversized(streamId: number, type: number, length: number): void;
}

type DecodeState = 'header' | 'payload' | 'skip';

/**
 * Incremental frame decoder. Accepts any chunking; never buffers more than one header plus one payload of at
 * most `maxPayload` bytes (held as received, never preallocated from the declared length, so a lying header
 * costs nothing). An oversized frame is reported at once and its payload skipped without buffering.
 *
 * Arbitrary input never throws. If a handler throws, the decoder still consumes the rest of the chunk (state
 * stays in step with the byte stream) and rethrows the first handler error at the end of `push`.
 */
export class FrameDecoder {
  private readonly maxPayload: number;
  private state: DecodeState = 'header';
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  private length = 0;
  private streamId = 0;
  private type = 0;
  private flags = 0;
  private parts: Buffer[] = [];
  private partsBytes = 0;
  private skipRemaining = 0;
  /** Bumped by reset(): a push interrupted by a reset from inside a handler stops consuming its chunk. */
  private generation = 0;

  constructor(
    private readonly handlers: FrameHandlers,
    opts: { maxPayload?: number } = {},
  ) {
    const max = opts.maxPayload ?? MAX_PAYLOAD;
    if (!isUint(max, 0xffffffff)) {
      throw errors.invalid('TTRPC_BAD_LIMIT', `frame decoder: maxPayload ${max} is not a uint32`);
    }
    this.maxPayload = max;
  }

  /** Bytes currently held for an incomplete header or payload. */
  get bufferedBytes(): number {
    return this.headerFill + this.partsBytes;
  }

  /** Drops any partial frame; the next byte pushed is read as the start of a header. */
  reset(): void {
    this.generation++;
    this.state = 'header';
    this.headerFill = 0;
    this.parts = [];
    this.partsBytes = 0;
    this.skipRemaining = 0;
  }

  push(chunk: Uint8Array): void {
    const generation = this.generation;
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let pos = 0;
    let firstError: { err: unknown } | undefined;
    const emit = (fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        firstError ??= { err };
      }
    };

    while (pos < buf.length && generation === this.generation) {
      if (this.state === 'header') {
        const n = Math.min(HEADER_BYTES - this.headerFill, buf.length - pos);
        buf.copy(this.header, this.headerFill, pos, pos + n);
        this.headerFill += n;
        pos += n;
        if (this.headerFill < HEADER_BYTES) break;
        this.headerFill = 0;
        this.length = this.header.readUInt32BE(0);
        this.streamId = this.header.readUInt32BE(4);
        this.type = this.header.readUInt8(8);
        this.flags = this.header.readUInt8(9);
        if (this.length > this.maxPayload) {
          this.state = 'skip';
          this.skipRemaining = this.length;
          const { streamId, type, length } = this;
          emit(() => this.handlers.oversized(streamId, type, length));
        } else if (this.length === 0) {
          this.emitFrame(Buffer.alloc(0), emit);
        } else {
          this.state = 'payload';
        }
      } else if (this.state === 'payload') {
        const n = Math.min(this.length - this.partsBytes, buf.length - pos);
        // Copy: the caller may reuse its chunk, and a small frame must not pin a large chunk.
        this.parts.push(Buffer.from(buf.subarray(pos, pos + n)));
        this.partsBytes += n;
        pos += n;
        if (this.partsBytes === this.length) {
          const payload = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.length);
          this.parts = [];
          this.partsBytes = 0;
          this.emitFrame(payload, emit);
        }
      } else {
        const n = Math.min(this.skipRemaining, buf.length - pos);
        this.skipRemaining -= n;
        pos += n;
        if (this.skipRemaining === 0) this.state = 'header';
      }
    }

    if (firstError) throw firstError.err;
  }

  private emitFrame(payload: Buffer, emit: (fn: () => void) => void): void {
    this.state = 'header';
    const frame: Frame = { streamId: this.streamId, type: this.type, flags: this.flags, payload };
    emit(() => this.handlers.frame(frame));
  }
}
