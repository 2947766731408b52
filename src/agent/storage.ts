import { mkdir } from 'node:fs/promises';
import { posix } from 'node:path';
import { errors } from '../base/errors.js';
import type { Storage } from '../protocol/gen/agent.js';
import { guestMount } from './guest-mount.js';

/** Where the host may ask the agent to mount things. Anything else is refused. */
const ALLOWED_ROOTS = ['/run/kata-containers/'];

export function checkGuestPath(path: string, what: string): string {
  if (!path.startsWith('/') || path.includes('\0')) {
    throw errors.invalid('KATA_BAD_PATH', `${what}: not an absolute path: ${JSON.stringify(path)}`);
  }
  const normal = posix.normalize(path);
  if (normal.split('/').includes('..') || !ALLOWED_ROOTS.some((r) => (normal + '/').startsWith(r))) {
    throw errors.invalid('KATA_BAD_PATH', `${what}: ${JSON.stringify(path)} is outside ${ALLOWED_ROOTS.join(', ')}`);
  }
  return normal;
}

function checkOptions(options: string[]): string[] {
  for (const o of options) {
    if (o.includes('\0') || o.includes('\n')) throw errors.invalid('KATA_BAD_STORAGE', `bad mount option ${JSON.stringify(o)}`);
  }
  return options;
}

/** Mounts one Storage the host described (Kata's driver names). Returns the mount point. */
export async function mountStorage(s: Storage): Promise<string> {
  const target = checkGuestPath(s.mountPoint, 'storage mountPoint');
  const options = checkOptions(s.options);
  switch (s.driver) {
    case 'virtio-fs':
      await guestMount('virtiofs', s.source, target, options);
      return target;
    case '9p':
      await guestMount('9p', s.source, target, options);
      return target;
    case 'ephemeral':
      await guestMount('tmpfs', s.source || 'tmpfs', target, options);
      return target;
    case 'local':
      await mkdir(target, { recursive: true, mode: 0o777 });
      return target;
    case 'blk':
    case 'mmioblk': {
      if (!/^\/dev\/[a-z0-9]+$/.test(s.source)) {
        throw errors.invalid('KATA_BAD_STORAGE', `block storage source must be a /dev node, got ${JSON.stringify(s.source)}`);
      }
      await guestMount(s.fstype || 'ext4', s.source, target, options);
      return target;
    }
    default:
      throw errors.notImplemented('KATA_STORAGE_DRIVER', `storage driver ${JSON.stringify(s.driver)} is not supported`);
  }
}

/** Ephemeral storages under this directory belong to the sandbox: mounted once, shared, removed with it. */
const SANDBOX_EPHEMERAL = '/run/kata-containers/sandbox/ephemeral/';

/**
 * Storage mounts that outlive a container: the pod's memory emptyDirs. Other storages are the container's own
 * and are passed through (the container unmounts them).
 */
export class SandboxStorages {
  private readonly mounted = new Set<string>();

  has(mountPoint: string): boolean {
    return this.mounted.has(mountPoint);
  }

  async mount(s: Storage): Promise<string> {
    const isSandboxScoped = s.driver === 'ephemeral' && checkGuestPath(s.mountPoint, 'storage mount_point').startsWith(SANDBOX_EPHEMERAL);
    if (!isSandboxScoped) return mountStorage(s);
    if (!this.mounted.has(s.mountPoint)) {
      await mountStorage(s);
      this.mounted.add(s.mountPoint);
    }
    return s.mountPoint;
  }

  /** Everything mounted for the sandbox, newest first, forgetting them. */
  drain(): string[] {
    const all = [...this.mounted].reverse();
    this.mounted.clear();
    return all;
  }
}
