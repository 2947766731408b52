import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CgroupStats } from '../protocol/gen/agent.js';

const CGROUP_ROOT = '/sys/fs/cgroup';

async function readKeyed(file: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const text = await readFile(file, 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && /^\d+$/.test(v)) out.set(k, Number(v));
  }
  return out;
}

async function readNumber(file: string): Promise<number> {
  const text = (await readFile(file, 'utf8').catch(() => '')).trim();
  return /^\d+$/.test(text) ? Number(text) : 0;
}

/** A container's cgroup v2 figures, in the agent API's (cgroup v1 shaped) message. */
export async function readCgroupStats(cgroupPath: string): Promise<CgroupStats> {
  const dir = join(CGROUP_ROOT, cgroupPath);
  const cpu = await readKeyed(join(dir, 'cpu.stat'));
  const mem = await readKeyed(join(dir, 'memory.stat'));
  const usage = await readNumber(join(dir, 'memory.current'));
  const limit = await readNumber(join(dir, 'memory.max'));
  const peak = await readNumber(join(dir, 'memory.peak'));
  const events = await readKeyed(join(dir, 'memory.events'));
  const swap = await readNumber(join(dir, 'memory.swap.current'));
  return {
    cpuStats: {
      cpuUsage: {
        totalUsage: (cpu.get('usage_usec') ?? 0) * 1000,
        percpuUsage: [],
        usageInKernelmode: (cpu.get('system_usec') ?? 0) * 1000,
        usageInUsermode: (cpu.get('user_usec') ?? 0) * 1000,
      },
      throttlingData: {
        periods: cpu.get('nr_periods') ?? 0,
        throttledPeriods: cpu.get('nr_throttled') ?? 0,
        throttledTime: (cpu.get('throttled_usec') ?? 0) * 1000,
      },
    },
    memoryStats: {
      cache: mem.get('file') ?? 0,
      usage: { usage, maxUsage: peak, failcnt: events.get('max') ?? 0, limit },
      swapUsage: { usage: swap, maxUsage: 0, failcnt: 0, limit: 0 },
      kernelUsage: { usage: mem.get('kernel') ?? 0, maxUsage: 0, failcnt: 0, limit: 0 },
      useHierarchy: true,
      stats: Object.fromEntries(mem),
    },
    pidsStats: {
      current: await readNumber(join(dir, 'pids.current')),
      limit: await readNumber(join(dir, 'pids.max')),
    },
    blkioStats: undefined,
    hugetlbStats: {},
  };
}
