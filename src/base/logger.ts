import { pino } from 'pino';

/** The logging contract libraries receive. pino loggers satisfy it; tests may pass `silentLogger`. */
export interface Logger {
  trace(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';

/** Structured JSON logs to a file descriptor (stderr by default: in the shim, stdout is the protocol's). */
export function createLogger(opts: { name: string; level?: LogLevel; fd?: number }): Logger {
  return pino(
    { name: opts.name, level: opts.level ?? 'info', base: { pid: process.pid } },
    pino.destination({ fd: opts.fd ?? 2, sync: true }),
  );
}

export const silentLogger: Logger = pino({ level: 'silent' });

/** Raises (or lowers) a logger's level after the fact, e.g. when the configuration asks for debug logs. */
export function setLogLevel(log: Logger, level: LogLevel): void {
  if ('level' in log) (log as { level: string }).level = level;
}
