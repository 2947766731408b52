import { errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import {
  GUEST_SHARED_DIR,
  KATA_SHARED_TAG,
  KataSharedDir,
  SHARE_FS_DEVICE_ID,
  type GuestStorage,
  type ShareFs,
} from './share-fs.js';

/**
 * 524288 (512 KiB) rather than Kata's 8192: fewer round trips per read (PLATFORM.md measured 64 MiB
 * sequential reads at 0.07 to 0.11 s with it); the guest kernel clamps larger values to what its virtio
 * transport allows.
 */
export const DEFAULT_MSIZE_9P = 524288;
/**
 * Kata's `mmap`: writes go through to the host at once. `loose` caches writes in the guest (writeback), so a
 * container's files could reach the host late, or be lost when the VM stops first; it was measured faster for
 * big binaries (PLATFORM.md: 1.4 to 1.8 s per run of a 99 MB binary with `mmap`), a cost container images of
 * ordinary size do not pay at this level. Configurable per share (`cache9p`).
 */
export const DEFAULT_CACHE_9P = 'mmap';

const CACHE_9P = new Set(['none', 'loose', 'fscache', 'mmap']);

export interface Virtio9pOptions {
  sandboxId: string;
  sharedRoot?: string;
  /** Kata `msize_9p`. */
  msize9p?: number;
  /** 9p `cache=` option for the guest mount. */
  cache9p?: string;
}

/** virtio-9p: no daemon; QEMU serves `shared/` itself (`-fsdev local,security_model=none`). */
export class Virtio9p implements ShareFs {
  readonly kind = 'virtio-9p' as const;
  private readonly dir: KataSharedDir;
  private readonly msize: number;
  private readonly cache: string;

  constructor(opts: Virtio9pOptions, log: Logger) {
    const l = log.child({ subsystem: 'sharefs', kind: 'virtio-9p', sandboxId: opts.sandboxId });
    this.dir = new KataSharedDir(opts, l);
    this.msize = opts.msize9p ?? DEFAULT_MSIZE_9P;
    if (!Number.isInteger(this.msize) || this.msize < 4096 || this.msize > 16 * 1024 * 1024) {
      throw errors.invalid('KATA_CONFIG_INVALID', `msize_9p ${this.msize} must be an integer between 4096 and 16 MiB`);
    }
    this.cache = opts.cache9p ?? DEFAULT_CACHE_9P;
    if (!CACHE_9P.has(this.cache)) {
      throw errors.invalid('KATA_CONFIG_INVALID', `9p cache ${JSON.stringify(this.cache)} is not one of ${[...CACHE_9P].join(', ')}`);
    }
  }

  get sandboxDir(): string {
    return this.dir.sandboxDir;
  }

  async prepare(): Promise<VmDevice> {
    await this.dir.prepare();
    // Not readonly at the device: the container rootfs binds under shared/ are writable; shared/ itself
    // is a read-only mount, so the guest cannot add entries at the top.
    return { kind: '9p', id: SHARE_FS_DEVICE_ID, hostPath: this.dir.sharedDir, tag: KATA_SHARED_TAG, readonly: false };
  }

  guestStorage(): GuestStorage {
    return {
      driver: '9p',
      driverOptions: [],
      source: KATA_SHARED_TAG,
      fstype: '9p',
      options: ['trans=virtio', 'version=9p2000.L', `cache=${this.cache}`, 'nodev', `msize=${this.msize}`],
      mountPoint: GUEST_SHARED_DIR,
    };
  }

  shareRootfs(containerId: string, hostRootfsDir: string): Promise<string> {
    return this.dir.shareRootfs(containerId, hostRootfsDir);
  }

  shareFile(containerId: string, hostSource: string, destination: string, readonly: boolean): Promise<string> {
    return this.dir.shareMount(containerId, hostSource, destination, readonly, true);
  }

  shareMount(containerId: string, hostSource: string, destination: string, readonly: boolean): Promise<string> {
    return this.dir.shareMount(containerId, hostSource, destination, readonly);
  }

  unshareContainer(containerId: string): Promise<void> {
    return this.dir.unshareContainer(containerId);
  }

  pids(): number[] {
    return [];
  }

  cleanup(): Promise<void> {
    return this.dir.cleanup();
  }
}
