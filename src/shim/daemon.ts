import { constants, openSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createLogger } from '../base/logger.js';
import { TtrpcServer } from '../protocol/ttrpc/server.js';
import { defaultPaths } from '../runtime/paths.js';
import { EventPublisher } from './events.js';
import { ManagementServer } from './management-server.js';
import type { ShimFlags } from './flags.js';
import { TASK_SERVICE, TaskService } from './task-service.js';

/** Opens the bundle's `log` fifo (containerd reads it) without blocking; falls back to stderr. */
function logFd(): number {
  try {
    return openSync('log', constants.O_RDWR | constants.O_NONBLOCK);
  } catch {
    return 2; // no log fifo (run by hand)
  }
}

/** The shim daemon: serves containerd's Task API for one pod until Shutdown or a signal. */
export async function serveAction(flags: ShimFlags): Promise<void> {
  const log = createLogger({ name: 'containerd-shim-kata-v2', level: flags.debug ? 'debug' : 'info', fd: logFd() }).child({
    sandboxId: flags.id,
  });
  const events = new EventPublisher(process.env.TTRPC_ADDRESS, flags.namespace, log);
  const server = new TtrpcServer(log);
  let exiting = false;
  const exit = async (code: number) => {
    if (exiting) return;
    exiting = true;
    await management.close();
    await service.shutdownAll();
    await events.flush().catch(() => undefined);
    events.close();
    await server.close({ graceMs: 200 }).catch(() => undefined);
    log.info({ code }, 'shim exiting');
    process.exit(code);
  };
  const service = new TaskService(defaultPaths(), events, log, () => void exit(0));
  const management = new ManagementServer(defaultPaths(), log);
  server.register(TASK_SERVICE, management.instrument(service.handlers(), () => service.currentSandbox));
  const socketPath = flags.socket!;
  await mkdir(dirname(socketPath), { recursive: true });
  await server.listen(socketPath);
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void exit(0));
  process.on('SIGPIPE', () => undefined);
  log.info({ socketPath }, 'shim serving');
  process.stdout.write('ready\n');
}
