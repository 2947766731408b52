import { Command, CommanderError } from 'commander';
import { KataError } from '../base/errors.js';
import { createLogger, type LogLevel } from '../base/logger.js';
import { registerCheckCommand } from './commands/check.js';
import { registerEnvCommand } from './commands/env.js';
import { registerFactoryCommand } from './commands/factory.js';
import { registerMetricsCommand } from './commands/metrics.js';
import { runCommand } from './commands/run.js';
import type { CommandDeps } from './command-deps.js';

/** Exit codes for errors, by kind (the container's own status is returned as is by `run`). */
const EXIT_FOR_KIND: Record<string, number> = { InvalidArgument: 2, NotFound: 2, NotImplemented: 3 };

export async function main(argv: string[]): Promise<number> {
  const program = new Command('kata-runtime')
    .description('kata-ts: containers in lightweight VMs, Kata Containers compatible')
    .option('--config <path>', 'configuration.toml to use instead of the default search')
    .option('--log-level <level>', 'trace|debug|info|warn|error', 'warn')
    .exitOverride();
  let result = 0;
  const log = () => createLogger({ name: 'kata-runtime', level: program.opts().logLevel as LogLevel });

  program
    .command('run')
    .description('run a container from an OCI bundle in a new VM, stdio attached (like runc run)')
    .requiredOption('-b, --bundle <dir>', 'OCI bundle directory')
    .option('--timings-file <path>', 'write the start-up phase timings as JSON')
    .argument('<container-id>')
    .action(async (id: string, o: { bundle: string; timingsFile?: string }) => {
      result = await runCommand(id, { ...o, config: program.opts().config }, log());
    });

  const deps: CommandDeps = { configPath: () => program.opts().config as string | undefined, log, setResult: (code) => (result = code) };
  registerFactoryCommand(program, deps);
  registerCheckCommand(program, deps);
  registerEnvCommand(program, deps);
  registerMetricsCommand(program, deps);

  try {
    await program.parseAsync(argv, { from: 'user' });
    return result;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    const msg = err instanceof Error ? err.message : String(err);
    process.stderr.write(`kata-runtime: error: ${msg}\n`);
    return err instanceof KataError ? (EXIT_FOR_KIND[err.kind] ?? 1) : 1;
  }
}
