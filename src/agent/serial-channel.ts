import { open, readdir, readFile, type FileHandle } from 'node:fs/promises';
import { Duplex } from 'node:stream';
import { errors } from '../base/errors.js';
import type { Logger } from '../base/logger.js';

const PORTS_DIR = '/sys/class/virtio-ports';

/** Finds the virtio-serial port the host named `name` (no udev in the guest: read sysfs). */
export async function findSerialPort(name: string): Promise<string> {
  const ports = await readdir(PORTS_DIR).catch(() => [] as string[]);
  for (const p of ports) {
    const n = (await readFile(`${PORTS_DIR}/${p}/name`, 'utf8').catch(() => '')).trim();
    if (n === name) return `/dev/${p}`;
  }
  throw errors.notFound('KATA_NO_CHANNEL', `no virtio-serial port named ${name} (ports: ${ports.join(', ') || 'none'})`);
}

/**
 * One host connection on the port. The port is a single byte stream across host reconnects, so each
 * connection gets its own Duplex: when the host goes away, the current one ends, its in-flight replies are
 * dropped by the ttrpc session, and the next bytes start a new connection.
 */
class SerialConnection extends Duplex {
  constructor(private readonly fh: FileHandle) {
    super({ allowHalfOpen: false });
  }

  override _read(): void {
    // Data is pushed by the port's read loop.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    writeAll(this.fh, chunk).then(() => cb(), cb);
  }
}

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    off += bytesWritten;
  }
}

/**
 * Reads the port forever, handing each host connection to `onConnection`. A read that returns 0 bytes means
 * the host side is not connected: wait (with backoff) instead of spinning.
 */
export async function serveSerialPort(
  path: string,
  onConnection: (conn: Duplex) => void,
  log: Logger,
): Promise<never> {
  const fh = await open(path, 'r+');
  const buf = Buffer.allocUnsafe(256 * 1024);
  let conn: SerialConnection | undefined;
  let idleMs = 1;
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, null);
    if (bytesRead === 0) {
      if (conn) {
        log.info({}, 'host disconnected from agent port');
        conn.push(null);
        conn.destroy();
        conn = undefined;
      }
      await new Promise((r) => setTimeout(r, idleMs));
      idleMs = Math.min(idleMs * 2, 20);
      continue;
    }
    idleMs = 1;
    if (!conn) {
      conn = new SerialConnection(fh);
      log.debug({}, 'host connected to agent port');
      onConnection(conn);
    }
    conn.push(Buffer.from(buf.subarray(0, bytesRead)));
  }
}
