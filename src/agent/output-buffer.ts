import type { Readable } from 'node:stream';

/**
 * Buffers one output stream of a guest process for the host's ReadStdout/ReadStderr long polls.
 * A read waits until there is data or the stream ended; an empty result means end of stream.
 * When more than `highWaterBytes` wait unread, the source is paused so a silent host cannot make the
 * agent buffer without bound.
 */
export class OutputBuffer {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private waiters: (() => void)[] = [];
  private source?: Readable;

  constructor(private readonly highWaterBytes = 1 << 20) {}

  attach(source: Readable): void {
    this.source = source;
    source.on('data', (chunk: Buffer) => this.push(chunk));
    source.on('end', () => this.end());
    source.on('error', () => this.end());
    source.on('close', () => this.end());
  }

  push(chunk: Buffer): void {
    if (this.ended || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes > this.highWaterBytes) this.source?.pause();
    this.wake();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.wake();
  }

  /** What is buffered now, without consuming it (for error messages). */
  peek(maxBytes: number): string {
    return Buffer.concat(this.chunks).subarray(0, maxBytes).toString('utf8');
  }

  get isEnded(): boolean {
    return this.ended && this.bytes === 0;
  }

  /** Up to `maxBytes` bytes, waiting for some; empty at end of stream or when `signal` aborts. */
  async read(maxBytes: number, signal?: AbortSignal): Promise<Buffer> {
    while (this.bytes === 0 && !this.ended) {
      if (signal?.aborted) return Buffer.alloc(0);
      await new Promise<void>((resolve) => {
        const done = () => {
          signal?.removeEventListener('abort', done);
          resolve();
        };
        this.waiters.push(done);
        signal?.addEventListener('abort', done, { once: true });
      });
    }
    if (this.bytes === 0) return Buffer.alloc(0);
    const limit = Math.max(1, maxBytes);
    const parts: Buffer[] = [];
    let taken = 0;
    while (this.chunks.length > 0 && taken < limit) {
      const head = this.chunks[0]!;
      const want = limit - taken;
      if (head.length <= want) {
        parts.push(head);
        taken += head.length;
        this.chunks.shift();
      } else {
        parts.push(head.subarray(0, want));
        this.chunks[0] = head.subarray(want);
        taken += want;
      }
    }
    this.bytes -= taken;
    if (this.bytes <= this.highWaterBytes) this.source?.resume();
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
