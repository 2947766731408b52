/**
 * One error class for the whole runtime. `kind` is a closed set; edges (CLI exit codes, ttrpc status)
 * translate kinds, never message text.
 */
export type ErrorKind =
  | 'NotFound'
  | 'AlreadyExists'
  | 'InvalidArgument'
  | 'FailedPrecondition'
  | 'Unavailable'
  | 'DeadlineExceeded'
  | 'Cancelled'
  | 'NotImplemented'
  | 'ResourceExhausted'
  | 'Internal';

export class KataError extends Error {
  readonly kind: ErrorKind;
  /** Stable machine-readable code, e.g. `KATA_CONFIG_INVALID`. */
  readonly code: string;

  constructor(kind: ErrorKind, code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KataError';
    this.kind = kind;
    this.code = code;
  }
}

/** Adds a short context phrase ("start vm: ...") while keeping kind and code of a KataError cause. */
export function wrapError(context: string, err: unknown): KataError {
  if (err instanceof KataError) {
    return new KataError(err.kind, err.code, `${context}: ${err.message}`, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new KataError('Internal', 'KATA_INTERNAL', `${context}: ${message}`, { cause: err });
}

export function isKind(err: unknown, kind: ErrorKind): boolean {
  return err instanceof KataError && err.kind === kind;
}

export const errors = {
  notFound: (code: string, msg: string, cause?: unknown) => new KataError('NotFound', code, msg, { cause }),
  alreadyExists: (code: string, msg: string) => new KataError('AlreadyExists', code, msg),
  invalid: (code: string, msg: string, cause?: unknown) => new KataError('InvalidArgument', code, msg, { cause }),
  precondition: (code: string, msg: string, cause?: unknown) =>
    new KataError('FailedPrecondition', code, msg, { cause }),
  unavailable: (code: string, msg: string, cause?: unknown) => new KataError('Unavailable', code, msg, { cause }),
  deadline: (code: string, msg: string, cause?: unknown) => new KataError('DeadlineExceeded', code, msg, { cause }),
  cancelled: (code: string, msg: string, cause?: unknown) => new KataError('Cancelled', code, msg, { cause }),
  notImplemented: (code: string, msg: string) => new KataError('NotImplemented', code, msg),
  exhausted: (code: string, msg: string) => new KataError('ResourceExhausted', code, msg),
  internal: (code: string, msg: string, cause?: unknown) => new KataError('Internal', code, msg, { cause }),
};
