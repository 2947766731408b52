/**
 * Shell-style globs with Go `filepath.Match` semantics, which Kata uses for its `valid_*_paths` lists:
 * `*` is any run of characters except `/`, `?` one character except `/`, `[abc]`, `[a-z]`, `[^a-z]` a class
 * (a negated class never matches `/`), `\` escapes the next character. The whole name must match.
 * Node 20's `path.matchesGlob` is experimental and follows different rules (`**`, braces), hence this.
 */

const cache = new Map<string, RegExp>();

/** The regular expression for `pattern`; throws an Error saying what is wrong for a malformed pattern. */
export function compileGlob(pattern: string): RegExp {
  const hit = cache.get(pattern);
  if (hit) return hit;
  const cps = Array.from(pattern);
  let out = '^';
  let i = 0;
  while (i < cps.length) {
    const c = cps[i++]!;
    if (c === '*') {
      out += '[^/]*';
    } else if (c === '?') {
      out += '[^/]';
    } else if (c === '\\') {
      if (i >= cps.length) throw new Error(`bad glob ${JSON.stringify(pattern)}: trailing backslash`);
      out += literal(cps[i++]!);
    } else if (c === '[') {
      const parsed = parseClass(cps, i, pattern);
      out += parsed.source;
      i = parsed.next;
    } else {
      out += literal(c);
    }
  }
  out += '$';
  const re = new RegExp(out, 'u');
  if (cache.size > 1000) cache.clear();
  cache.set(pattern, re);
  return re;
}

/** Whether `pattern` is well formed. */
export function isValidGlob(pattern: string): boolean {
  try {
    compileGlob(pattern);
    return true;
  } catch {
    return false;
  }
}

/** Whether `name` matches `pattern`; a malformed pattern matches nothing (as Go's error result does in Kata). */
export function matchGlob(pattern: string, name: string): boolean {
  let re: RegExp;
  try {
    re = compileGlob(pattern);
  } catch {
    return false;
  }
  return re.test(name);
}

/** Whether `name` matches any of `patterns`; an empty list matches nothing. */
export function matchAnyGlob(patterns: readonly string[], name: string): boolean {
  return patterns.some((p) => matchGlob(p, name));
}

function literal(ch: string): string {
  return /^[A-Za-z0-9_]$/.test(ch) ? ch : `\\u{${ch.codePointAt(0)!.toString(16)}}`;
}

/** Parses a class starting just after `[`; returns its regex source and the index after `]`. */
function parseClass(cps: string[], start: number, pattern: string): { source: string; next: number } {
  const bad = (why: string): Error => new Error(`bad glob ${JSON.stringify(pattern)}: ${why}`);
  let i = start;
  let negated = false;
  if (cps[i] === '^' || cps[i] === '!') {
    negated = true;
    i++;
  }
  let body = '';
  let ranges = 0;
  for (;;) {
    if (i >= cps.length) throw bad('unclosed [');
    if (cps[i] === ']' && ranges > 0) {
      i++;
      break;
    }
    const lo = classChar();
    let hi = lo;
    if (cps[i] === '-') {
      i++;
      if (i >= cps.length || cps[i] === ']') throw bad('range without an end');
      hi = classChar();
    }
    if (lo.codePointAt(0)! > hi.codePointAt(0)!) throw bad(`range ${lo}-${hi} is out of order`);
    body += lo === hi ? literal(lo) : `${literal(lo)}-${literal(hi)}`;
    ranges++;
  }
  if (negated) body += literal('/');
  return { source: `[${negated ? '^' : ''}${body}]`, next: i };

  // As in Go, a member `-` or `]` must be escaped; an empty class is malformed.
  function classChar(): string {
    let ch = cps[i++]!;
    if (ch === '-' || ch === ']') throw bad(`unescaped ${ch} in a class`);
    if (ch === '\\') {
      if (i >= cps.length) throw bad('trailing backslash');
      ch = cps[i++]!;
    }
    return ch;
  }
}
