import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/base/logger.js';
import * as t from '../../src/protocol/gen/containerd/shim.js';
import { Empty } from '../../src/protocol/gen/google/protobuf/empty.js';
import { callTyped, TtrpcClient } from '../../src/protocol/ttrpc/client.js';
import { defaultSpec, makeBusyboxRootfs } from '../helpers/bundle.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';

/**
 * The shim's Task API driven directly over ttrpc (as containerd would), with inputs containerd's own client
 * would not produce: a garbled spec, a rootfs mount of an unknown type, stdio fifos that do not exist. Each
 * must fail with a clear error and leave nothing behind.
 */

const SHIM = new URL('../../../bin/containerd-shim-kata-v2', import.meta.url).pathname;
const TASK = 'containerd.task.v2.Task';
const MINE = new RegExp(`[/ ]kbad${process.pid}`);

describe('shim Task API: bad input', () => {
  let dir: string;
  let bundle: string;
  let client: TtrpcClient;
  let snap: HostSnapshot;
  const id = `kbad${process.pid}`;

  before(async () => {
    snap = snapshotHost(MINE);
    dir = mkdtempSync(join(tmpdir(), 'kata-ts-shim-bad-'));
    bundle = join(dir, 'bundle');
    mkdirSync(bundle);
    await makeBusyboxRootfs(join(bundle, 'rootfs'));
    writeFileSync(join(bundle, 'config.json'), JSON.stringify(defaultSpec(['true'])));
    // `start` as containerd runs it: cwd = bundle; it prints the address of the daemon it started.
    const address = execFileSync(SHIM, ['-namespace', 'bad', '-address', join(dir, 'fake-containerd.sock'), '-publish-binary', '/bin/true', '-id', id, 'start'], {
      cwd: bundle,
      encoding: 'utf8',
      env: { ...process.env, TTRPC_ADDRESS: '' },
    }).trim();
    const sock = connect(address.replace(/^unix:\/\//, ''));
    await new Promise((r, j) => sock.once('connect', r).once('error', j));
    client = new TtrpcClient(sock, silentLogger);
  });

  after(async () => {
    await callTyped(client, TASK, 'Shutdown', t.ShutdownRequest, { id, now: true }, Empty).catch(() => undefined);
    client.destroy();
    // containerd always runs `delete` after a shim: it must clean up whatever is left and answer a DeleteResponse.
    const del = spawn(SHIM, ['-namespace', 'bad', '-address', join(dir, 'fake-containerd.sock'), '-publish-binary', '/bin/true', '-id', id, '-bundle', bundle, 'delete'], { cwd: bundle });
    const out: Buffer[] = [];
    del.stdout.on('data', (d: Buffer) => out.push(d));
    await new Promise((r) => del.on('close', r));
    const res = t.DeleteResponse.decode(Buffer.concat(out));
    assert.equal(res.exitStatus, 137);
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(await leaksSince(snap, MINE), { processes: [], mounts: [], entries: [] });
  });

  const create = (over: Partial<t.CreateTaskRequest>) =>
    callTyped(
      client,
      TASK,
      'Create',
      t.CreateTaskRequest,
      { id, bundle, rootfs: [], terminal: false, stdin: '', stdout: '', stderr: '', checkpoint: '', parentCheckpoint: '', options: undefined, ...over },
      t.CreateTaskResponse,
      { timeoutMs: 120_000 },
    );

  test('a garbled config.json is refused with the reason', async () => {
    writeFileSync(join(bundle, 'config.json'), '{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": "sh"');
    await assert.rejects(create({}), /invalid OCI spec: not valid JSON/);
    writeFileSync(join(bundle, 'config.json'), JSON.stringify({ ...defaultSpec(['true']), process: { ...defaultSpec(['true']).process, cwd: 'relative' } }));
    await assert.rejects(create({}), /process\.cwd: expected an absolute path/);
    writeFileSync(join(bundle, 'config.json'), JSON.stringify(defaultSpec(['true'])));
  });

  test('a rootfs mount of an unknown type is refused before anything is mounted', async () => {
    await assert.rejects(create({ rootfs: [{ type: 'weirdfs', source: '/dev/null', target: '', options: [] }] }), /unknown type "weirdfs"/);
    assert.equal(existsSync(`/run/vc/vm/${id}`), false);
  });

  test('stdio fifos that do not exist fail the create clearly and the VM is torn down', async () => {
    await assert.rejects(create({ stdout: join(dir, 'vanished-stdout') }), /open stdio fifo .*vanished-stdout/);
    assert.equal(existsSync(`/run/vc/vm/${id}`), false, 'no VM was left (none is booted for a create that cannot open its stdio)');
    assert.equal(existsSync(`/run/kata-containers/shared/sandboxes/${id}`), false);
  });
});
