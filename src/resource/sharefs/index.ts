import { errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { ShareFs, ShareFsKind } from './share-fs.js';
import { Virtio9p } from './virtio-9p.js';
import { VirtioFs } from './virtio-fs.js';

export * from './share-fs.js';
export { VirtioFs, DEFAULT_VIRTIOFSD, DEFAULT_VIRTIOFS_CACHE, virtiofsdArgs, type VirtioFsOptions } from './virtio-fs.js';
export { Virtio9p, DEFAULT_MSIZE_9P, DEFAULT_CACHE_9P, type Virtio9pOptions } from './virtio-9p.js';

/** Settings named after Kata's configuration.toml keys (`virtio_fs_daemon`, `msize_9p`, ...). */
export interface ShareFsOptions {
  sandboxId: string;
  /** Per-VM host dir (Kata: /run/vc/vm/<sandboxId>); used by virtio-fs for its socket and log. */
  vmDir: string;
  /** Default /run/kata-containers/shared/sandboxes. */
  sharedRoot?: string;
  virtioFsDaemon?: string;
  virtioFsCache?: string;
  virtioFsExtraArgs?: string[];
  virtioFsQueueSize?: number;
  virtioFsStartTimeoutMs?: number;
  msize9p?: number;
  cache9p?: string;
}

export function createShareFs(kind: ShareFsKind, opts: ShareFsOptions, log: Logger): ShareFs {
  switch (kind) {
    case 'virtio-fs':
      return new VirtioFs(
        {
          sandboxId: opts.sandboxId,
          vmDir: opts.vmDir,
          sharedRoot: opts.sharedRoot,
          daemonPath: opts.virtioFsDaemon,
          cache: opts.virtioFsCache,
          extraArgs: opts.virtioFsExtraArgs,
          queueSize: opts.virtioFsQueueSize,
          startTimeoutMs: opts.virtioFsStartTimeoutMs,
        },
        log,
      );
    case 'virtio-9p':
      return new Virtio9p({ sandboxId: opts.sandboxId, sharedRoot: opts.sharedRoot, msize9p: opts.msize9p, cache9p: opts.cache9p }, log);
    default:
      throw errors.invalid('KATA_CONFIG_INVALID', `shared_fs ${JSON.stringify(kind as string)} is not supported (virtio-fs, virtio-9p)`);
  }
}
