import { readFileSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { errors } from '../base/errors.js';
import { TtrpcServer } from '../protocol/ttrpc/server.js';
import { AgentService } from './agent-service.js';
import { createGuestLogger } from './console-logger.js';
import { Crun } from './crun.js';
import { parseAgentOptions } from './kernel-cmdline.js';
import { registerAgentHandlers } from './register.js';
import { findSerialPort, serveSerialPort } from './serial-channel.js';

/** The kata-ts guest agent: PID 1's child inside the VM. Serves the agent API over the host channel. */
async function main(): Promise<void> {
  const opts = parseAgentOptions(readFileSync('/proc/cmdline', 'utf8'));
  const log = createGuestLogger(opts.logLevel, (line) => writeSync(2, line), { subsystem: 'agent' });
  const server = new TtrpcServer(log);
  registerAgentHandlers(server, new AgentService(new Crun(), log).handlers(), log);

  const [transport, name] = opts.serverAddr.split(':', 2) as [string, string | undefined];
  if (transport !== 'serial') {
    // Node has no AF_VSOCK sockets; a vsock channel needs a native addon (not built: no vhost-vsock to test on).
    throw errors.notImplemented('KATA_CHANNEL_UNSUPPORTED', `agent channel ${opts.serverAddr} is not supported`);
  }
  const port = await findSerialPort(name || 'agent');
  const uptime = (await readFile('/proc/uptime', 'utf8')).split(' ')[0];
  writeSync(2, `KATA_AGENT_READY uptime=${uptime}\n`);
  log.info({ port }, 'serving agent API');
  await serveSerialPort(port, (conn) => server.serveConnection(conn), log);
}

main().catch((err) => {
  writeSync(2, `KATA_AGENT_FATAL ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
