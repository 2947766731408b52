import { createHash } from 'node:crypto';
import { join } from 'node:path';

export const SOCKET_ROOT = process.env.KATA_TS_SHIM_SOCKET_ROOT ?? '/run/containerd/s';

/**
 * The shim's ttrpc socket, as containerd's shim library computes it: sha256 of `<containerd address>/<ns>/<id>`,
 * where id is the SANDBOX id so every container of a pod reaches the same shim.
 */
export function shimSocketPath(containerdAddress: string, namespace: string, sandboxId: string): string {
  const digest = createHash('sha256').update(`${containerdAddress}/${namespace}/${sandboxId}`).digest('hex');
  return join(SOCKET_ROOT, digest);
}

export const socketAddress = (path: string) => `unix://${path}`;
export const socketPathOf = (address: string) => address.replace(/^unix:\/\//, '');
