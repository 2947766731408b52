import { KataError } from '../base/errors.js';
import { createLogger } from '../base/logger.js';
import { serveAction } from './daemon.js';
import { deleteAction } from './delete.js';
import { parseShimFlags } from './flags.js';
import { startAction } from './start.js';

/** containerd-shim-kata-v2: `start`, `delete`, and the daemon (`serve`, started by `start`). */
export async function main(argv: string[], entry: string): Promise<number> {
  let flags;
  try {
    flags = parseShimFlags(argv);
  } catch (err) {
    process.stderr.write(`containerd-shim-kata-v2: ${(err as Error).message}\n`);
    return 2;
  }
  if (flags.bools.has('v') || flags.bools.has('version')) {
    process.stdout.write('containerd-shim-kata-v2 (kata-ts)\n');
    return 0;
  }
  const log = createLogger({ name: 'containerd-shim-kata-v2', level: flags.debug ? 'debug' : 'info', fd: 2 });
  try {
    switch (flags.action) {
      case 'start':
        process.stdout.write(await startAction(flags, entry));
        return 0;
      case 'delete':
        process.stdout.write(await deleteAction(flags, log));
        return 0;
      case 'serve':
        await serveAction(flags);
        return -1; // keeps running
      default:
        process.stderr.write(`containerd-shim-kata-v2: unknown action ${JSON.stringify(flags.action)}\n`);
        return 2;
    }
  } catch (err) {
    log.error({ err }, `${flags.action} failed`);
    process.stderr.write(`containerd-shim-kata-v2: ${flags.action}: ${err instanceof KataError || err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}
