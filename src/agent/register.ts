import type { Logger } from '../base/logger.js';
import { agentApi, type AgentHandlers, type AgentMethod } from '../protocol/agent-api.js';
import { unaryHandler, type TtrpcServer, type UnaryHandler } from '../protocol/ttrpc/server.js';

/** Registers the implemented agent API methods; missing ones answer Unimplemented through ttrpc. */
export function registerAgentHandlers(server: TtrpcServer, handlers: AgentHandlers, log: Logger): void {
  const byService = new Map<string, Record<string, UnaryHandler>>();
  for (const name of Object.keys(agentApi) as AgentMethod[]) {
    const impl = handlers[name] as ((req: unknown, ctx: { signal: AbortSignal }) => Promise<unknown>) | undefined;
    if (!impl) continue;
    const spec = agentApi[name] as unknown as {
      service: string;
      request: { decode(b: Uint8Array): unknown; encode(m: unknown): { finish(): Uint8Array } };
      response: { decode(b: Uint8Array): unknown; encode(m: unknown): { finish(): Uint8Array } };
    };
    const methods = byService.get(spec.service) ?? {};
    methods[name] = unaryHandler(spec.request, spec.response, async (req, ctx) => {
      const started = performance.now();
      try {
        return await impl(req, { signal: ctx.signal });
      } catch (err) {
        log.warn({ method: name, err }, 'request failed');
        throw err;
      } finally {
        log.debug({ method: name, ms: Math.round(performance.now() - started) }, 'request');
      }
    });
    byService.set(spec.service, methods);
  }
  for (const [service, methods] of byService) server.register(service, methods);
}
