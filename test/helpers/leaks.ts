import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** What a sandbox may leave on the host: processes, mounts and state entries. Tests snapshot it around runs. */
export interface HostSnapshot {
  processes: string[];
  mounts: string[];
  entries: string[];
}

const STATE_DIRS = ['/run/vc/vm', '/run/vc/sbs', '/run/kata-containers/shared/sandboxes'];

/**
 * `only` limits the snapshot to what mentions this test's own sandbox ids, so that other users of the machine
 * (a benchmark, another test run) do not look like leaks.
 */
export function snapshotHost(only?: RegExp): HostSnapshot {
  let processes: string[];
  try {
    processes = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => /qemu-system|virtiofsd|containerd-shim-kata/.test(l) && l.includes('/run/'))
      .map((l) => l.trim());
  } catch {
    processes = [];
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith('/run/kata-containers') || m.startsWith('/run/vc'));
  const entries: string[] = [];
  for (const d of STATE_DIRS) {
    try {
      for (const e of readdirSync(d)) entries.push(`${d}/${e}`);
    } catch {
      // absent: nothing left there
    }
  }
  const keep = (xs: string[]) => (only ? xs.filter((x) => only.test(x)) : xs);
  return { processes: keep(processes), mounts: keep(mounts), entries: keep(entries) };
}

/** Waits briefly for processes to be reaped, then returns what is new compared to `before`. */
export async function leaksSince(before: HostSnapshot, only?: RegExp): Promise<HostSnapshot> {
  let now = snapshotHost(only);
  for (let i = 0; i < 20; i++) {
    const diff = diffSnap(before, now);
    if (diff.processes.length + diff.mounts.length + diff.entries.length === 0) return diff;
    await new Promise((r) => setTimeout(r, 100));
    now = snapshotHost(only);
  }
  return diffSnap(before, now);
}

function diffSnap(a: HostSnapshot, b: HostSnapshot): HostSnapshot {
  const pick = (x: string[], y: string[]) => y.filter((v) => !x.includes(v));
  return {
    processes: pick(a.processes, b.processes),
    mounts: pick(a.mounts, b.mounts),
    entries: pick(a.entries, b.entries),
  };
}
