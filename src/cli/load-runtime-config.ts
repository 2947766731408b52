import type { Logger } from '../base/logger.js';
import { findConfigFile, loadConfig } from '../runtime/config/load.js';
import type { RuntimeConfig } from '../runtime/config/types.js';

/** Finds and loads configuration.toml the way Kata does, logging keys that were accepted but not acted on. */
export async function loadRuntimeConfig(explicitPath: string | undefined, log: Logger): Promise<RuntimeConfig> {
  const path = findConfigFile({ explicitPath, env: process.env });
  const config = await loadConfig(path);
  if (config.ignoredKeys.length > 0) log.info({ keys: config.ignoredKeys, path }, 'configuration keys accepted but not used');
  return config;
}
