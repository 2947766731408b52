import type { Logger, LogLevel } from '../base/logger.js';

const LEVELS: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, silent: 100 };

/**
 * JSON-lines logger for the guest. The agent does not bundle pino: every kilobyte of bundle costs start-up
 * time under TCG, and this is all the agent needs.
 */
export function createGuestLogger(level: LogLevel, write: (line: string) => void, bindings: object = {}): Logger {
  const min = LEVELS[level];
  const emit = (lvl: LogLevel) => (obj: object, msg?: string) => {
    if (LEVELS[lvl] < min) return;
    const rec: Record<string, unknown> = { level: lvl, time: Date.now(), ...bindings, ...obj, msg };
    const err = rec.err;
    if (err instanceof Error) rec.err = { message: err.message, code: (err as { code?: string }).code };
    write(JSON.stringify(rec) + '\n');
  };
  return {
    trace: emit('trace'),
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    child: (b) => createGuestLogger(level, write, { ...bindings, ...b }),
  };
}
