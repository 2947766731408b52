import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Logger } from '../base/logger.js';

const CGROUP_ROOT = '/sys/fs/cgroup';

/**
 * Reports containers whose cgroup had an OOM kill. cgroup v2 signals changes of `memory.events` through
 * inotify, so nothing polls. Events queue until the host's GetOOMEvent long poll takes them.
 */
export class OomWatcher {
  private readonly watchers = new Map<string, { w: FSWatcher; kills: number }>();
  private readonly queue: string[] = [];
  private waiters: ((id: string) => void)[] = [];

  constructor(private readonly log: Logger) {}

  async watchContainer(containerId: string): Promise<void> {
    const file = `${CGROUP_ROOT}/kata/${containerId}/memory.events`;
    const kills = await this.oomKills(file);
    try {
      const w = watch(file, () => void this.check(containerId, file));
      w.on('error', () => this.unwatch(containerId));
      this.watchers.set(containerId, { w, kills });
    } catch (err) {
      this.log.debug({ err, containerId }, 'no memory.events to watch');
    }
  }

  unwatch(containerId: string): void {
    this.watchers.get(containerId)?.w.close();
    this.watchers.delete(containerId);
  }

  /** The next container that had an OOM kill (waits for one). */
  next(signal: AbortSignal): Promise<string | undefined> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const onAbort = () => {
        this.waiters = this.waiters.filter((w) => w !== deliver);
        resolve(undefined);
      };
      const deliver = (id: string) => {
        signal.removeEventListener('abort', onAbort);
        resolve(id);
      };
      this.waiters.push(deliver);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  private async check(containerId: string, file: string): Promise<void> {
    const entry = this.watchers.get(containerId);
    if (!entry) return;
    const kills = await this.oomKills(file);
    if (kills <= entry.kills) return;
    entry.kills = kills;
    this.log.info({ containerId, kills }, 'container had an OOM kill');
    const waiter = this.waiters.shift();
    if (waiter) waiter(containerId);
    else this.queue.push(containerId);
  }

  private async oomKills(file: string): Promise<number> {
    const text = await readFile(file, 'utf8').catch(() => '');
    return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
  }
}
