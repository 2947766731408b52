import type { LogLevel } from '../base/logger.js';

export interface AgentOptions {
  logLevel: LogLevel;
  /** `serial:<port name>` (default `serial:agent`) or `vsock:<port>`. */
  serverAddr: string;
}

/** Reads the agent's settings from the kernel command line (`agent.log=`, `agent.server_addr=`). */
export function parseAgentOptions(cmdline: string): AgentOptions {
  const opts: AgentOptions = { logLevel: 'info', serverAddr: 'serial:agent' };
  for (const word of cmdline.trim().split(/\s+/)) {
    const eq = word.indexOf('=');
    if (eq < 0) continue;
    const key = word.slice(0, eq);
    const value = word.slice(eq + 1);
    if (key === 'agent.log' && ['trace', 'debug', 'info', 'warn', 'error'].includes(value)) {
      opts.logLevel = value as LogLevel;
    } else if (key === 'agent.server_addr' && value) {
      opts.serverAddr = value;
    }
  }
  return opts;
}
