import { errors } from './errors.js';

/** Resolves with `p`, or rejects with DeadlineExceeded after `timeoutMs` (or Cancelled when `signal` aborts). */
export async function withDeadline<T>(
  p: Promise<T>,
  timeoutMs: number,
  what: string,
  signal?: AbortSignal,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(errors.deadline('KATA_DEADLINE', `${what}: no answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    if (signal) {
      onAbort = () => reject(errors.cancelled('KATA_CANCELLED', `${what}: cancelled`));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
    if (signal && onAbort) signal.removeEventListener('abort', onAbort);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        reject(errors.cancelled('KATA_CANCELLED', 'sleep cancelled'));
      },
      { once: true },
    );
  });
}
