import { errors } from '../base/errors.js';

/** Kata's container types: a pod's sandbox (pause) container, a container of a pod, or a lone container. */
export type ContainerType = 'pod_sandbox' | 'pod_container' | 'single_container';

export interface PodIdentity {
  type: ContainerType;
  /** The sandbox (VM) this container belongs to; its own id for sandboxes and single containers. */
  sandboxId: string;
}

/** (type key, sandbox-id key, value meaning sandbox, value meaning container), in Kata's order of precedence. */
const SOURCES: [string, string, string, string][] = [
  ['io.kubernetes.cri.container-type', 'io.kubernetes.cri.sandbox-id', 'sandbox', 'container'],
  ['io.kubernetes.cri-o.ContainerType', 'io.kubernetes.cri-o.SandboxID', 'sandbox', 'container'],
  ['io.kubernetes.docker.type', 'io.kubernetes.sandbox.id', 'podsandbox', 'container'],
];

/** Reads the CRI (or CRI-O, dockershim) annotations that group containers into pods. */
export function podIdentity(containerId: string, annotations: Record<string, string> = {}): PodIdentity {
  for (const [typeKey, sandboxKey, sandboxValue, containerValue] of SOURCES) {
    const value = annotations[typeKey];
    if (value === undefined) continue;
    if (value === sandboxValue) return { type: 'pod_sandbox', sandboxId: containerId };
    if (value === containerValue) {
      const sandboxId = annotations[sandboxKey];
      if (!sandboxId) {
        throw errors.invalid('KATA_BAD_ANNOTATION', `annotation ${typeKey}=${value} needs ${sandboxKey}`);
      }
      return { type: 'pod_container', sandboxId };
    }
    throw errors.invalid('KATA_BAD_ANNOTATION', `annotation ${typeKey} has unknown value ${JSON.stringify(value)}`);
  }
  return { type: 'single_container', sandboxId: containerId };
}
