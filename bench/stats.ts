import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Small helpers shared by the benchmarks: medians and a side-by-side table. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function fmtMs(ms: number | undefined): string {
  return ms === undefined || Number.isNaN(ms) ? '-' : `${Math.round(ms)} ms`;
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n');
}

export function runs(): number {
  return Number(process.env.BENCH_RUNS ?? 5);
}

/** Runs a command to completion and times it; a failure prints the end of its stderr. */
export function timeCommand(cmd: string, args: string[]): Promise<{ ms: number; code: number | null }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('close', (code) => {
      if (code !== 0) process.stderr.write(`${cmd} exited ${code}: ${err.slice(-2000)}\n`);
      resolve({ ms: performance.now() - t0, code });
    });
  });
}

/** Writes bench/results/<name>.json (the figures) and <name>.md (the printed table). */
export function writeResults(name: string, summary: unknown, markdown: string): void {
  const dir = new URL('../../bench/results/', import.meta.url).pathname;
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(summary, null, 2) + '\n');
  writeFileSync(join(dir, `${name}.md`), markdown);
}
