import { Duplex } from 'node:stream';

/**
 * An in-process Duplex for tests and in-process transports: `feed` delivers bytes to the reader side, and
 * everything written is kept in `written` (and announced through 'written').
 */
export class MemoryDuplex extends Duplex {
  readonly written: Buffer[] = [];

  constructor() {
    super({ allowHalfOpen: true });
  }

  feed(bytes: Uint8Array): void {
    this.push(Buffer.from(bytes));
  }

  /** Signals end of input (the peer closed its side). */
  feedEnd(): void {
    this.push(null);
  }

  get writtenBytes(): number {
    return this.written.reduce((n, b) => n + b.length, 0);
  }

  override _read(): void {}

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.written.push(chunk);
    this.emit('written', chunk);
    callback();
  }
}
