import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { TestContainerd } from '../helpers/containerd.js';
import { leaksSince, snapshotHost, type HostSnapshot } from '../helpers/leaks.js';
import { until } from '../helpers/wait.js';

/**
 * containerd-shim-kata-v2 driven by the real containerd 1.6 and ctr: every container in a VM.
 * Images are the project's local ones (images/build.sh), imported into the test's own containerd.
 */

const RUNTIME = ['--runtime', 'io.containerd.kata.v2'];
const BUSYBOX = 'docker.io/library/busybox:kata-ts';
const NS = 'kata-test';
/** Every container id of this test starts with `k-`. */
const MINE = /[/ ]k-[a-z]/;
const hostKernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();

/** Processes (QEMU, virtiofsd) of one sandbox, found by its VM directory in their command lines. */
function sandboxProcesses(sandboxId: string): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.includes(`/run/vc/vm/${sandboxId}/`) && /qemu-system|virtiofsd/.test(l))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

describe('containerd shim v2 with containerd 1.6 and ctr', () => {
  let ctd: TestContainerd;
  let snap: HostSnapshot;

  const ctr = (args: string[], input?: string) => ctd.ctr(args, { input, namespace: NS });
  const taskStatus = async (id: string) => {
    const r = await ctr(['task', 'ls']);
    const line = r.stdout.split('\n').find((l) => l.split(/\s+/)[0] === id);
    return line?.trim().split(/\s+/);
  };
  const removeTask = async (id: string) => {
    await ctr(['task', 'kill', '-a', '-s', 'SIGKILL', id]);
    await until(`${id} stopped`, async () => (await taskStatus(id))?.[2] === 'STOPPED' || undefined).catch(() => undefined);
    await ctr(['task', 'rm', '-f', id]);
    await ctr(['container', 'rm', id]);
  };

  before(async () => {
    snap = snapshotHost(MINE);
    ctd = await TestContainerd.start();
    execFileSync('images/import.sh', ['--namespace', NS, '--address', ctd.address, '--only', 'busybox'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
  });

  after(async () => {
    await ctd?.stop([NS]);
    assert.deepEqual(await leaksSince(snap, MINE), { processes: [], mounts: [], entries: [] });
  });

  test('ctr run --rm: uname -r prints the guest kernel; the exit status propagates', async () => {
    const r = await ctr(['run', '--rm', ...RUNTIME, BUSYBOX, 'k-uname', 'uname', '-r']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.trim(), /^6\.1\.\d+.*amd64$/);
    assert.notEqual(r.stdout.trim(), hostKernel);
    const e = await ctr(['run', '--rm', ...RUNTIME, BUSYBOX, 'k-exit', 'sh', '-c', 'exit 7']);
    assert.equal(e.code, 7, e.stderr);
  });

  test('stdin reaches the container (ctr attaches stdin by default)', async () => {
    const r = await ctr(['run', '--rm', ...RUNTIME, BUSYBOX, 'k-stdin', 'head', '-n', '1'], 'hi\nthere\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hi\n');
  });

  test('ctr run -t gives the container a terminal', async () => {
    // ctr needs a terminal itself for -t: `script` gives it one.
    const out = await new Promise<string>((resolve, reject) => {
      const cmd = `stty rows 30 cols 100; ctr --address ${ctd.address} -n ${NS} run --rm -t ${RUNTIME.join(' ')} ${BUSYBOX} k-tty sh -c 'tty; sleep 1; stty size'`;
      const p = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let text = '';
      p.stdout.on('data', (d) => (text += d));
      p.on('error', reject);
      p.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`script exited ${code}: ${text}`))));
      p.stdin.end();
    });
    assert.match(out, /\/dev\/pts\/\d+/);
    assert.match(out, /30 100/);
  });

  test('a detached task: ls, exec with its own status and stdin, kill, kill -a, delete', async () => {
    const id = 'k-detached';
    const run = await ctr(['run', '-d', ...RUNTIME, BUSYBOX, id, 'sh', '-c', 'trap "exit 42" USR1; while true; do sleep 0.2; done']);
    assert.equal(run.code, 0, run.stderr);
    const st = await taskStatus(id);
    assert.equal(st?.[2], 'RUNNING');
    const qemu = sandboxProcesses(id);
    assert.equal(String(qemu.find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('qemu-system'))), st?.[1], 'task pid is the VM');

    const ex = await ctr(['task', 'exec', '--exec-id', 'e1', id, 'sh', '-c', 'echo from-exec; exit 3']);
    assert.equal(ex.code, 3, ex.stderr);
    assert.equal(ex.stdout, 'from-exec\n');
    const ex2 = await ctr(['task', 'exec', '--exec-id', 'e2', id, 'head', '-n', '1'], 'piped\n');
    assert.equal(ex2.stdout, 'piped\n');

    // A signal to the init process (it traps USR1).
    assert.equal((await ctr(['task', 'kill', '-s', 'SIGUSR1', id])).code, 0);
    await until('exit after SIGUSR1', async () => (await taskStatus(id))?.[2] === 'STOPPED' || undefined);
    assert.equal((await ctr(['task', 'rm', id])).code, 0);

    // kill -a on a fresh task.
    const t2 = await ctr(['task', 'start', '-d', id]);
    assert.equal(t2.code, 0, t2.stderr);
    assert.equal((await ctr(['task', 'kill', '-a', '-s', 'SIGKILL', id])).code, 0);
    await until('exit after kill -a', async () => (await taskStatus(id))?.[2] === 'STOPPED' || undefined);
    assert.equal((await ctr(['task', 'rm', id])).code, 0);
    assert.equal((await ctr(['container', 'rm', id])).code, 0);
    await until('VM gone', () => sandboxProcesses(id).length === 0 || undefined);
  });

  test('two containers of one pod run in one VM and see the same kernel instance', async () => {
    const pod = 'k-pod';
    const sb = ['--annotation', 'io.kubernetes.cri.container-type=sandbox', '--annotation', `io.kubernetes.cri.sandbox-id=${pod}`];
    const ct = ['--annotation', 'io.kubernetes.cri.container-type=container', '--annotation', `io.kubernetes.cri.sandbox-id=${pod}`];
    assert.equal((await ctr(['run', '-d', ...RUNTIME, ...sb, BUSYBOX, pod, 'sleep', '1000'])).code, 0);
    const app = await ctr(['run', '-d', ...RUNTIME, ...ct, BUSYBOX, 'k-pod-app', 'sleep', '1000']);
    assert.equal(app.code, 0, app.stderr);
    const qemus = sandboxProcesses(pod).filter((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('qemu-system'));
    assert.equal(qemus.length, 1, 'one QEMU for the pod');
    const boot1 = await ctr(['task', 'exec', '--exec-id', 'b1', pod, 'cat', '/proc/sys/kernel/random/boot_id']);
    const boot2 = await ctr(['task', 'exec', '--exec-id', 'b2', 'k-pod-app', 'cat', '/proc/sys/kernel/random/boot_id']);
    assert.equal(boot1.stdout, boot2.stdout);
    assert.match(boot1.stdout, /^[0-9a-f-]{36}\n$/);
    await removeTask('k-pod-app');
    assert.equal(sandboxProcesses(pod).length > 0, true, 'the VM outlives the app container');
    await removeTask(pod);
    await until('pod VM gone', () => sandboxProcesses(pod).length === 0 || undefined);
  });

  test('SIGKILL of the shim: containerd\'s delete cleans up the VM and everything else', async () => {
    const id = 'k-shimkill';
    assert.equal((await ctr(['run', '-d', ...RUNTIME, BUSYBOX, id, 'sleep', '1000'])).code, 0);
    const bundle = `${ctd.dir}/state/io.containerd.runtime.v2.task/${NS}/${id}`;
    const shimPid = Number(readFileSync(`${bundle}/shim.pid`, 'utf8'));
    process.kill(shimPid, 'SIGKILL');
    await until('task stopped after shim death', async () => (await taskStatus(id))?.[2] === 'STOPPED' || (await taskStatus(id)) === undefined || undefined);
    await ctr(['task', 'rm', '-f', id]);
    await ctr(['container', 'rm', id]);
    // containerd runs `shim delete`, which kills the VM first and then removes its state.
    await until('VM reaped', () => sandboxProcesses(id).length === 0 || undefined, 90_000);
    await until(
      'state removed',
      () => [`/run/vc/vm/${id}`, `/run/vc/sbs/${id}`, `/run/kata-containers/shared/sandboxes/${id}`].every((p) => !existsSync(p)) || undefined,
      90_000,
    );
  });

  test('SIGKILL of QEMU: the task exits, Wait returns, nothing leaks', async () => {
    const id = 'k-qemukill';
    assert.equal((await ctr(['run', '-d', ...RUNTIME, BUSYBOX, id, 'sleep', '1000'])).code, 0);
    const qemu = sandboxProcesses(id).find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('qemu-system'))!;
    process.kill(qemu, 'SIGKILL');
    const st = await until('task stopped after VM death', async () => {
      const s = await taskStatus(id);
      return s?.[2] === 'STOPPED' ? s : undefined;
    });
    assert.equal(st[2], 'STOPPED');
    assert.equal((await ctr(['task', 'rm', id])).code, 0);
    assert.equal((await ctr(['container', 'rm', id])).code, 0);
    await until('virtiofsd gone', () => sandboxProcesses(id).length === 0 || undefined);
  });

  test('containerd restarts while a task runs: the task stays manageable', async () => {
    const id = 'k-restart';
    assert.equal((await ctr(['run', '-d', ...RUNTIME, BUSYBOX, id, 'sleep', '1000'])).code, 0);
    await ctd.stopDaemon();
    await ctd.launch();
    assert.equal((await taskStatus(id))?.[2], 'RUNNING');
    const ex = await ctr(['task', 'exec', '--exec-id', 'after', id, 'echo', 'still-here']);
    assert.equal(ex.stdout, 'still-here\n');
    await removeTask(id);
    await until('VM gone', () => sandboxProcesses(id).length === 0 || undefined);
  });

  test('events reach containerd in order; pause, resume, ps, metrics and OOM work', async () => {
    const events = spawn('ctr', ['--address', ctd.address, 'events'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let log = '';
    events.stdout.on('data', (d) => (log += d));
    try {
      await new Promise((r) => setTimeout(r, 300));
      const id = 'k-events';
      const r = await ctr(['run', '--rm', ...RUNTIME, BUSYBOX, id, 'true']);
      assert.equal(r.code, 0, r.stderr);

      const d = 'k-ops';
      assert.equal((await ctr(['run', '-d', ...RUNTIME, '--memory-limit', String(64 << 20), BUSYBOX, d, 'sleep', '1000'])).code, 0);
      assert.equal((await ctr(['task', 'pause', d])).code, 0);
      assert.equal((await taskStatus(d))?.[2], 'PAUSED');
      assert.equal((await ctr(['task', 'resume', d])).code, 0);
      assert.equal((await taskStatus(d))?.[2], 'RUNNING');
      const ps = await ctr(['task', 'ps', d]);
      assert.match(ps.stdout, new RegExp(`\\b${(await taskStatus(d))![1]}\\b`), 'ps lists the VM pid');
      const metrics = await ctr(['task', 'metrics', d]);
      assert.equal(metrics.code, 0, metrics.stderr);
      assert.match(metrics.stdout, /memory\.usage_in_bytes\s+[1-9]/);
      // The limit reached the guest cgroup (the metrics come from the guest's memory.max).
      // (ctr 1.6 has no `task update`; Update is exercised through CRI UpdateContainerResources.)
      assert.match(metrics.stdout, new RegExp(`memory\\.limit_in_bytes\\s+${64 << 20}\\b`));
      // Allocate past the limit: the guest kernel OOM-kills it, the shim publishes TaskOOM.
      await ctr(['task', 'exec', '--exec-id', 'hog', d, 'sh', '-c', 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo ${#x}']);
      await until('TaskOOM event', () => log.split('\n').some((l) => l.includes('/tasks/oom') && l.includes(d)) || undefined, 20_000);
      await removeTask(d);

      const topics = log
        .split('\n')
        .filter((l) => l.includes(`"${id}"`) || l.includes(`container_id":"${id}`))
        .map((l) => /\/tasks\/[a-z-]+/.exec(l)?.[0])
        .filter((t): t is string => t !== undefined);
      assert.deepEqual(topics, ['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    } finally {
      events.kill();
    }
  });

  test('bad input gives a clear error to ctr and leaves nothing', async () => {
    const weird = await ctr(['run', '--rm', ...RUNTIME, '--annotation', 'io.kubernetes.cri.container-type=weird', BUSYBOX, 'k-bad1', 'true']);
    assert.notEqual(weird.code, 0);
    assert.match(weird.stderr, /unknown value/);
    const gated = await ctr(['run', '--rm', ...RUNTIME, '--annotation', 'io.katacontainers.config.hypervisor.default_memory=4096', BUSYBOX, 'k-bad2', 'true']);
    assert.notEqual(gated.code, 0);
    assert.match(gated.stderr, /not enabled/);
    const noconf = await ctr(['run', '--rm', ...RUNTIME, '--runtime-config-path', '/nonexistent/kata.toml', BUSYBOX, 'k-bad3', 'true']);
    assert.notEqual(noconf.code, 0);
    assert.match(noconf.stderr, /nonexistent\/kata\.toml/);
    for (const id of ['k-bad1', 'k-bad2', 'k-bad3']) await ctr(['container', 'rm', id]);
    assert.deepEqual(readdirSync('/run/vc/vm').filter((d) => d.startsWith('k-bad')), []);
  });
});
