/** configuration.toml: finding, loading, validating, and per-pod annotation overrides. */
export type * from './types.js';
export {
  defaultAgentConfig,
  defaultFactoryConfig,
  defaultHypervisorConfig,
  defaultRuntimeOptions,
  DEFAULT_MEMORY_MIB,
} from './defaults.js';
export {
  CONFIG_INVALID,
  CONFIG_NOT_FOUND,
  CONFIG_UNREADABLE,
  defaultConfigPaths,
  findConfigFile,
  loadConfig,
  parseConfig,
  type FindConfigOptions,
  type ParseConfigOptions,
} from './load.js';
export {
  ANNOTATION_INVALID,
  ANNOTATION_NOT_ENABLED,
  applyAnnotations,
  CONFIG_ANNOTATION_PREFIX,
  HYPERVISOR_ANNOTATION_PREFIX,
  type ApplyAnnotationsOptions,
} from './annotations.js';
export { matchGlob, matchAnyGlob, isValidGlob } from './glob.js';
export { currentHost } from './validate.js';
