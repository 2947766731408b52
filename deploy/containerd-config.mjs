#!/usr/bin/env node
// Text-preserving edits of a containerd config for scripts/kata-deploy.sh: adds the tables of
// deploy/containerd-kata.toml to a config without rewriting anything else, takes them out again, and
// describes the kata handler a config sets.
//
//   containerd-config.mjs merge SNIPPET CONFIG OUT   writes CONFIG (missing = empty) merged with SNIPPET to OUT;
//                                                   prints the keys it added (one line, comma separated),
//                                                   warnings on stderr
//   containerd-config.mjs strip CONFIG OUT          writes CONFIG without the blocks `merge` added to OUT;
//                                                   prints how many blocks it removed
//   containerd-config.mjs status SNIPPET CONFIG [recorded]
//                                                   prints (for kata-deploy.sh status) whether CONFIG has the
//                                                   handler and settings of SNIPPET; exit 0 when it has
//
// Every piece `merge` adds is one block of whole lines between two marker comments (BEGIN and END below),
// either right after the header of a table the config already defines, or appended at the end. `strip`
// removes exactly those lines (and the final newline `merge` had to add, which the BEGIN marker records),
// so strip(merge(x)) === x byte for byte. Keys the config already sets are never changed: an equal value
// is left alone, a different one is reported (and, for the runtime handler itself, refused).
// Both results are checked by parsing them (smol-toml, TOML 1.0): the merged config must parse to the
// original plus exactly the added keys, the stripped one must parse; otherwise nothing is written.
// Exit status: 0 done, 1 conflict or unparsable config (the message says what to do; status: differs), 2 usage.
import { existsSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parse } from 'smol-toml';

export const BEGIN = '# >>> kata-ts: added by scripts/kata-deploy.sh install, removed by uninstall';
const BEGIN_NL = `${BEGIN} (and the final newline before it)`;
export const END = '# <<< kata-ts';

const CRI_V2 = 'io.containerd.grpc.v1.cri';
const CRI_V1 = 'cri';

class Conflict extends Error {}

function fail(msg) {
  process.stderr.write(`containerd-config: ${msg}\n`);
  process.exit(1);
}

const isTable = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date) && !isTomlDate(v);
function isTomlDate(v) {
  return v !== null && typeof v === 'object' && typeof v.toISOString === 'function';
}

/** A canonical JSON text of a parsed TOML value (sorted keys), for equality tests. */
function canon(v) {
  if (Array.isArray(v)) return `[${v.map(canon).join(',')}]`;
  if (isTomlDate(v)) return JSON.stringify(`date:${v.toISOString()}`);
  if (typeof v === 'bigint') return `${v}n`;
  if (isTable(v)) {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canon(v[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}
const same = (a, b) => canon(a) === canon(b);

function getPath(obj, path) {
  let cur = obj;
  for (const k of path) {
    if (!isTable(cur) || !Object.hasOwn(cur, k)) return undefined;
    cur = cur[k];
  }
  return cur;
}

function setPath(obj, path, key, value) {
  let cur = obj;
  for (const k of path) {
    if (!Object.hasOwn(cur, k)) cur[k] = {};
    cur = cur[k];
  }
  cur[key] = value;
}

/** A TOML key: bare when it can be, else a basic string. */
function tomlKey(k) {
  return /^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k);
}
const headerOf = (path) => path.map(tomlKey).join('.');

/** A TOML value for the kinds the snippet uses (strings, booleans, integers, arrays of those). */
function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (typeof v === 'number' && Number.isInteger(v)) return String(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  throw new Error(`the snippet uses a value kata-deploy cannot write: ${JSON.stringify(v)}`);
}

/**
 * The tables of a parsed snippet that hold keys (not sub-tables), in document order, as {path, entries}.
 * `version` (top level) is handled by the caller.
 */
function groupsOf(snippet, path = []) {
  const own = [];
  const subs = [];
  for (const [k, v] of Object.entries(snippet)) {
    if (isTable(v)) subs.push([k, v]);
    else if (!(path.length === 0 && k === 'version')) own.push([k, v]);
  }
  const out = own.length ? [{ path, entries: own }] : [];
  for (const [k, v] of subs) out.push(...groupsOf(v, [...path, k]));
  return out;
}

/**
 * Parses the key path of a table header line such as `  [plugins."io.containerd.grpc.v1.cri".cni]  # x`.
 * Returns undefined for anything else (keys, array-of-tables headers, comments).
 */
export function headerPath(line) {
  let i = 0;
  const s = line;
  while (s[i] === ' ' || s[i] === '\t') i++;
  if (s[i] !== '[' || s[i + 1] === '[') return undefined;
  i++;
  const path = [];
  for (;;) {
    while (s[i] === ' ' || s[i] === '\t') i++;
    let key;
    if (s[i] === '"') {
      let j = i + 1;
      while (j < s.length && s[j] !== '"') j += s[j] === '\\' ? 2 : 1;
      if (j >= s.length) return undefined;
      try {
        key = JSON.parse(s.slice(i, j + 1));
      } catch {
        return undefined;
      }
      i = j + 1;
    } else if (s[i] === "'") {
      const j = s.indexOf("'", i + 1);
      if (j < 0) return undefined;
      key = s.slice(i + 1, j);
      i = j + 1;
    } else {
      const m = /^[A-Za-z0-9_-]+/.exec(s.slice(i));
      if (!m) return undefined;
      key = m[0];
      i += key.length;
    }
    path.push(key);
    while (s[i] === ' ' || s[i] === '\t') i++;
    if (s[i] === '.') {
      i++;
      continue;
    }
    if (s[i] !== ']') return undefined;
    i++;
    break;
  }
  const rest = s.slice(i).trim();
  if (rest !== '' && !rest.startsWith('#')) return undefined;
  return path;
}

/**
 * Splits text into lines that keep their terminators, and marks the lines that start inside a multi-line
 * string (so a header-looking line in a string is not taken for a header).
 */
function linesOf(text) {
  const lines = text.match(/[^\n]*\n|[^\n]+$/g) ?? [];
  const inString = [];
  let open = null; // '"""' or "'''" while inside a multi-line string
  for (const line of lines) {
    inString.push(open !== null);
    // Scan the line for string delimiters outside comments.
    let i = 0;
    while (i < line.length) {
      if (open) {
        const j = line.indexOf(open, i);
        if (j < 0) break;
        i = j + 3;
        open = null;
        continue;
      }
      const c = line[i];
      if (c === '#') break;
      if (line.startsWith('"""', i) || line.startsWith("'''", i)) {
        open = line.slice(i, i + 3);
        i += 3;
        continue;
      }
      if (c === '"') {
        i++;
        while (i < line.length && line[i] !== '"' && line[i] !== '\n') i += line[i] === '\\' ? 2 : 1;
        i++;
        continue;
      }
      if (c === "'") {
        const j = line.indexOf("'", i + 1);
        i = j < 0 ? line.length : j + 1;
        continue;
      }
      i++;
    }
  }
  return { lines, inString };
}

function parseOrFail(text, what) {
  try {
    return parse(text);
  } catch (err) {
    throw new Conflict(`${what} is not valid TOML: ${String(err.message ?? err).split('\n')[0]}`);
  }
}

/** The config's schema version as containerd 1.6 reads it: missing means 1 (0 for an empty config). */
function versionOf(config) {
  if (Object.keys(config).length === 0) return 0;
  const v = config.version;
  if (v === undefined) return 1;
  return Number(v);
}

/** The snippet's tables rewritten for the config's version (v1 names the CRI plugin `cri`). */
function snippetFor(snippet, version) {
  if (version !== 1) return snippet;
  const plugins = { ...(snippet.plugins ?? {}) };
  if (plugins[CRI_V2]) {
    plugins[CRI_V1] = plugins[CRI_V2];
    delete plugins[CRI_V2];
  }
  return { ...snippet, plugins };
}

/** The path of a runtime handler table (`...containerd.runtimes.<name>`), whose subtree is merged as a unit. */
function handlerPathOf(path) {
  const i = path.indexOf('runtimes');
  if (i < 1 || path[i - 1] !== 'containerd' || path.length < i + 2) return undefined;
  return path.slice(0, i + 2);
}

export function merge(snippetText, configText) {
  const snippetAll = parseOrFail(snippetText, 'the snippet');
  const original = parseOrFail(configText, 'the containerd config');
  const version = versionOf(original);
  if (version > 2) {
    throw new Conflict(
      `the containerd config has version = ${version}: kata-deploy writes containerd 1.6 tables (version 2; ` +
        'version 3 is containerd 2.x, whose CRI plugin is io.containerd.cri.v1.runtime). Add the handler by hand.',
    );
  }
  const snippet = snippetFor(snippetAll, version);
  const warnings = [];
  const added = {};
  const addedKeys = [];
  // Per group: the keys to add, and where.
  const plan = [];
  const handlersSeen = new Set();
  for (const group of groupsOf(snippet)) {
    const handlerPath = handlerPathOf(group.path);
    if (handlerPath) {
      const hk = handlerPath.join('\u0000');
      const existing = getPath(original, handlerPath);
      if (existing !== undefined) {
        if (!handlersSeen.has(hk)) {
          handlersSeen.add(hk);
          if (!same(existing, getPath(snippet, handlerPath))) {
            throw new Conflict(
              `the containerd config already has a runtime handler [${headerOf(handlerPath)}] that differs from ` +
                "deploy/containerd-kata.toml: kata-deploy will not change a handler it did not add. Remove it (or make it " +
                'equal to the snippet) and install again.',
            );
          }
          warnings.push(`[${headerOf(handlerPath)}] is already configured as in the snippet: left as it is`);
        }
        continue;
      }
      handlersSeen.add(hk);
    }
    const table = getPath(original, group.path);
    if (table !== undefined && !isTable(table)) {
      throw new Conflict(`${headerOf(group.path)} is not a table in the containerd config`);
    }
    const keys = [];
    for (const [k, v] of group.entries) {
      if (table !== undefined && Object.hasOwn(table, k)) {
        if (!same(table[k], v)) {
          warnings.push(
            `${headerOf(group.path)}.${tomlKey(k)} is already set to ${tomlValue(table[k])} (the snippet has ` +
              `${tomlValue(v)}): left as it is`,
          );
        }
        continue;
      }
      keys.push([k, v]);
      setPath(added, group.path, k, v);
      addedKeys.push(`${headerOf(group.path)}.${tomlKey(k)}`);
    }
    if (keys.length) plan.push({ path: group.path, keys });
  }
  if (version === 0 && plan.length) {
    // An empty (or comments-only) config is version 1 to containerd: say version 2 as the snippet does.
    added.version = snippetAll.version ?? 2;
    addedKeys.unshift('version');
  }
  if (plan.length === 0) return { version, text: configText, changed: false, added: addedKeys, warnings };

  const { lines, inString } = linesOf(configText);
  const headers = new Map(); // header path -> line index
  lines.forEach((line, i) => {
    if (inString[i]) return;
    const p = headerPath(line.replace(/\r?\n$/, ''));
    if (p) headers.set(p.join('\u0000'), i);
  });
  const insertAfter = new Map(); // line index -> text
  const appended = [];
  if (added.version !== undefined) appended.push(`version = ${tomlValue(added.version)}\n`);
  for (const { path, keys } of plan) {
    const at = headers.get(path.join('\u0000'));
    if (at !== undefined) {
      const indent = /^[ \t]*/.exec(lines[at])[0] + '  ';
      const body = keys.map(([k, v]) => `${indent}${tomlKey(k)} = ${tomlValue(v)}\n`).join('');
      insertAfter.set(at, (insertAfter.get(at) ?? '') + body);
    } else {
      appended.push(`[${headerOf(path)}]\n`, ...keys.map(([k, v]) => `  ${tomlKey(k)} = ${tomlValue(v)}\n`));
    }
  }
  let out = '';
  lines.forEach((line, i) => {
    out += line;
    const body = insertAfter.get(i);
    if (body !== undefined) {
      // A header on the last line without a newline: give it one (recorded in the marker).
      if (!line.endsWith('\n')) out += '\n';
      out += `${line.endsWith('\n') ? BEGIN : BEGIN_NL}\n${body}${END}\n`;
    }
  });
  if (appended.length) {
    const needsNl = out.length > 0 && !out.endsWith('\n');
    out += `${needsNl ? '\n' : ''}${needsNl ? BEGIN_NL : BEGIN}\n${appended.join('')}${END}\n`;
  }
  // Check: the result parses to the original plus exactly the added keys.
  let merged;
  try {
    merged = parse(out);
  } catch (err) {
    throw new Conflict(
      'adding the snippet would make the config invalid TOML (a table it needs is written as an inline table or ' +
        `with dotted keys?): ${String(err.message ?? err).split('\n')[0]}. Add deploy/containerd-kata.toml by hand.`,
    );
  }
  const copy = (v) => (isTable(v) ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copy(x)])) : v);
  const expected = copy(original);
  const addInto = (dst, src) => {
    for (const [k, v] of Object.entries(src)) {
      if (isTable(v)) {
        if (!Object.hasOwn(dst, k)) dst[k] = {};
        addInto(dst[k], v);
      } else dst[k] = v;
    }
  };
  addInto(expected, added);
  if (!same(merged, expected)) {
    throw new Conflict('merging the snippet text did not give the expected config (unusual layout?): add it by hand');
  }
  if (strip(out).text !== configText) throw new Conflict('internal error: strip(merge(config)) differs from config');
  return { version, text: out, changed: true, added: addedKeys, warnings };
}

/** Removes every block `merge` added. */
export function strip(text) {
  const { lines } = linesOf(text);
  let out = '';
  let blocks = 0;
  for (let i = 0; i < lines.length; i++) {
    const bare = lines[i].replace(/\r?\n$/, '');
    if (bare === BEGIN || bare === BEGIN_NL) {
      let j = i + 1;
      while (j < lines.length && lines[j].replace(/\r?\n$/, '') !== END) j++;
      if (j >= lines.length) throw new Conflict(`a kata-deploy block starting on line ${i + 1} has no end marker`);
      if (bare === BEGIN_NL && out.endsWith('\n')) out = out.slice(0, -1);
      i = j;
      blocks++;
      continue;
    }
    out += lines[i];
  }
  return { text: out, blocks };
}

function readConfig(path) {
  return existsSync(path) ? readFileSync(path, 'utf8') : '';
}

const say = (line) => process.stdout.write(`${line}\n`);
const warn = (line) => process.stderr.write(`kata-deploy: warning: ${line}\n`);

/** Prints what the config says about the handler and the snippet's other settings; true when all match. */
function status(snippetText, configText, cfgPath, recorded) {
  const snippetAll = parseOrFail(snippetText, 'the snippet');
  const config = parseOrFail(configText, `${cfgPath}`);
  const snippet = snippetFor(snippetAll, versionOf(config));
  const groups = groupsOf(snippet);
  const handlerPath = groups.map((g) => handlerPathOf(g.path)).find(Boolean);
  const line = (state, text) => say(`  ${state.padEnd(9)} ${text}`);
  const marked = strip(configText).blocks;
  const how = recorded ? 'merged by kata-deploy' : marked ? 'has kata-deploy blocks but no record' : 'not merged by kata-deploy';
  let ok = true;
  if (handlerPath) {
    const handler = getPath(config, handlerPath);
    const matches = handler !== undefined && same(handler, getPath(snippet, handlerPath));
    if (handler === undefined) line('MISSING', `${cfgPath}: no [${headerOf(handlerPath)}] (${how})`);
    else {
      line(matches ? 'ok' : 'DIFFERENT', `${cfgPath}: kata handler ${matches ? 'as in' : 'differs from'} deploy/containerd-kata.toml (${how})`);
      const h = isTable(handler) ? handler : {};
      say(
        `            runtime_type=${h.runtime_type} ConfigPath=${getPath(h, ['options', 'ConfigPath']) ?? '(none)'} ` +
          `pod_annotations=${JSON.stringify(h.pod_annotations ?? [])}`,
      );
    }
    ok &&= matches;
  }
  for (const g of groups.filter((x) => !handlerPathOf(x.path))) {
    for (const [k, v] of g.entries) {
      const actual = getPath(config, [...g.path, k]);
      const matches = actual !== undefined && same(actual, v);
      const key = `${headerOf(g.path)}.${tomlKey(k)}`;
      line(
        matches ? 'ok' : 'DIFFERENT',
        `${cfgPath}: ${key} ${actual === undefined ? 'is not set' : `= ${tomlValue(actual)}`}` +
          (matches ? '' : ` (deploy/containerd-kata.toml: ${tomlValue(v)})`),
      );
      ok &&= matches;
    }
  }
  return ok;
}

function main(argv) {
  const [cmd, ...args] = argv;
  try {
    if (cmd === 'merge' && args.length === 3) {
      const r = merge(readFileSync(args[0], 'utf8'), readConfig(args[1]));
      writeFileSync(args[2], r.text);
      for (const w of r.warnings) warn(w);
      say(r.added.join(', '));
      return 0;
    }
    if (cmd === 'strip' && args.length === 2) {
      const r = strip(readConfig(args[0]));
      if (r.blocks > 0) parseOrFail(r.text, 'the config without the kata-deploy blocks');
      writeFileSync(args[1], r.text);
      say(String(r.blocks));
      return 0;
    }
    if (cmd === 'status' && (args.length === 2 || args.length === 3)) {
      return status(readFileSync(args[0], 'utf8'), readConfig(args[1]), args[1], args[2] === 'recorded') ? 0 : 1;
    }
  } catch (err) {
    if (err instanceof Conflict) fail(err.message);
    throw err;
  }
  process.stderr.write('usage: containerd-config.mjs merge SNIPPET CONFIG OUT | strip CONFIG OUT | status SNIPPET CONFIG [recorded]\n');
  return 2;
}

// Run as a program (not when imported).
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}
