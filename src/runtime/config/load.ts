import { readFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse, TomlError } from 'smol-toml';
import { errors } from '../../base/errors.js';
import {
  defaultAgentConfig,
  defaultFactoryConfig,
  defaultHypervisorConfig,
  defaultRuntimeOptions,
} from './defaults.js';
import {
  AGENT_KEYS,
  FACTORY_KEYS,
  HYPERVISOR_KEYS,
  LEGACY_SECTIONS,
  readValue,
  setField,
  RUNTIME_KEYS,
  suggest,
  type Fail,
  type KeySpec,
} from './schema.js';
import type { HostInfo, HypervisorKind, RuntimeConfig } from './types.js';
import { currentHost, resolveHostDefaults, validateConfig } from './validate.js';

export const CONFIG_INVALID = 'KATA_CONFIG_INVALID';
export const CONFIG_NOT_FOUND = 'KATA_CONFIG_NOT_FOUND';
export const CONFIG_UNREADABLE = 'KATA_CONFIG_UNREADABLE';

const ETC_CONFIG = '/etc/kata-containers/configuration.toml';
const SHIPPED_CONFIG = '/usr/share/defaults/kata-containers/configuration.toml';
const HYPERVISOR_KINDS: readonly HypervisorKind[] = ['qemu', 'firecracker', 'clh'];

/** The fixed candidates, in Kata's order: the admin's file, then the shipped default. */
export function defaultConfigPaths(): string[] {
  return [ETC_CONFIG, SHIPPED_CONFIG];
}

export interface FindConfigOptions {
  /** The runtime option `ConfigPath`, or the CLI's `--config`. */
  explicitPath?: string;
  /** Where `KATA_CONF_FILE` is read; `process.env` when absent. */
  env?: NodeJS.ProcessEnv;
  /** Replaces `defaultConfigPaths()` (tests). */
  defaultPaths?: string[];
}

/**
 * Kata's search order: explicit path, `KATA_CONF_FILE`, `/etc/kata-containers/configuration.toml`,
 * `/usr/share/defaults/kata-containers/configuration.toml`. A path that was asked for explicitly (option or
 * env) must exist: falling back to another file would run pods with a config nobody chose.
 * Returns an absolute path.
 */
export function findConfigFile(opts: FindConfigOptions = {}): string {
  if (opts.explicitPath !== undefined && opts.explicitPath !== '') {
    return requireFile(opts.explicitPath, 'the configuration file given explicitly');
  }
  const fromEnv = (opts.env ?? process.env)['KATA_CONF_FILE'];
  if (fromEnv !== undefined && fromEnv !== '') {
    return requireFile(fromEnv, 'the configuration file named by KATA_CONF_FILE');
  }
  const candidates = opts.defaultPaths ?? defaultConfigPaths();
  for (const candidate of candidates) {
    if (isFile(candidate)) return resolve(candidate);
  }
  throw errors.notFound(
    CONFIG_NOT_FOUND,
    `no configuration file found: tried ${candidates.join(', ')} (set KATA_CONF_FILE or pass a config path)`,
  );
}

function requireFile(path: string, what: string): string {
  const abs = resolve(path);
  if (!isFile(abs)) throw errors.notFound(CONFIG_NOT_FOUND, `${what} does not exist or is not a file: ${abs}`);
  return abs;
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

export interface ParseConfigOptions {
  /** Resolves "0 means the host's" values; the current machine when absent. */
  host?: HostInfo;
}

/** Reads and parses `path`. A missing file is NotFound; anything wrong inside it is InvalidArgument. */
export async function loadConfig(path: string, opts: ParseConfigOptions = {}): Promise<RuntimeConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw errors.notFound(CONFIG_NOT_FOUND, `configuration file not found: ${path}`, err);
    throw errors.precondition(CONFIG_UNREADABLE, `cannot read configuration file ${path}: ${(err as Error).message}`, err);
  }
  return parseConfig(text, path, opts);
}

/** Parses the text of a configuration file; `sourcePath` names it in every error. */
export function parseConfig(text: string, sourcePath: string, opts: ParseConfigOptions = {}): RuntimeConfig {
  const fail: Fail = (message) => {
    throw errors.invalid(CONFIG_INVALID, `${sourcePath}: ${message}`);
  };

  let doc: Record<string, unknown>;
  try {
    doc = parse(text, { integersAsBigInt: true, unsafeKeyBehaviour: 'throw' }) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof TomlError) {
      const why = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      throw errors.invalid(CONFIG_INVALID, `${sourcePath}:${err.line}:${err.column}: invalid TOML: ${why}`, err);
    }
    throw errors.invalid(CONFIG_INVALID, `${sourcePath}: invalid TOML: ${(err as Error).message}`, err);
  }

  const config: RuntimeConfig = {
    sourcePath,
    hypervisor: defaultHypervisorConfig(),
    agent: defaultAgentConfig(),
    runtime: defaultRuntimeOptions(),
    factory: defaultFactoryConfig(),
    ignoredKeys: [],
  };
  const hypervisorSections: HypervisorKind[] = [];

  for (const [name, value] of Object.entries(doc)) {
    if (!isTable(value)) fail(`unknown key ${name} at top level (keys belong in a [section])`);
    const section = value as Record<string, unknown>;
    switch (name) {
      case 'hypervisor':
        for (const [kind, sub] of Object.entries(section)) {
          if (!isTable(sub)) fail(`[hypervisor] ${kind}: keys belong in [hypervisor.qemu], not [hypervisor]`);
          if (!(HYPERVISOR_KINDS as readonly string[]).includes(kind)) {
            fail(`unknown section [hypervisor.${kind}] (kata-ts knows ${HYPERVISOR_KINDS.map((k) => `[hypervisor.${k}]`).join(', ')})`);
          }
          hypervisorSections.push(kind as HypervisorKind);
          readSection(sub as Record<string, unknown>, `[hypervisor.${kind}]`, HYPERVISOR_KEYS, config.hypervisor, config, fail);
        }
        break;
      case 'agent':
        for (const [kind, sub] of Object.entries(section)) {
          if (!isTable(sub)) fail(`[agent] ${kind}: keys belong in [agent.kata], not [agent]`);
          if (kind !== 'kata') fail(`unknown section [agent.${kind}] (kata-ts knows [agent.kata])`);
          readSection(sub as Record<string, unknown>, '[agent.kata]', AGENT_KEYS, config.agent, config, fail);
        }
        break;
      case 'runtime':
        readSection(section, '[runtime]', RUNTIME_KEYS, config.runtime, config, fail);
        break;
      case 'factory':
        readSection(section, '[factory]', FACTORY_KEYS, config.factory, config, fail);
        break;
      default:
        readLegacySection(name, section, config, fail);
    }
  }

  if (hypervisorSections.length === 0) fail('no hypervisor section: expected [hypervisor.qemu]');
  if (hypervisorSections.length > 1) {
    fail(`only one hypervisor section is allowed, found ${hypervisorSections.map((k) => `[hypervisor.${k}]`).join(' and ')}`);
  }
  config.hypervisor.hypervisorKind = hypervisorSections[0]!;

  resolveHostDefaults(config, opts.host ?? currentHost());
  validateConfig(config, fail);
  return config;
}

/** `[netmon]`, `[image]`, `[proxy.kata]`, `[shim.kata]` of older Kata files: accepted, recorded, ignored. */
function readLegacySection(name: string, section: Record<string, unknown>, config: RuntimeConfig, fail: Fail): void {
  if (LEGACY_SECTIONS.has(name)) {
    config.ignoredKeys.push(`[${name}]`);
    return;
  }
  const subs = Object.keys(section);
  if (subs.length > 0 && subs.every((s) => LEGACY_SECTIONS.has(`${name}.${s}`) && isTable(section[s]))) {
    for (const s of subs) config.ignoredKeys.push(`[${name}.${s}]`);
    return;
  }
  fail(`unknown section [${name}] (kata-ts knows [hypervisor.qemu], [agent.kata], [runtime], [factory])`);
}

function readSection(
  table: Record<string, unknown>,
  label: string,
  specs: ReadonlyMap<string, KeySpec>,
  target: object,
  config: RuntimeConfig,
  fail: Fail,
): void {
  for (const [key, raw] of Object.entries(table)) {
    const spec = specs.get(key);
    if (!spec) {
      const hint = suggest(key, specs.keys());
      const what = isTable(raw) ? `unknown section ${label.slice(0, -1)}.${key}]` : `${label} ${key}: unknown key`;
      fail(`${what}${hint ? ` (did you mean ${hint}?)` : ''}`);
    }
    const value = readValue(spec.value, raw, (m) => fail(`${label} ${key}${m.startsWith('[') ? '' : ': '}${m}`));
    if (spec.field) {
      setField(target, spec, value);
    } else {
      config.ignoredKeys.push(`${label} ${key}`);
    }
  }
}

function isTable(v: unknown): boolean {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date);
}
