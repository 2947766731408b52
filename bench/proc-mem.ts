import { readdirSync, readFileSync } from 'node:fs';

/** RSS and PSS (kB) of a process from /proc/<pid>/smaps_rollup; zeros if it is gone. */
export function procMemKb(pid: number): { rssKb: number; pssKb: number } {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const get = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
    return { rssKb: get('Rss'), pssKb: get('Pss') };
  } catch {
    return { rssKb: 0, pssKb: 0 };
  }
}

/** Pids whose command line matches `re`. */
export function pidsMatching(re: RegExp): number[] {
  const out: number[] = [];
  for (const d of readdirSafe('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (re.test(cmd)) out.push(Number(d));
    } catch {
      // gone
    }
  }
  return out;
}

function readdirSafe(p: string): string[] {
  try {
    return readdirSync(p);
  } catch {
    return [];
  }
}
