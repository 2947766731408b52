import { connect } from 'node:net';
import type { Logger } from '../base/logger.js';
import { Envelope } from '../protocol/gen/containerd/types.js';
import { ForwardRequest } from '../protocol/gen/containerd/events-service.js';
import * as ev from '../protocol/gen/containerd/events.js';
import { TtrpcClient } from '../protocol/ttrpc/client.js';

/** The task events a shim publishes, with their topics and message codecs. */
const TOPICS = {
  TaskCreate: ['/tasks/create', ev.TaskCreate],
  TaskStart: ['/tasks/start', ev.TaskStart],
  TaskDelete: ['/tasks/delete', ev.TaskDelete],
  TaskExit: ['/tasks/exit', ev.TaskExit],
  TaskOOM: ['/tasks/oom', ev.TaskOOM],
  TaskExecAdded: ['/tasks/exec-added', ev.TaskExecAdded],
  TaskExecStarted: ['/tasks/exec-started', ev.TaskExecStarted],
  TaskPaused: ['/tasks/paused', ev.TaskPaused],
  TaskResumed: ['/tasks/resumed', ev.TaskResumed],
} as const;

export type EventName = keyof typeof TOPICS;
type EventOf<K extends EventName> = Parameters<(typeof TOPICS)[K][1]['encode']>[0];

const SERVICE = 'containerd.services.events.ttrpc.v1.Events';
const RETRIES = 5;

/**
 * Publishes events to containerd over ttrpc (`TTRPC_ADDRESS`), one at a time in order, retrying with a new
 * connection on failure. Without an address, events are only logged (as Kata does).
 */
export class EventPublisher {
  private queue: Promise<void> = Promise.resolve();
  private client?: TtrpcClient;

  constructor(
    private readonly ttrpcAddress: string | undefined,
    private readonly namespace: string,
    private readonly log: Logger,
  ) {}

  publish<K extends EventName>(name: K, event: EventOf<K>): Promise<void> {
    const [topic, codec] = TOPICS[name];
    const value = (codec.encode as (m: EventOf<K>) => { finish(): Uint8Array })(event).finish();
    const envelope: Envelope = {
      timestamp: nowTimestamp(),
      namespace: this.namespace,
      topic,
      event: { typeUrl: `containerd.events.${name}`, value: Buffer.from(value) },
    };
    this.queue = this.queue.then(() => this.send(topic, envelope));
    return this.queue;
  }

  /** Waits for everything queued so far. */
  flush(): Promise<void> {
    return this.queue;
  }

  close(): void {
    this.client?.destroy();
    this.client = undefined;
  }

  private async send(topic: string, envelope: Envelope): Promise<void> {
    if (!this.ttrpcAddress) {
      this.log.info({ topic }, 'event (no TTRPC_ADDRESS: not forwarded)');
      return;
    }
    const payload = ForwardRequest.encode({ envelope }).finish();
    for (let attempt = 1; attempt <= RETRIES; attempt++) {
      try {
        const client = await this.connect();
        await client.call(SERVICE, 'Forward', payload, { timeoutMs: 5_000 });
        this.log.debug({ topic }, 'event published');
        return;
      } catch (err) {
        this.log.warn({ err, topic, attempt }, 'publishing event failed');
        this.client?.destroy();
        this.client = undefined;
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
    this.log.error({ topic }, 'event dropped after retries');
  }

  private connect(): Promise<TtrpcClient> {
    if (this.client && !this.client.closed) return Promise.resolve(this.client);
    const path = this.ttrpcAddress!.replace(/^unix:\/\//, '');
    return new Promise((resolve, reject) => {
      const sock = connect(path);
      sock.once('connect', () => {
        sock.removeAllListeners('error');
        this.client = new TtrpcClient(sock, this.log);
        resolve(this.client);
      });
      sock.once('error', reject);
    });
  }
}

export function nowTimestamp(date = new Date()): { seconds: number; nanos: number } {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
