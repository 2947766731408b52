import assert from 'node:assert/strict';
import { PassThrough, Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/base/logger.js';
import { AgentClient } from '../../src/agent-client/agent-client.js';
import { loadConfig } from '../../src/runtime/config/load.js';
import { defaultSandboxDeps } from '../../src/runtime/default-deps.js';
import { defaultPaths, vmDir } from '../../src/runtime/paths.js';
import { Sandbox } from '../../src/runtime/sandbox.js';
import { defaultProcess, defaultSpec, makeBundle, type Bundle } from '../helpers/bundle.js';
import { writeTestConfig } from '../helpers/config.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';

/** One booted sandbox shared by several checks of the runtime API: exec, signals, stdio, agent reconnect. */

class Collect extends Writable {
  text = '';
  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

const MINE = new RegExp(`/sbx${process.pid}`);

describe('sandbox runtime API (one shared VM)', () => {
  let sandbox: Sandbox;
  let snap: HostSnapshot;
  const bundles: Bundle[] = [];
  const cfg = writeTestConfig();

  before(async () => {
    snap = snapshotHost(MINE);
    const config = await loadConfig(cfg.path);
    sandbox = await Sandbox.create({ sandboxId: `sbx${process.pid}`, config, paths: defaultPaths() }, defaultSandboxDeps(), silentLogger);
  });

  after(async () => {
    await sandbox?.stop();
    for (const b of bundles) await b.remove();
    cfg.remove();
    assert.deepEqual(await leaksSince(snap, MINE), { processes: [], mounts: [], entries: [] });
  });

  test('a second process can be exec\'d into a running container, with its own stdio and exit status', async () => {
    const b = await makeBundle(defaultSpec(['sleep', '1000']));
    bundles.push(b);
    const c = await sandbox.createContainer({ containerId: 'sleeper', spec: defaultSpec(['sleep', '1000']), hostRootfs: b.rootfs, stdio: {} });
    await c.start();
    const out = new Collect();
    const err = new Collect();
    const p = await c.exec('e1', defaultProcess(['sh', '-c', 'echo out; echo err >&2; exit 5']), { stdout: out, stderr: err });
    const exit = await p.wait();
    assert.equal(exit.status, 5);
    assert.equal(out.text, 'out\n');
    assert.equal(err.text, 'err\n');
    // The exec shares the container: it sees the init process.
    const ps = new Collect();
    const p2 = await c.exec('e2', defaultProcess(['sh', '-c', 'ps -o comm | grep -c sleep']), { stdout: ps });
    assert.equal((await p2.wait()).status, 0);
    assert.equal(ps.text.trim(), '1');
    await c.kill(9);
    assert.equal((await c.init.wait()).status, 137);
    await sandbox.deleteContainer('sleeper');
  });

  test('stdin is delivered in order and end of input closes it', async () => {
    const b = await makeBundle(defaultSpec(['cat']));
    bundles.push(b);
    const input = new PassThrough();
    const out = new Collect();
    const c = await sandbox.createContainer({ containerId: 'cat', spec: defaultSpec(['wc', '-c']), hostRootfs: b.rootfs, stdio: { stdin: input, stdout: out } });
    await c.start();
    const chunk = Buffer.alloc(100_000, 'x');
    for (let i = 0; i < 5; i++) input.write(chunk);
    input.end();
    assert.equal((await c.init.wait()).status, 0);
    assert.equal(out.text.trim(), '500000');
    await sandbox.deleteContainer('cat');
  });

  test('the agent survives a host reconnect on virtio-serial', async () => {
    const socketPath = `${vmDir(defaultPaths(), sandbox.id)}/agent.sock`;
    // A second host connection while the first is closed: QEMU's chardev takes one client at a time.
    sandbox.agent.close();
    await new Promise((r) => setTimeout(r, 200));
    const again = await AgentClient.dial(socketPath, { dialTimeoutMs: 20_000, log: silentLogger });
    const v = await again.call('Version', { service: '' });
    assert.match(v.agentVersion, /\d+\.\d+\.\d+/);
    again.close();
  });
});
