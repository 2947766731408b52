export { FileLock, withFileLock, type FileLockOptions } from './file-lock.js';
export {
  TEMPLATE_FORMAT,
  describeMismatch,
  fileIdentity,
  normalizeForTemplate,
  templateIneligibility,
  templateInputs,
  templateKey,
  templateNicMac,
  type TemplateId,
  type FileIdentity,
  type TemplateInputs,
} from './template-key.js';
export { buildTemplate, templateBuildConfig, type BuildTemplateOptions } from './template-builder.js';
export {
  BUILD_RETRY_AFTER_MS,
  MAX_TEMPLATES,
  TemplateStore,
  TEMPLATE_EXTRA_MIB,
  TEMPLATE_LOCK_DIR,
  type BuildFailure,
  type DestroyResult,
  type PinResult,
  type PinnedTemplate,
  type StoreMount,
  type TemplateListing,
  type TemplateMeta,
} from './template-store.js';
export { buildBudgetMs, cloneConfig, obtainTemplate, templateVmSource, type TemplateVmSourceOptions } from './template-vm-source.js';
export { destroyTemplates, initTemplates, sandboxVmConfigFor, templateStatus, TEMPLATE_VARIANTS, type InitResult, type TemplateStatus } from './vm-factory.js';
