import { join } from 'node:path';

/** Kata's host paths (REFERENCE.md part A section 2.5). Overridable under one root for tests. */
export interface RuntimePaths {
  /** `/run/vc/vm`: per-VM sockets, pid, console log. */
  vmRoot: string;
  /** `/run/vc/sbs`: per-sandbox persisted state and the shim's monitor socket. */
  sandboxRoot: string;
  /** `/run/kata-containers/shared/sandboxes`: the shared directory trees. */
  sharedRoot: string;
}

export function defaultPaths(): RuntimePaths {
  const root = process.env.KATA_TS_RUN_ROOT;
  if (root) {
    return {
      vmRoot: join(root, 'vc/vm'),
      sandboxRoot: join(root, 'vc/sbs'),
      sharedRoot: join(root, 'kata-containers/shared/sandboxes'),
    };
  }
  return {
    vmRoot: '/run/vc/vm',
    sandboxRoot: '/run/vc/sbs',
    sharedRoot: '/run/kata-containers/shared/sandboxes',
  };
}

export const vmDir = (p: RuntimePaths, sandboxId: string) => join(p.vmRoot, sandboxId);
export const sandboxStateDir = (p: RuntimePaths, sandboxId: string) => join(p.sandboxRoot, sandboxId);
