import assert from 'node:assert/strict';
import { test } from 'node:test';
import { podIdentity } from './container-type.js';

test('no annotations: a single container with a VM of its own', () => {
  assert.deepEqual(podIdentity('c1'), { type: 'single_container', sandboxId: 'c1' });
});

test('CRI sandbox and container annotations group by sandbox id', () => {
  assert.deepEqual(podIdentity('p1', { 'io.kubernetes.cri.container-type': 'sandbox' }), { type: 'pod_sandbox', sandboxId: 'p1' });
  assert.deepEqual(
    podIdentity('c2', { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'p1' }),
    { type: 'pod_container', sandboxId: 'p1' },
  );
});

test('CRI-O and dockershim keys are understood', () => {
  assert.equal(podIdentity('x', { 'io.kubernetes.cri-o.ContainerType': 'sandbox' }).type, 'pod_sandbox');
  assert.deepEqual(
    podIdentity('y', { 'io.kubernetes.docker.type': 'container', 'io.kubernetes.sandbox.id': 's' }),
    { type: 'pod_container', sandboxId: 's' },
  );
});

test('an unknown type value or a container without sandbox id is refused', () => {
  assert.throws(() => podIdentity('z', { 'io.kubernetes.cri.container-type': 'weird' }), /unknown value/);
  assert.throws(() => podIdentity('z', { 'io.kubernetes.cri.container-type': 'container' }), /needs io.kubernetes.cri.sandbox-id/);
});
