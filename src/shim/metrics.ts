import type { StatsContainerResponse } from '../protocol/gen/agent.js';
import { Metrics } from '../protocol/gen/containerd/cgroups-v1-metrics.js';
import type { Any } from '../protocol/gen/google/protobuf/any.js';

/**
 * The guest's cgroup figures as containerd's cgroup v1 Metrics (this host's cgroups are v1/hybrid; containerd's
 * CRI accepts only `io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`).
 */
export function metricsFromAgentStats(s: StatsContainerResponse): Any {
  const cg = s.cgroupStats;
  const mem = cg?.memoryStats;
  const stat = (k: string) => mem?.stats[k] ?? 0;
  const metrics: Metrics = {
    hugetlb: Object.entries(cg?.hugetlbStats ?? {}).map(([pagesize, h]) => ({
      usage: h.usage,
      max: h.maxUsage,
      failcnt: h.failcnt,
      pagesize,
    })),
    pids: cg?.pidsStats ? { current: cg.pidsStats.current, limit: cg.pidsStats.limit } : undefined,
    cpu: cg?.cpuStats
      ? {
          usage: {
            total: cg.cpuStats.cpuUsage?.totalUsage ?? 0,
            kernel: cg.cpuStats.cpuUsage?.usageInKernelmode ?? 0,
            user: cg.cpuStats.cpuUsage?.usageInUsermode ?? 0,
            perCpu: cg.cpuStats.cpuUsage?.percpuUsage ?? [],
          },
          throttling: cg.cpuStats.throttlingData
            ? {
                periods: cg.cpuStats.throttlingData.periods,
                throttledPeriods: cg.cpuStats.throttlingData.throttledPeriods,
                throttledTime: cg.cpuStats.throttlingData.throttledTime,
              }
            : undefined,
        }
      : undefined,
    memory: mem
      ? {
          cache: mem.cache,
          rss: stat('anon'),
          mappedFile: stat('file_mapped'),
          pgFault: stat('pgfault'),
          pgMajFault: stat('pgmajfault'),
          inactiveAnon: stat('inactive_anon'),
          activeAnon: stat('active_anon'),
          inactiveFile: stat('inactive_file'),
          activeFile: stat('active_file'),
          totalCache: mem.cache,
          totalRss: stat('anon'),
          totalInactiveFile: stat('inactive_file'),
          usage: mem.usage
            ? { limit: mem.usage.limit, usage: mem.usage.usage, max: mem.usage.maxUsage, failcnt: mem.usage.failcnt }
            : undefined,
          swap: mem.swapUsage
            ? { limit: mem.swapUsage.limit, usage: mem.swapUsage.usage, max: mem.swapUsage.maxUsage, failcnt: mem.swapUsage.failcnt }
            : undefined,
          kernel: mem.kernelUsage
            ? { limit: mem.kernelUsage.limit, usage: mem.kernelUsage.usage, max: mem.kernelUsage.maxUsage, failcnt: mem.kernelUsage.failcnt }
            : undefined,
        }
      : undefined,
    network: s.networkStats.map((n) => ({ ...n })),
  };
  return { typeUrl: 'io.containerd.cgroups.v1.Metrics', value: Buffer.from(Metrics.encode(metrics).finish()) };
}
