import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { errors } from '../base/errors.js';

/** Mounts inside the guest, through busybox `mount` (Node has no mount(2)). Arguments never pass a shell. */
export async function guestMount(fstype: string, source: string, target: string, options: string[]): Promise<void> {
  await mkdir(target, { recursive: true });
  const args = ['-t', fstype];
  if (options.length > 0) args.push('-o', options.join(','));
  args.push(source, target);
  await run('mount', args);
}

export async function guestUnmount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch {
    // Busy or already gone: detach lazily so teardown always completes.
    await run('umount', ['-l', target]).catch(() => undefined);
  }
}

export function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(errors.internal('KATA_GUEST_CMD', `${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`, err));
      else resolve(stdout);
    });
  });
}
