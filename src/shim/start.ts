import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errors } from '../base/errors.js';
import { parseOciSpec } from '../protocol/oci-spec.js';
import { podIdentity } from '../runtime/container-type.js';
import { shimSocketPath, socketAddress } from './address.js';
import type { ShimFlags } from './flags.js';

const READY_TIMEOUT_MS = 15_000;

/**
 * `start`: for a container of an existing pod, prints that pod's shim address and starts nothing. Otherwise
 * starts the shim daemon (detached, its own process group), waits until it listens, writes `address` and
 * `shim.pid` into the bundle (the cwd) and prints the address.
 */
export async function startAction(flags: ShimFlags, entry: string): Promise<string> {
  const bundle = process.cwd();
  const spec = parseOciSpec(await readFile(join(bundle, 'config.json'), 'utf8'));
  const identity = podIdentity(flags.id, spec.annotations);
  const socketPath = shimSocketPath(flags.address, flags.namespace, identity.sandboxId);
  const address = socketAddress(socketPath);
  if (identity.type === 'pod_container') {
    await writeFile(join(bundle, 'address'), address);
    return address;
  }
  const args = [
    entry,
    '-namespace', flags.namespace,
    '-address', flags.address,
    '-publish-binary', flags.publishBinary,
    '-id', flags.id,
    '-socket', socketPath,
    ...(flags.debug ? ['-debug'] : []),
    'serve',
  ];
  const child = spawn(process.execPath, args, {
    cwd: bundle,
    detached: true,
    stdio: ['ignore', 'pipe', 'ignore'],
    env: { ...process.env, UV_THREADPOOL_SIZE: '16' },
  });
  const ready = await new Promise<boolean>((resolve) => {
    let out = '';
    const t = setTimeout(() => resolve(false), READY_TIMEOUT_MS);
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('ready')) {
        clearTimeout(t);
        resolve(true);
      }
    });
    child.once('exit', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
  child.stdout!.destroy();
  if (!ready) {
    child.kill('SIGKILL');
    throw errors.unavailable('KATA_SHIM_START', `shim daemon did not become ready (see the bundle's log)`);
  }
  child.unref();
  await writeFile(join(bundle, 'shim.pid'), String(child.pid));
  await writeFile(join(bundle, 'address'), address);
  return address;
}
