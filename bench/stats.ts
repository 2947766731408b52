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
