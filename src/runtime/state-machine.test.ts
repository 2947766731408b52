import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KataError } from '../base/errors.js';
import { CONTAINER_TRANSITIONS, StateMachine } from './state-machine.js';

test('legal transitions move, illegal ones fail with FailedPrecondition naming both states', () => {
  const sm = new StateMachine('container c1', 'created', CONTAINER_TRANSITIONS);
  sm.to('running');
  sm.to('paused');
  sm.to('running');
  sm.to('stopped');
  assert.throws(
    () => sm.to('running'),
    (e: unknown) => e instanceof KataError && e.kind === 'FailedPrecondition' && /stopped -> running/.test(e.message),
  );
});

test('require names the refused action and the current state', () => {
  const sm = new StateMachine('container c1', 'created', CONTAINER_TRANSITIONS);
  assert.throws(() => sm.require('pause', 'running'), /cannot pause container c1 in state created/);
  sm.require('start', 'created');
});
