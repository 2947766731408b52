import { errors } from '../base/errors.js';

export interface ListenAddress {
  host: string;
  port: number;
}

/**
 * Parses `host:port`, `[v6]:port` or `:port` (Go's form for "every interface", which becomes `0.0.0.0`).
 * Port 0 asks the system for a free port.
 */
export function parseListenAddress(text: string): ListenAddress {
  const bad = (why: string) => errors.invalid('KATA_MONITOR_BAD_ADDRESS', `--listen-address ${JSON.stringify(text)}: ${why}`);
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw bad('expected host:port, [ipv6]:port or :port');
  const port = Number(m[3]);
  if (port > 65535) throw bad('port above 65535');
  const host = m[1] ?? (m[2] === '' ? '0.0.0.0' : m[2]!);
  return { host, port };
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** `host:port` for logs and URLs (IPv6 in brackets). */
export function formatAddress(a: ListenAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
