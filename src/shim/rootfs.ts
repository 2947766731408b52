import { errors } from '../base/errors.js';
import { bindMount, mountFs, unmount } from '../platform/mount.js';

export interface RootfsMount {
  type: string;
  source: string;
  options: string[];
}

const SUPPORTED = new Set(['overlay', 'bind', 'ext4', 'xfs', 'tmpfs']);

/**
 * Mounts containerd's rootfs description (CreateTaskRequest.rootfs: the snapshotter's mounts) onto the
 * bundle's rootfs directory. Returns whether something was mounted (an empty list means the bundle's rootfs
 * is already populated).
 */
export async function mountRootfs(mounts: RootfsMount[], target: string): Promise<boolean> {
  if (mounts.length === 0) return false;
  if (mounts.length > 1) {
    throw errors.invalid('KATA_ROOTFS_MOUNT', `rootfs with ${mounts.length} mounts is not supported (expected one)`);
  }
  const m = mounts[0]!;
  if (!SUPPORTED.has(m.type)) {
    throw errors.invalid('KATA_ROOTFS_MOUNT', `rootfs mount of unknown type ${JSON.stringify(m.type)} (supported: ${[...SUPPORTED].join(', ')})`);
  }
  if (m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind')) {
    await bindMount(m.source, target, { readonly: m.options.includes('ro'), recursive: m.options.includes('rbind') });
  } else {
    await mountFs(m.type, m.source, target, m.options);
  }
  return true;
}

export async function unmountRootfs(target: string): Promise<void> {
  await unmount(target);
}
