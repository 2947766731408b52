import type { Logger } from '../base/logger.js';

/** What main hands to each registered `kata-runtime` subcommand. */
export interface CommandDeps {
  /** The global `--config` option, read when the command runs. */
  configPath: () => string | undefined;
  log: () => Logger;
  /** The process exit status. */
  setResult: (code: number) => void;
}
