import { readdir, readFile, rm } from 'node:fs/promises';
import type { Logger } from '../base/logger.js';
import { unmount } from '../platform/mount.js';
import { createShareFs } from '../resource/sharefs/index.js';
import { loadPersisted, type PersistedSandbox } from './persist.js';
import { sandboxStateDir, type RuntimePaths } from './paths.js';

/**
 * Cleans up a sandbox whose shim is gone (SIGKILLed, or found after a containerd restart): kills its VMM
 * and daemons (after checking the pid still belongs to them), undoes mounts and removes every state dir.
 * Safe to run more than once and on a sandbox that was already cleaned.
 */
export async function reapSandbox(paths: RuntimePaths, sandboxId: string, log: Logger): Promise<void> {
  const stateDir = sandboxStateDir(paths, sandboxId);
  const state = await loadPersisted(stateDir).catch((err) => {
    log.warn({ err }, 'persisted state unreadable; cleaning known paths only');
    return undefined;
  });
  if (state) {
    for (const p of state.processes) await killIfOwned(p.pid, p.cmdlineContains, log);
    for (const [id, c] of Object.entries(state.containers)) {
      if (c.rootfsMounted) {
        await unmount(`${c.bundle}/rootfs`).catch((err) => log.warn({ err, containerId: id }, 'unmount rootfs'));
      }
    }
  }
  const shareFs = createShareFs(
    state?.sharedFs ?? 'virtio-9p',
    { sandboxId, vmDir: `${paths.vmRoot}/${sandboxId}`, sharedRoot: paths.sharedRoot },
    log,
  );
  await shareFs.cleanup().catch((err) => log.warn({ err }, 'shared fs cleanup'));
  await rm(`${paths.vmRoot}/${sandboxId}`, { recursive: true, force: true });
  await rm(stateDir, { recursive: true, force: true });
}

/** Unmounts a pod container's rootfs recorded in its sandbox's persisted state (the sandbox itself lives on). */
export async function reapContainerRootfs(state: PersistedSandbox | undefined, containerId: string, log: Logger): Promise<void> {
  const c = state?.containers[containerId];
  if (c?.rootfsMounted) await unmount(`${c.bundle}/rootfs`).catch((err) => log.warn({ err }, 'unmount rootfs'));
}

/**
 * Reaps the sandboxes of `kata-runtime run` processes that died without tearing down (SIGKILL): those whose
 * persisted owner no longer runs. Returns their ids. Shim sandboxes (no owner) are left to containerd.
 */
export async function reapOrphanedRuns(paths: RuntimePaths, log: Logger): Promise<string[]> {
  const ids = await readdir(paths.sandboxRoot).catch(() => [] as string[]);
  const reaped: string[] = [];
  for (const id of ids) {
    const state = await loadPersisted(sandboxStateDir(paths, id)).catch(() => undefined);
    if (!state?.owner || (await isRunning(state.owner.pid, state.owner.cmdlineContains))) continue;
    log.warn({ sandboxId: id, ownerPid: state.owner.pid }, 'the kata-runtime run of this sandbox is gone: reaping it');
    await reapSandbox(paths, id, log);
    reaped.push(id);
  }
  return reaped;
}

async function isRunning(pid: number, marker: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.includes(marker);
}

async function killIfOwned(pid: number, marker: string, log: Logger): Promise<void> {
  if (!(await isRunning(pid, marker))) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    log.debug({ err, pid }, 'kill');
    return;
  }
  for (let i = 0; i < 100; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  log.warn({ pid }, 'process still present after SIGKILL');
}
