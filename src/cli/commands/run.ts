import { readFile, stat, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { constants as osConstants } from 'node:os';
import { errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import { parseOciSpec } from '../../protocol/oci-spec.js';
import { defaultSandboxDeps } from '../../runtime/default-deps.js';
import { defaultPaths } from '../../runtime/paths.js';
import { persistSandbox } from '../../runtime/persist.js';
import { reapOrphanedRuns } from '../../runtime/reaper.js';
import { Sandbox } from '../../runtime/sandbox.js';
import { loadRuntimeConfig } from '../load-runtime-config.js';

export interface RunOptions {
  bundle: string;
  config?: string;
  timingsFile?: string;
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];

/**
 * `kata-runtime run --bundle DIR ID`: like `runc run`, runs the bundle's container in a new VM with stdio
 * attached, returns the container's exit status, and tears the VM down on every path.
 */
export async function runCommand(containerId: string, opts: RunOptions, log: Logger): Promise<number> {
  const t0 = performance.now();
  const bundle = resolve(opts.bundle);
  const specText = await readFile(resolve(bundle, 'config.json'), 'utf8').catch((err) => {
    throw errors.notFound('KATA_BUNDLE_INVALID', `bundle ${bundle}: cannot read config.json: ${err.message}`, err);
  });
  const spec = parseOciSpec(specText);
  if (!spec.process) throw errors.invalid('KATA_SPEC_INVALID', 'invalid OCI spec: process: missing');
  const hostRootfs = resolve(bundle, spec.root!.path);
  const st = await stat(hostRootfs).catch(() => undefined);
  if (!st?.isDirectory()) throw errors.notFound('KATA_ROOTFS_MISSING', `root.path ${hostRootfs} is not a directory`);

  const config = await loadRuntimeConfig(opts.config, log);
  const terminal = spec.process.terminal ?? false;
  const stdin = process.stdin;
  if (terminal && stdin.isTTY && process.stdout.columns) {
    spec.process.consoleSize = { height: process.stdout.rows, width: process.stdout.columns };
  }

  const paths = defaultPaths();
  // Sandboxes of earlier runs that were killed before their teardown.
  await reapOrphanedRuns(paths, log);
  const sandbox = await Sandbox.create({ sandboxId: containerId, config, paths, hostname: spec.hostname }, defaultSandboxDeps(), log);
  // What a later run needs to reap this sandbox should this process be killed.
  await persistSandbox(paths, sandbox, { containers: {}, owner: { pid: process.pid, cmdlineContains: 'kata-runtime' } }).catch(async (err) => {
    await teardown(sandbox, log);
    throw err;
  });
  const forward = (sig: NodeJS.Signals) => {
    container?.kill(osConstants.signals[sig]).catch((err) => log.warn({ err, sig }, 'forwarding signal failed'));
  };
  let container: Awaited<ReturnType<Sandbox['createContainer']>> | undefined;
  try {
    container = await sandbox.createContainer({
      containerId,
      spec,
      hostRootfs,
      stdio: { stdin, stdout: process.stdout, stderr: terminal ? undefined : process.stderr },
    });
    if (terminal && stdin.isTTY) stdin.setRawMode(true);
    const onResize = () => container?.init.resize(process.stdout.rows, process.stdout.columns).catch(() => undefined);
    if (terminal) process.stdout.on('resize', onResize);
    if (!terminal) for (const s of FORWARDED) process.on(s, forward);
    await container.start();
    const tStarted = performance.now();
    const exit = await container.init.wait();
    const tExited = performance.now();
    if (terminal) process.stdout.off('resize', onResize);
    await teardown(sandbox, log);
    const tDone = performance.now();
    if (opts.timingsFile) {
      await writeFile(
        opts.timingsFile,
        JSON.stringify({
          ...sandbox.timings,
          containerStartedMs: tStarted - t0,
          containerExitedMs: tExited - t0,
          teardownDoneMs: tDone - t0,
        }),
      );
    }
    return exit.status;
  } catch (err) {
    await teardown(sandbox, log);
    throw err;
  } finally {
    for (const s of FORWARDED) process.off(s, forward);
    if (terminal && stdin.isTTY) stdin.setRawMode(false);
    stdin.pause();
    stdin.unref?.();
  }
}

async function teardown(sandbox: Sandbox, log: Logger): Promise<void> {
  await sandbox.stop().catch((err) => log.error({ err }, 'teardown failed'));
}
