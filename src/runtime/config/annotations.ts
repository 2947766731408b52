import { posix } from 'node:path';
import { errors } from '../../base/errors.js';
import { matchAnyGlob } from './glob.js';
import {
  AGENT_KEYS,
  AGENT_UNSUPPORTED_ANNOTATIONS,
  describe,
  hasControlChars,
  HYPERVISOR_KEYS,
  readValue,
  RUNTIME_KEYS,
  RUNTIME_UNSUPPORTED_ANNOTATIONS,
  setField,
  suggest,
  type Fail,
  type KeySpec,
} from './schema.js';
import type { HostInfo, QemuConfig, RuntimeConfig } from './types.js';
import { currentHost, validateConfig } from './validate.js';

/**
 * Kata's per-pod override annotations (`io.katacontainers.config.*`, read from the sandbox's OCI spec).
 * Annotations come from whoever creates the pod, so they are treated as hostile: hypervisor keys must be
 * enabled by `enable_annotations`, paths must match the admin's globs, numbers stay within the host, and
 * strings carry no control characters.
 */

export const ANNOTATION_INVALID = 'KATA_ANNOTATION_INVALID';
export const ANNOTATION_NOT_ENABLED = 'KATA_ANNOTATION_NOT_ENABLED';

export const CONFIG_ANNOTATION_PREFIX = 'io.katacontainers.config.';
export const HYPERVISOR_ANNOTATION_PREFIX = 'io.katacontainers.config.hypervisor.';
export const RUNTIME_ANNOTATION_PREFIX = 'io.katacontainers.config.runtime.';
export const AGENT_ANNOTATION_PREFIX = 'io.katacontainers.config.agent.';

/** Longer values are refused: the guest kernel command line itself is limited to 2 KiB on x86. */
const MAX_VALUE_LENGTH = 4096;

/** Kernel parameters an annotation may not set: they would replace the guest's init, root or agent setup. */
const RESERVED_KERNEL_PARAMS = new Set(['init', 'rdinit', 'root', 'rootfstype', 'rootflags', '--']);
/** virtiofsd options an annotation may not set: they would change what host folder is shared, or how. */
const RESERVED_VIRTIOFSD_OPTIONS = /source|shared-dir|socket|(^|[-,=\s])fd\b|sandbox|seccomp/;

/** Annotation name -> spec, with Kata's renamed annotations (e.g. `default_max_vcpus`). */
function byAnnotationName(specs: ReadonlyMap<string, KeySpec>): ReadonlyMap<string, KeySpec> {
  const m = new Map<string, KeySpec>();
  for (const spec of specs.values()) {
    const name = typeof spec.annotation === 'string' && spec.annotation !== 'unsupported' ? spec.annotation : spec.key;
    m.set(name, spec);
  }
  return m;
}

const HYPERVISOR_ANNOTATIONS = byAnnotationName(HYPERVISOR_KEYS);
const RUNTIME_ANNOTATIONS = byAnnotationName(RUNTIME_KEYS);
const AGENT_ANNOTATIONS = byAnnotationName(AGENT_KEYS);

/** Bounds on numbers from annotations, tighter than the file's: within this host and this config. */
const HOST_LIMITS: Record<string, (host: HostInfo, h: QemuConfig) => [number, number]> = {
  default_vcpus: (host, h) => [1, Math.min(host.cpus, h.defaultMaxVcpus)],
  default_max_vcpus: (host) => [1, host.cpus],
  default_memory: (host, h) => [64, Math.min(host.memoryMiB, h.defaultMaxMemoryMiB)],
  default_maxmemory: (host) => [64, host.memoryMiB],
  memory_slots: () => [1, 512],
  virtio_fs_queue_size: () => [1, 1024],
};

export interface ApplyAnnotationsOptions {
  /** Caps vCPUs and memory; the current machine when absent. */
  host?: HostInfo;
}

/**
 * Returns a new config with the `io.katacontainers.config.*` annotations applied; `config` is not changed.
 * Other annotations are ignored. Any refused annotation fails the whole call with InvalidArgument naming it.
 */
export function applyAnnotations(
  config: RuntimeConfig,
  annotations: Record<string, string>,
  opts: ApplyAnnotationsOptions = {},
): RuntimeConfig {
  const host = opts.host ?? currentHost();
  const out = structuredClone(config);
  const applied: string[] = [];
  // Sorted, so that the same set of annotations always fails on the same one.
  for (const key of Object.keys(annotations).sort()) {
    if (!key.startsWith(CONFIG_ANNOTATION_PREFIX)) continue;
    const value: unknown = annotations[key];
    const fail: Fail = (message) => {
      throw errors.invalid(ANNOTATION_INVALID, `annotation ${key}: ${message}`);
    };
    if (typeof value !== 'string') fail(`expected a string value, got ${describe(value)}`);
    const text = value as string;
    if (text.length > MAX_VALUE_LENGTH) fail(`value is longer than ${MAX_VALUE_LENGTH} characters`);
    if (hasControlChars(text)) fail(`control characters are not allowed in ${describe(text)}`);

    if (key.startsWith(HYPERVISOR_ANNOTATION_PREFIX)) {
      applyHypervisor(out, config, key, key.slice(HYPERVISOR_ANNOTATION_PREFIX.length), text, host, fail);
    } else if (key.startsWith(RUNTIME_ANNOTATION_PREFIX)) {
      const name = key.slice(RUNTIME_ANNOTATION_PREFIX.length);
      if (RUNTIME_UNSUPPORTED_ANNOTATIONS.has(name)) fail('not supported by kata-ts');
      applySimple(out, out.runtime, RUNTIME_ANNOTATIONS, key, name, text, fail);
    } else if (key.startsWith(AGENT_ANNOTATION_PREFIX)) {
      const name = key.slice(AGENT_ANNOTATION_PREFIX.length);
      if (AGENT_UNSUPPORTED_ANNOTATIONS.has(name)) fail('not supported by kata-ts');
      applySimple(out, out.agent, AGENT_ANNOTATIONS, key, name, text, fail);
    } else {
      fail('unknown configuration annotation (kata-ts knows .hypervisor., .runtime. and .agent. keys)');
    }
    applied.push(key);
  }
  if (applied.length > 0) {
    validateConfig(out, (message) => {
      throw errors.invalid(ANNOTATION_INVALID, `annotations ${applied.join(', ')}: ${message}`);
    });
  }
  return out;
}

function applyHypervisor(
  out: RuntimeConfig,
  original: RuntimeConfig,
  key: string,
  name: string,
  text: string,
  host: HostInfo,
  fail: Fail,
): void {
  if (name.endsWith('_hash')) fail('asset hash checks are not supported by kata-ts');
  const spec = HYPERVISOR_ANNOTATIONS.get(name);
  if (!spec) fail(unknown(name, HYPERVISOR_ANNOTATIONS));
  const s = spec!;
  if (s.annotation === false) fail(`${s.key} can only be set in the configuration file`);
  if (s.annotation === 'unsupported') fail('not supported by kata-ts');
  // The gates come from the file as loaded: no annotation can widen them (they are not annotatable either).
  const gates = original.hypervisor.enableAnnotations;
  if (!gates.some((re) => new RegExp(re).test(name))) {
    throw errors.invalid(
      ANNOTATION_NOT_ENABLED,
      `annotation ${key} is not enabled (no enable_annotations entry in ${original.sourcePath} matches "${name}")`,
    );
  }
  const value = readValue(s.value, toRaw(s, text, fail), fail);

  if (s.gate) {
    const patterns = (original.hypervisor as unknown as Record<string, string[]>)[s.gate]!;
    // Globs check text, so a path must be in plain form: `/usr/bin/../../tmp/x` would match `/usr/bin/*`.
    if (posix.normalize(text) !== text || text.endsWith('/')) fail(`path ${describe(text)} is not in normal form`);
    if (!matchAnyGlob(patterns, text)) {
      fail(`path ${describe(text)} is not allowed by ${gateKey(s.gate)}`);
    }
  }
  const limit = HOST_LIMITS[name];
  if (limit) {
    const [min, max] = limit(host, out.hypervisor);
    const n = value as number;
    if (n < min || n > max) fail(`${n} is out of range (${min} to ${max} on this host)`);
  }
  if (s.key === 'kernel_params') {
    for (const param of value as string[]) {
      const pname = param.split('=')[0]!;
      if (RESERVED_KERNEL_PARAMS.has(pname) || pname.startsWith('agent.')) {
        fail(`kernel parameter ${describe(param)} is reserved for the runtime`);
      }
    }
    // Kata adds annotated kernel parameters to the configured ones.
    out.hypervisor.kernelParams = [...out.hypervisor.kernelParams, ...(value as string[])];
    return;
  }
  if (s.key === 'virtio_fs_extra_args') {
    for (const arg of value as string[]) {
      if (RESERVED_VIRTIOFSD_OPTIONS.test(arg)) fail(`virtiofsd option ${describe(arg)} is reserved for the runtime`);
    }
  }
  if (s.field) setField(out.hypervisor, s, value);
  else out.ignoredKeys.push(`annotation ${key}`);
}

function applySimple(
  out: RuntimeConfig,
  target: object,
  specs: ReadonlyMap<string, KeySpec>,
  key: string,
  name: string,
  text: string,
  fail: Fail,
): void {
  const spec = specs.get(name);
  if (!spec) fail(unknown(name, specs));
  const s = spec!;
  if (s.annotation === false) fail(`${s.key} can only be set in the configuration file`);
  if (s.annotation === 'unsupported') fail('not supported by kata-ts');
  const value = readValue(s.value, toRaw(s, text, fail), fail);
  if (s.field) setField(target, s, value);
  else out.ignoredKeys.push(`annotation ${key}`);
}

/** Turns an annotation's text into the TOML-like value `readValue` expects for the key's type. */
function toRaw(spec: KeySpec, text: string, fail: Fail): unknown {
  switch (spec.value.type) {
    case 'bool':
      // The forms Go's strconv.ParseBool accepts, which Kata uses.
      if (['1', 't', 'T', 'true', 'TRUE', 'True'].includes(text)) return true;
      if (['0', 'f', 'F', 'false', 'FALSE', 'False'].includes(text)) return false;
      return fail(`expected true or false, got ${describe(text)}`);
    case 'int':
      if (!/^[0-9]+$/.test(text)) return fail(`expected a non-negative decimal integer, got ${describe(text)}`);
      return BigInt(text);
    case 'strings':
      if (text.trimStart().startsWith('[')) {
        try {
          return JSON.parse(text) as unknown;
        } catch {
          return fail(`expected a JSON array of strings, got ${describe(text)}`);
        }
      }
      // Kata separates kernel modules with ';' (each has its own parameters), other lists with spaces.
      return spec.key === 'kernel_modules'
        ? text.split(';').map((m) => m.trim()).filter((m) => m !== '')
        : text.split(/\s+/).filter((a) => a !== '');
    case 'string':
    case 'params':
      return text;
  }
}

function unknown(name: string, specs: ReadonlyMap<string, KeySpec>): string {
  const hint = suggest(name, specs.keys());
  return `unknown key ${describe(name)}${hint ? ` (did you mean ${hint}?)` : ''}`;
}

function gateKey(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
