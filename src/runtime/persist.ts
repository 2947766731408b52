import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errors } from '../base/errors.js';
import { sandboxStateDir, vmDir, type RuntimePaths } from './paths.js';
import type { Sandbox } from './sandbox.js';

/**
 * What must survive the shim process so that containerd's `shim delete` can clean up after a crash:
 * the host processes of the sandbox and the mounts made for its containers.
 * Stored as `/run/vc/sbs/<sandboxId>/persist.json` (0600, in a 0700 directory), like Kata.
 */
export interface PersistedSandbox {
  sandboxId: string;
  vmDir: string;
  sharedRoot: string;
  /** Host processes: the VMM and helper daemons, with a word of their command line to check pid reuse. */
  processes: { pid: number; cmdlineContains: string }[];
  /** Container id -> the bundle rootfs the shim mounted (if it did). */
  containers: Record<string, { bundle: string; rootfsMounted: boolean }>;
  sharedFs: 'virtio-fs' | 'virtio-9p';
  /**
   * The process that runs the sandbox outside containerd (`kata-runtime run`), with a word of its command
   * line. When it is gone (SIGKILL), the next `kata-runtime run` reaps the sandbox (reapOrphanedRuns).
   * Absent for shim sandboxes: containerd's `shim delete` reaps those.
   */
  owner?: { pid: number; cmdlineContains: string };
}

export const persistPath = (stateDir: string) => join(stateDir, 'persist.json');

async function savePersisted(stateDir: string, state: PersistedSandbox): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const tmp = persistPath(stateDir) + '.tmp';
  await writeFile(tmp, JSON.stringify(state, null, 2), { mode: 0o600 });
  await rename(tmp, persistPath(stateDir));
}

export async function loadPersisted(stateDir: string): Promise<PersistedSandbox | undefined> {
  let text: string;
  try {
    text = await readFile(persistPath(stateDir), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const v = JSON.parse(text) as PersistedSandbox;
    if (typeof v.sandboxId !== 'string' || !Array.isArray(v.processes)) throw new Error('missing fields');
    return v;
  } catch (err) {
    throw errors.invalid('KATA_PERSIST_CORRUPT', `${persistPath(stateDir)}: ${(err as Error).message}`, err);
  }
}

/**
 * Persists what a reaper needs for a running sandbox: its host processes and share kind, plus what the caller
 * adds (the containers whose rootfs it mounted; the owner process, for `kata-runtime run`).
 */
export function persistSandbox(
  paths: RuntimePaths,
  sb: Pick<Sandbox, 'id' | 'hostProcesses' | 'sharedFsKind'>,
  extra: Pick<PersistedSandbox, 'containers' | 'owner'>,
): Promise<void> {
  return savePersisted(sandboxStateDir(paths, sb.id), {
    sandboxId: sb.id,
    vmDir: vmDir(paths, sb.id),
    sharedRoot: paths.sharedRoot,
    processes: sb.hostProcesses(),
    sharedFs: sb.sharedFsKind,
    ...extra,
  });
}
