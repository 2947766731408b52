import { constants, open as openCb } from 'node:fs';
import { open } from 'node:fs/promises';
import { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { errors } from '../base/errors.js';

/**
 * containerd's stdio paths: fifo paths (bare or `fifo://`), `file://` paths, or `binary://` loggers.
 * Fifos are opened the way Kata does, never blocking: stdout/stderr read-write, stdin read-only non-blocking.
 */
export interface OpenedStdio {
  stream: Readable | Writable;
  close(): void;
}

function parse(uri: string): { kind: 'fifo' | 'file'; path: string } {
  if (uri.startsWith('binary://')) {
    throw errors.notImplemented('KATA_STDIO_BINARY', `binary:// log drivers are not supported (${uri})`);
  }
  if (uri.startsWith('file://')) return { kind: 'file', path: decodeURIComponent(new URL(uri).pathname) };
  const path = uri.startsWith('fifo://') ? uri.slice('fifo://'.length) : uri;
  if (!path.startsWith('/')) throw errors.invalid('KATA_STDIO_PATH', `stdio path ${JSON.stringify(uri)} is not absolute`);
  return { kind: 'fifo', path };
}

export async function openStdin(uri: string): Promise<OpenedStdio> {
  const { path } = parse(uri);
  // Non-blocking, like Kata: a client that opens its end (ctr, CRI) already counts as a writer while its own
  // open waits for us, so reads see its data and then EOF when it closes. Never a blocked thread.
  const fd = await openFd(path, constants.O_RDONLY | constants.O_NONBLOCK).catch((err) => {
    throw errors.notFound('KATA_STDIO_OPEN', `open stdio fifo ${path}: ${err.message}`, err);
  });
  const sock = new Socket({ fd, readable: true, writable: false });
  sock.on('error', () => undefined);
  return { stream: sock, close: () => sock.destroy() };
}

export async function openOutput(uri: string): Promise<OpenedStdio> {
  const { kind, path } = parse(uri);
  if (kind === 'file') {
    const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND, 0o640);
    const ws = fh.createWriteStream();
    return { stream: ws, close: () => ws.end() };
  }
  const fd = await openFd(path, constants.O_RDWR | constants.O_NONBLOCK).catch((err) => {
    throw errors.notFound('KATA_STDIO_OPEN', `open stdio fifo ${path}: ${err.message}`, err);
  });
  const sock = new Socket({ fd, readable: false, writable: true });
  sock.on('error', () => undefined);
  return { stream: sock, close: () => sock.end() };
}

/**
 * A blocking fifo open runs in the thread pool and cannot be interrupted; on abort we open the fifo
 * ourselves read-write, which completes the pending open, then close it.
 */
/** A raw descriptor (a FileHandle would close it when collected, under the socket that uses it). */
function openFd(path: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) => openCb(path, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
}

