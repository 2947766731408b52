import { Command, CommanderError, Option } from 'commander';
import { KataError } from '../base/errors.js';
import { createLogger, type LogLevel } from '../base/logger.js';
import { defaultPaths } from '../runtime/paths.js';
import { isLoopback, parseListenAddress } from './listen-address.js';
import { KataMonitor } from './monitor.js';

const LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];

/** kata-monitor: serves every shim's metrics on one HTTP address until SIGTERM or SIGINT. */
export async function main(argv: string[]): Promise<number> {
  const program = new Command('kata-monitor')
    .description('kata-ts node monitor: every sandbox shim\'s metrics, labelled by sandbox, over HTTP')
    .option('--listen-address <host:port>', 'address to serve on (port 0: any free port)', '127.0.0.1:8090')
    .addOption(new Option('--log-level <level>', 'log level').choices(LEVELS).default('info'))
    .exitOverride();
  try {
    program.parse(argv, { from: 'user' });
  } catch (err) {
    return err instanceof CommanderError ? err.exitCode : 2;
  }
  const opts = program.opts<{ listenAddress: string; logLevel: LogLevel }>();
  const log = createLogger({ name: 'kata-monitor', level: opts.logLevel });
  try {
    const addr = parseListenAddress(opts.listenAddress);
    if (!isLoopback(addr.host)) log.warn({ host: addr.host }, 'listening beyond loopback: anyone who can reach it reads every sandbox\'s metrics');
    const monitor = new KataMonitor({ sandboxRoot: defaultPaths().sandboxRoot, log });
    await monitor.listen(addr);
    await new Promise<void>((resolve) => {
      for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve());
    });
    await monitor.close();
    return 0;
  } catch (err) {
    process.stderr.write(`kata-monitor: error: ${err instanceof Error ? err.message : String(err)}\n`);
    return err instanceof KataError && err.kind === 'InvalidArgument' ? 2 : 1;
  }
}
