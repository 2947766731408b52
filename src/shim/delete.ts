import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../base/logger.js';
import * as t from '../protocol/gen/containerd/shim.js';
import { parseOciSpec } from '../protocol/oci-spec.js';
import { isMountPoint } from '../platform/mountinfo.js';
import { unmount } from '../platform/mount.js';
import { podIdentity } from '../runtime/container-type.js';
import { defaultPaths } from '../runtime/paths.js';
import { reapSandbox } from '../runtime/reaper.js';
import { nowTimestamp } from './events.js';
import type { ShimFlags } from './flags.js';

/**
 * `delete`: containerd runs it when the shim is gone (or after a normal lifecycle). It removes whatever is left
 * of the container (and of its VM, for a sandbox or single container) and returns only the DeleteResponse.
 */
export async function deleteAction(flags: ShimFlags, log: Logger): Promise<Uint8Array> {
  const bundle = flags.bundle ?? process.cwd();
  let sandboxId = flags.id;
  let isPodContainer = false;
  try {
    const spec = parseOciSpec(await readFile(join(bundle, 'config.json'), 'utf8'));
    const identity = podIdentity(flags.id, spec.annotations);
    sandboxId = identity.sandboxId;
    isPodContainer = identity.type === 'pod_container';
  } catch (err) {
    log.warn({ err }, 'bundle config unreadable; treating the container as its own sandbox');
  }
  const rootfs = join(bundle, 'rootfs');
  if (await isMountPoint(rootfs).catch(() => false)) {
    await unmount(rootfs).catch((err) => log.warn({ err }, 'unmount rootfs'));
  }
  if (!isPodContainer) await reapSandbox(defaultPaths(), sandboxId, log);
  return t.DeleteResponse.encode({ pid: 0, exitStatus: 137, exitedAt: nowTimestamp() }).finish();
}
