import type { Command } from 'commander';
import { errors } from '../../base/errors.js';
import { checkId } from '../../base/ids.js';
import { defaultPaths } from '../../runtime/paths.js';
import { managementSocketPath, shimGet } from '../../shim/management-server.js';
import type { CommandDeps } from '../command-deps.js';

export type Print = (text: string) => void;

/** `kata-runtime metrics <sandbox-id>`: the shim's /metrics (Prometheus text), as the shim serves it. */
export async function metricsCommand(sandboxId: string, print: Print): Promise<number> {
  const socketPath = managementSocketPath(defaultPaths(), checkId(sandboxId, 'sandbox id'));
  const r = await shimGet(socketPath, '/metrics', { timeoutMs: 15_000 });
  if (r.status !== 200) throw errors.unavailable('KATA_SHIM_METRICS', `shim of sandbox ${sandboxId} answered HTTP ${r.status}: ${r.body.trim()}`);
  print(r.body);
  return 0;
}

export function registerMetricsCommand(program: Command, deps: Pick<CommandDeps, 'setResult'>): void {
  program
    .command('metrics')
    .description("print a sandbox's metrics (Prometheus text) from its shim's management socket")
    .argument('<sandbox-id>')
    .action(async (id: string) => deps.setResult(await metricsCommand(id, (t) => process.stdout.write(t))));
}
