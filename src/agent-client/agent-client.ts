import { connect, type Socket } from 'node:net';
import { errors, isKind, wrapError } from '../base/errors.js';
import type { Logger } from '../base/logger.js';
import { agentApi, type AgentMethod, type RequestOf, type ResponseOf } from '../protocol/agent-api.js';
import { HealthCheckResponse_ServingStatus } from '../protocol/gen/health.js';
import { callTyped, TtrpcClient, type CallOptions } from '../protocol/ttrpc/client.js';

/** Default per-call timeout (Kata: 60 s); WaitProcess, ReadStdout/ReadStderr and GetOOMEvent have none. */
const DEFAULT_TIMEOUT_MS = 60_000;
const NO_TIMEOUT: ReadonlySet<AgentMethod> = new Set(['WaitProcess', 'ReadStdout', 'ReadStderr', 'GetOOMEvent']);

/** The typed host-side client of the guest agent, over the socket QEMU exposes for the agent channel. */
export class AgentClient {
  private constructor(
    private readonly ttrpc: TtrpcClient,
    private readonly socket: Socket,
  ) {}

  /**
   * Connects to the agent channel socket and waits until Health.Check answers SERVING, retrying until
   * `dialTimeoutMs` passes. `abort` ends the wait early (e.g. when QEMU exits during boot).
   */
  static async dial(
    socketPath: string,
    opts: { dialTimeoutMs: number; signal?: AbortSignal; log: Logger },
  ): Promise<AgentClient> {
    const deadline = Date.now() + opts.dialTimeoutMs;
    let lastErr: unknown;
    while (Date.now() < deadline) {
      if (opts.signal?.aborted) throw errors.cancelled('KATA_AGENT_DIAL', 'agent dial cancelled', opts.signal.reason);
      let client: AgentClient | undefined;
      try {
        const socket = await connectUnix(socketPath, Math.max(1, deadline - Date.now()));
        client = new AgentClient(new TtrpcClient(socket, opts.log), socket);
        const res = await client.call('Check', { service: '' }, {
          // One Check per connection: it waits in the socket until the agent opens its port. Re-sending on a
          // new connection could deliver a stale reply from the guest to the new one.
          timeoutMs: Math.max(1, deadline - Date.now()),
          signal: opts.signal,
        });
        if (res.status === HealthCheckResponse_ServingStatus.SERVING) return client;
        lastErr = errors.unavailable('KATA_AGENT_NOT_SERVING', `agent health status ${res.status}`);
      } catch (err) {
        lastErr = err;
        if (isKind(err, 'Cancelled')) {
          client?.close();
          throw err;
        }
      }
      client?.close();
      await new Promise((r) => setTimeout(r, 50));
    }
    throw errors.deadline(
      'KATA_AGENT_DIAL_TIMEOUT',
      `agent did not answer within ${opts.dialTimeoutMs} ms (dial_timeout)` +
        (lastErr instanceof Error ? `: last error: ${lastErr.message}` : ''),
      lastErr,
    );
  }

  async call<K extends AgentMethod>(method: K, req: RequestOf<K>, opts: CallOptions = {}): Promise<ResponseOf<K>> {
    const spec = agentApi[method] as unknown as {
      service: string;
      request: { encode(m: RequestOf<K>): { finish(): Uint8Array }; decode(b: Uint8Array): RequestOf<K> };
      response: { encode(m: ResponseOf<K>): { finish(): Uint8Array }; decode(b: Uint8Array): ResponseOf<K> };
    };
    const timeoutMs = opts.timeoutMs ?? (NO_TIMEOUT.has(method) ? undefined : DEFAULT_TIMEOUT_MS);
    try {
      return await callTyped(this.ttrpc, spec.service, method, spec.request, req, spec.response, {
        ...opts,
        timeoutMs,
      });
    } catch (err) {
      throw wrapError(`agent ${method}`, err);
    }
  }

  onClose(cb: () => void): void {
    this.ttrpc.onClose(() => cb());
  }

  close(): void {
    this.socket.destroy();
  }
}

function connectUnix(path: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    const t = setTimeout(() => {
      s.destroy();
      reject(errors.deadline('KATA_AGENT_CONNECT', `connect ${path}: timeout`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(t);
      reject(errors.unavailable('KATA_AGENT_CONNECT', `connect ${path}: ${err.message}`, err));
    });
  });
}
