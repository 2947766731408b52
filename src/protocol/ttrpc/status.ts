import { KataError, type ErrorKind } from '../../base/errors.js';

/** The standard gRPC status codes, as carried in `google.rpc.Status.code` of a ttrpc Response. */
export enum GrpcCode {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

const codeByKind: Record<ErrorKind, GrpcCode> = {
  NotFound: GrpcCode.NOT_FOUND,
  AlreadyExists: GrpcCode.ALREADY_EXISTS,
  InvalidArgument: GrpcCode.INVALID_ARGUMENT,
  FailedPrecondition: GrpcCode.FAILED_PRECONDITION,
  Unavailable: GrpcCode.UNAVAILABLE,
  DeadlineExceeded: GrpcCode.DEADLINE_EXCEEDED,
  Cancelled: GrpcCode.CANCELLED,
  NotImplemented: GrpcCode.UNIMPLEMENTED,
  ResourceExhausted: GrpcCode.RESOURCE_EXHAUSTED,
  Internal: GrpcCode.INTERNAL,
};

/** gRPC code for a KataError kind (the server edge). */
export function grpcCodeFromKind(kind: ErrorKind): GrpcCode {
  return codeByKind[kind];
}

/**
 * KataError kind for a gRPC code (the client edge). Codes with no kind of their own fold into the closest
 * one: OutOfRange reads as InvalidArgument, Aborted as FailedPrecondition; Unknown, PermissionDenied,
 * Unauthenticated, DataLoss and anything unrecognised become Internal. The exact code stays on
 * `TtrpcStatusError.grpcCode`.
 */
export function kindFromGrpcCode(code: number): ErrorKind {
  switch (code) {
    case GrpcCode.CANCELLED:
      return 'Cancelled';
    case GrpcCode.INVALID_ARGUMENT:
    case GrpcCode.OUT_OF_RANGE:
      return 'InvalidArgument';
    case GrpcCode.DEADLINE_EXCEEDED:
      return 'DeadlineExceeded';
    case GrpcCode.NOT_FOUND:
      return 'NotFound';
    case GrpcCode.ALREADY_EXISTS:
      return 'AlreadyExists';
    case GrpcCode.RESOURCE_EXHAUSTED:
      return 'ResourceExhausted';
    case GrpcCode.FAILED_PRECONDITION:
    case GrpcCode.ABORTED:
      return 'FailedPrecondition';
    case GrpcCode.UNIMPLEMENTED:
      return 'NotImplemented';
    case GrpcCode.UNAVAILABLE:
      return 'Unavailable';
    default:
      return 'Internal';
  }
}

/** `GRPC_NOT_FOUND` style name of a code; numbers outside the enum read as `GRPC_CODE_<n>`. */
export function grpcCodeName(code: number): string {
  const name = (GrpcCode as unknown as Record<number, string | undefined>)[code];
  return name === undefined ? `GRPC_CODE_${code}` : `GRPC_${name}`;
}

/**
 * A non-OK status received from (or to be sent to) a ttrpc peer. `kind` follows `kindFromGrpcCode`, `code` is
 * the stable `TTRPC_<GRPC NAME>`, and `grpcCode` keeps the exact wire value.
 */
export class TtrpcStatusError extends KataError {
  readonly grpcCode: number;

  constructor(grpcCode: number, message: string, options?: { cause?: unknown }) {
    super(kindFromGrpcCode(grpcCode), `TTRPC_${grpcCodeName(grpcCode).slice('GRPC_'.length)}`, message, options);
    this.name = 'TtrpcStatusError';
    this.grpcCode = grpcCode;
  }
}

/**
 * The status a server sends for an error thrown by a handler: a TtrpcStatusError keeps its exact code, any
 * other KataError maps by kind, anything else is Unknown.
 */
export function statusFromError(err: unknown): { code: GrpcCode | number; message: string } {
  if (err instanceof TtrpcStatusError) return { code: err.grpcCode, message: err.message };
  if (err instanceof KataError) return { code: grpcCodeFromKind(err.kind), message: err.message };
  if (err instanceof Error) return { code: GrpcCode.UNKNOWN, message: err.message };
  return { code: GrpcCode.UNKNOWN, message: String(err) };
}
