/** Interop test against the real QEMU binary (no kernel needed: `-S` keeps the VM in prelaunch). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, QmpError } from './qmp-client.js';

const QEMU = process.env.KATA_TEST_QEMU ?? '/usr/bin/qemu-system-x86_64';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('QmpClient against real QEMU', { skip: !fs.existsSync(QEMU) && `${QEMU} not installed` }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-qemu-'));
  const sock = path.join(dir, 'qmp.sock');
  const child = spawn(
    QEMU,
    ['-M', 'microvm', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-S', '-m', '64M',
      '-qmp', `unix:${sock},server=on,wait=off`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let client: QmpClient | undefined;
  try {
    client = await QmpClient.connect(sock, { timeoutMs: 5000 });
    assert.equal(client.greeting.version.qemu.major >= 7, true);

    const version = await client.execute<{ qemu: { major: number } }>('query-version');
    assert.deepEqual(version.qemu, client.greeting.version.qemu);

    const s0 = await client.execute<{ status: string; running: boolean }>('query-status');
    assert.equal(s0.status, 'prelaunch');
    assert.equal(s0.running, false);

    const resumed = client.waitEvent('RESUME', 2000);
    await client.execute('cont');
    await resumed;
    assert.equal((await client.execute<{ status: string }>('query-status')).status, 'running');

    const stopped = client.waitEvent('STOP', 2000);
    await client.execute('stop');
    await stopped;
    assert.equal((await client.execute<{ status: string }>('query-status')).status, 'paused');

    // Concurrent commands on one connection.
    const [a, b, c] = await Promise.all([
      client.execute<{ status: string }>('query-status'),
      client.execute<unknown[]>('query-commands'),
      client.execute<{ status: string }>('query-status'),
    ]);
    assert.equal(a.status, 'paused');
    assert.ok(b.length > 50);
    assert.equal(c.status, 'paused');

    await assert.rejects(client.execute('no-such-command'), (e: unknown) => {
      assert.ok(e instanceof QmpError);
      assert.equal(e.code, 'KATA_QMP_ERROR');
      assert.equal(e.qmpClass, 'CommandNotFound');
      assert.match(e.message, /CommandNotFound: The command no-such-command has not been found/);
      return true;
    });
    await assert.rejects(client.execute('device_del', { id: 'nope' }), { qmpClass: 'DeviceNotFound', kind: 'NotFound' });

    const shutdown = client.waitEvent('SHUTDOWN', 2000);
    await client.execute('quit');
    assert.equal((await shutdown).data?.reason, 'host-qmp-quit');
    assert.equal(await exited, 0, stderr);
  } finally {
    client?.close();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(alive(child.pid!), false);
  assert.equal(fs.existsSync(dir), false);
});
