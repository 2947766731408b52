import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KataError, type ErrorKind } from '../../base/errors.js';
import {
  GrpcCode,
  TtrpcStatusError,
  grpcCodeFromKind,
  grpcCodeName,
  kindFromGrpcCode,
  statusFromError,
} from './status.js';

const expected: [ErrorKind, number][] = [
  ['NotFound', 5],
  ['AlreadyExists', 6],
  ['InvalidArgument', 3],
  ['FailedPrecondition', 9],
  ['Unavailable', 14],
  ['DeadlineExceeded', 4],
  ['Cancelled', 1],
  ['NotImplemented', 12],
  ['ResourceExhausted', 8],
  ['Internal', 13],
];

describe('status mapping', () => {
  it('uses the standard gRPC numbers', () => {
    assert.equal(GrpcCode.OK, 0);
    assert.equal(GrpcCode.UNIMPLEMENTED, 12);
    assert.equal(GrpcCode.UNAUTHENTICATED, 16);
  });

  it('maps every kind to its code and back', () => {
    for (const [kind, code] of expected) {
      assert.equal(grpcCodeFromKind(kind), code, kind);
      assert.equal(kindFromGrpcCode(code), kind, `code ${code}`);
    }
  });

  it('folds codes without a kind of their own', () => {
    assert.equal(kindFromGrpcCode(GrpcCode.UNKNOWN), 'Internal');
    assert.equal(kindFromGrpcCode(GrpcCode.OUT_OF_RANGE), 'InvalidArgument');
    assert.equal(kindFromGrpcCode(GrpcCode.ABORTED), 'FailedPrecondition');
    assert.equal(kindFromGrpcCode(GrpcCode.PERMISSION_DENIED), 'Internal');
    assert.equal(kindFromGrpcCode(99), 'Internal');
  });

  it('TtrpcStatusError keeps the exact code, a mapped kind and a stable code string', () => {
    const e = new TtrpcStatusError(GrpcCode.NOT_FOUND, 'container x');
    assert.ok(e instanceof KataError);
    assert.equal(e.kind, 'NotFound');
    assert.equal(e.grpcCode, 5);
    assert.equal(e.code, 'TTRPC_NOT_FOUND');
    assert.equal(e.message, 'container x');
    assert.equal(new TtrpcStatusError(42, 'odd').code, 'TTRPC_CODE_42');
    assert.equal(grpcCodeName(2), 'GRPC_UNKNOWN');
  });

  it('statusFromError: status errors keep their code, kinds map, others are Unknown', () => {
    assert.deepEqual(statusFromError(new TtrpcStatusError(GrpcCode.ABORTED, 'a')), { code: 10, message: 'a' });
    assert.deepEqual(statusFromError(new KataError('NotFound', 'X', 'gone')), { code: 5, message: 'gone' });
    assert.deepEqual(statusFromError(new TypeError('boom')), { code: 2, message: 'boom' });
    assert.deepEqual(statusFromError('text'), { code: 2, message: 'text' });
  });
});
