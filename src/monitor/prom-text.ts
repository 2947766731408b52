/**
 * Merging Prometheus text exposition (format 0.0.4) from several shims into one: every sample gets extra labels
 * (`sandbox_id`), and the samples of one metric family stay together under a single HELP and TYPE, as the
 * format requires. Parsed line by line; sample values and timestamps are passed through untouched.
 */

/** Suffixes that samples of histograms, summaries and counters carry after their family's name. */
const SAMPLE_SUFFIXES = ['_bucket', '_sum', '_count', '_total', '_created', '_gsum', '_gcount', '_info'];
const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;

interface Family {
  help?: string;
  type?: string;
  samples: string[];
}

/** Escapes a label value for the text format. */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Renders `{a="x",b="y"}` as the inside of a label set: `a="x",b="y"`. */
function renderLabels(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}="${escapeLabelValue(v)}"`)
    .join(',');
}

/** Adds `labels` in front of a sample line's own labels. Returns the line unchanged when there is nothing to add. */
export function addLabels(sampleLine: string, labels: Record<string, string>): string {
  const extra = renderLabels(labels);
  if (!extra) return sampleLine;
  const name = NAME.exec(sampleLine)?.[0];
  if (!name) return sampleLine;
  const rest = sampleLine.slice(name.length);
  if (rest.startsWith('{')) {
    const inner = rest.slice(1);
    return `${name}{${extra}${inner.trimStart().startsWith('}') ? '' : ','}${inner}`;
  }
  return `${name}{${extra}}${rest}`;
}

/** Which family a sample belongs to: the current HELP/TYPE family if the name fits it, else its own name. */
function familyOf(sampleName: string, current: string | undefined): string {
  if (current === undefined) return sampleName;
  if (sampleName === current) return current;
  if (sampleName.startsWith(current) && SAMPLE_SUFFIXES.includes(sampleName.slice(current.length))) return current;
  return sampleName;
}

export class MetricsMerger {
  private readonly families = new Map<string, Family>();

  private family(name: string): Family {
    let f = this.families.get(name);
    if (!f) {
      f = { samples: [] };
      this.families.set(name, f);
    }
    return f;
  }

  /** Adds one exposition's samples, each labelled with `labels`. HELP and TYPE of a family are kept from the first source. */
  add(text: string, labels: Record<string, string> = {}): void {
    let current: string | undefined;
    for (const raw of text.split('\n')) {
      const line = raw.replace(/\r$/, '');
      if (line.trim() === '') continue;
      if (line.startsWith('#')) {
        const m = /^#\s*(HELP|TYPE)\s+([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\s(.*))?$/.exec(line);
        if (!m) continue; // other comments
        const [, kind, name, value = ''] = m;
        current = name!;
        const f = this.family(current);
        if (kind === 'HELP') f.help ??= value;
        else f.type ??= value.trim();
        continue;
      }
      const name = NAME.exec(line)?.[0];
      if (!name) continue; // not a sample: dropped rather than corrupting the output
      this.family(familyOf(name, current)).samples.push(addLabels(line, labels));
    }
  }

  /** Metric family names, in the order they were first seen. */
  names(): string[] {
    return [...this.families.keys()];
  }

  render(): string {
    const out: string[] = [];
    for (const [name, f] of this.families) {
      if (f.samples.length === 0 && f.help === undefined && f.type === undefined) continue;
      if (f.help !== undefined) out.push(`# HELP ${name} ${f.help}`);
      if (f.type !== undefined) out.push(`# TYPE ${name} ${f.type}`);
      out.push(...f.samples);
    }
    return out.length > 0 ? out.join('\n') + '\n' : '';
  }
}
