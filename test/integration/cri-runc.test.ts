import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { after, afterEach, before, describe, test } from 'node:test';
import { status as GrpcStatus } from '@grpc/grpc-js';
import * as cri from '../../src/protocol/gen/cri/api.js';
import { criMessage, criStatusCode } from '../helpers/cri-client.js';
import { CriEnv, IMAGES, type CriHostSnapshot, type CriPod } from '../helpers/cri-env.js';
import { httpGet, retry } from '../helpers/wait.js';

/**
 * The kubelet-like CRI client against a real containerd 1.6 with its default runc handler: the whole pod
 * lifecycle a kubelet drives, with checks on what containerd does with each field, and nothing left behind.
 * This pins the client and environment down before the same helpers drive the `kata` handler.
 */

function canRun(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  for (const bin of ['containerd', 'ctr', 'runc', 'containerd-shim-runc-v2']) {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    } catch {
      return `${bin} not installed`;
    }
  }
  return undefined;
}

const skip = canRun();

describe('CRI client against containerd 1.6 + runc', { skip }, () => {
  let env: CriEnv;
  let baseline: CriHostSnapshot;
  const ipForward = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');
  const NOTHING: CriHostSnapshot = { netns: [], veths: [], shims: [], mounts: [], cniState: [] };

  before(async () => {
    env = await CriEnv.start({ images: ['busybox'] });
    baseline = await env.hostSnapshot();
  });

  // A failed case must not leave its pod to the next one.
  afterEach(async () => {
    assert.deepEqual(await env.removeAllPods(), []);
  });

  after(async () => {
    await env?.stop();
    if (env) {
      // stop() leaves no bridge, containerd dir, CNI dir or cgroup parent, and never touched ip_forward.
      assert.throws(() => execFileSync('ip', ['link', 'show', env.network.bridge], { stdio: 'ignore' }));
      assert.equal(existsSync(env.dir), false);
      assert.equal(existsSync(env.network.confDir), false);
      assert.equal(existsSync(`/sys/fs/cgroup/memory${env.cgroupParent}`), false);
      assert.equal(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), ipForward);
    }
  });

  test('Version, Status and the image service', async () => {
    const v = await env.client.version({ version: 'v1' });
    assert.equal(v.runtimeName, 'containerd');
    assert.equal(v.runtimeApiVersion, 'v1');
    assert.equal(v.version, '0.1.0');
    const st = await env.client.status({ verbose: false });
    const conds = Object.fromEntries((st.status?.conditions ?? []).map((c) => [c.type, c.status]));
    assert.deepEqual(conds, { RuntimeReady: true, NetworkReady: true });

    const images = await env.client.listImages({});
    const tags = images.images.flatMap((i) => i.repoTags);
    assert.ok(tags.includes(IMAGES.busybox), `images: ${tags.join(' ')}`);
    assert.ok(tags.includes(IMAGES.pause));
    const bb = await env.client.imageStatus({ image: criMessage(cri.ImageSpec, { image: IMAGES.busybox }) });
    assert.ok(bb.image?.id.startsWith('sha256:'));
    assert.ok((bb.image?.size ?? 0) > 0);
    // An absent image is a null image, not an error.
    const none = await env.client.imageStatus({ image: criMessage(cri.ImageSpec, { image: 'example.invalid/none:0' }) });
    assert.equal(none.image, undefined);
  });

  test('pod lifecycle: run pod, containers, exec, status, stats, HTTP, update, stop, remove; nothing left', async (t) => {
    const memory = 192 << 20;
    const t0 = performance.now();
    const pod: CriPod = await env.runPod({
      name: 'web',
      hostname: 'kata-ts-web',
      dns: { servers: [env.network.gateway], searches: ['kata-ts.test'], options: ['ndots:2'] },
      resources: { cpuPeriod: 100_000, cpuQuota: 50_000, cpuShares: 512, memoryLimitInBytes: memory },
    });
    const tPod = performance.now();
    const web = await pod.runContainer({
      name: 'httpd',
      command: ['sh', '-c'],
      args: ['echo hi; echo oops >&2; mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www'],
      env: { GREETING: 'hello' },
    });
    const tRunning = performance.now();
    t.diagnostic(
      `runc: RunPodSandbox ${(tPod - t0).toFixed(0)} ms, Create+StartContainer ${(tRunning - tPod).toFixed(0)} ms, ` +
        `RunPodSandbox-to-running ${(tRunning - t0).toFixed(0)} ms`,
    );

    // PodSandboxStatus: ready, IP on the env's bridge subnet, metadata, handler.
    const ps = await pod.status();
    assert.equal(ps.status?.state, cri.PodSandboxState.SANDBOX_READY);
    assert.equal(ps.status?.metadata?.name, 'web');
    assert.equal(ps.status?.runtimeHandler, '');
    const ip = await pod.ip();
    assert.ok(ip.startsWith(env.network.gateway.replace(/\.1$/, '.')), `pod ip ${ip} not in ${env.network.subnet}`);
    // The leak check sees what a running pod holds: its netns, the host end of its veth, its shim, mounts, IPAM.
    const holding = await env.leakedSince(baseline, 0);
    assert.equal(holding.netns.length, 1, JSON.stringify(holding));
    assert.equal(holding.veths.length, 1, JSON.stringify(holding));
    assert.equal(holding.shims.length, 1, JSON.stringify(holding));
    assert.ok(holding.mounts.length >= 3, JSON.stringify(holding));
    assert.equal(holding.cniState.length, 2, JSON.stringify(holding));
    assert.equal(await pod.netnsPath(), `/var/run/netns/${holding.netns[0]}`);

    const createdMs = (ps.status?.createdAt ?? 0) / 1e6;
    assert.ok(Math.abs(createdMs - Date.now()) < 120_000, `sandbox created_at ${ps.status?.createdAt} is not now`);

    // containerd turned linux.resources into the sandbox sizing annotations (REFERENCE.md part B 6.3).
    const info = await pod.info();
    const ann = info.runtimeSpec?.annotations ?? {};
    assert.equal(ann['io.kubernetes.cri.container-type'], 'sandbox');
    assert.equal(ann['io.kubernetes.cri.sandbox-id'], pod.id);
    assert.equal(ann['io.kubernetes.cri.sandbox-name'], 'web');
    assert.equal(ann['io.kubernetes.cri.sandbox-namespace'], 'kata-ts');
    assert.equal(ann['io.kubernetes.cri.sandbox-uid'], pod.config.metadata?.uid);
    assert.equal(ann['io.kubernetes.cri.sandbox-cpu-period'], '100000');
    assert.equal(ann['io.kubernetes.cri.sandbox-cpu-quota'], '50000');
    assert.equal(ann['io.kubernetes.cri.sandbox-cpu-shares'], '512');
    assert.equal(ann['io.kubernetes.cri.sandbox-memory'], String(memory));
    assert.equal(info.runtimeSpec?.hostname, 'kata-ts-web');
    assert.ok(info.runtimeSpec?.linux?.cgroupsPath?.startsWith(env.cgroupParent));

    // ListPodSandbox / ListContainers with filters.
    const pods = await env.client.listPodSandbox({
      filter: criMessage(cri.PodSandboxFilter, {
        state: criMessage(cri.PodSandboxStateValue, { state: cri.PodSandboxState.SANDBOX_READY }),
        labelSelector: { 'kata-ts.test/env': env.network.name },
      }),
    });
    assert.deepEqual(
      pods.items.map((p) => p.id),
      [pod.id],
    );
    const cs = await env.client.listContainers({ filter: criMessage(cri.ContainerFilter, { podSandboxId: pod.id }) });
    assert.deepEqual(
      cs.containers.map((c) => [c.id, c.metadata?.name, c.state]),
      [[web, 'httpd', cri.ContainerState.CONTAINER_RUNNING]],
    );

    // ExecSync: stdout, stderr and exit code kept apart.
    const ex = await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'echo out; echo err >&2; exit 7'], timeout: 10 });
    assert.equal(ex.stdout.toString(), 'out\n');
    assert.equal(ex.stderr.toString(), 'err\n');
    assert.equal(ex.exitCode, 7);
    // The pod's hostname, DNS config and environment as containerd wrote them.
    const view = await env.client.execSync({
      containerId: web,
      cmd: ['sh', '-c', 'hostname; cat /etc/resolv.conf; echo "G=$GREETING"'],
      timeout: 10,
    });
    assert.equal(view.exitCode, 0, view.stderr.toString());
    const lines = view.stdout.toString().split('\n');
    assert.equal(lines[0], 'kata-ts-web');
    assert.ok(lines.includes(`nameserver ${env.network.gateway}`), view.stdout.toString());
    assert.ok(lines.includes('search kata-ts.test'), view.stdout.toString());
    assert.ok(lines.includes('options ndots:2'), view.stdout.toString());
    assert.ok(lines.includes('G=hello'));
    // The exec timeout (seconds) is enforced by containerd, which answers DEADLINE_EXCEEDED.
    const tExec = Date.now();
    await assert.rejects(
      env.client.execSync({ containerId: web, cmd: ['sleep', '30'], timeout: 1 }),
      (err) => criStatusCode(err) === GrpcStatus.DEADLINE_EXCEEDED,
    );
    assert.ok(Date.now() - tExec < 10_000);

    // ContainerStatus: running, with times (unix ns), image and log path.
    const st = (await env.client.containerStatus({ containerId: web })).status!;
    assert.equal(st.state, cri.ContainerState.CONTAINER_RUNNING);
    assert.equal(st.metadata?.name, 'httpd');
    assert.equal(st.image?.image, IMAGES.busybox);
    assert.ok(st.imageRef.length > 0);
    assert.ok(st.createdAt > 0 && st.startedAt >= st.createdAt, `created ${st.createdAt} started ${st.startedAt}`);
    assert.equal(st.finishedAt, 0);
    assert.equal(st.logPath, pod.logPath('httpd'));

    // The CRI log file: one line per write, `<time> <stream> F <text>`.
    const log = await retry(async () => {
      const text = readFileSync(pod.logPath('httpd'), 'utf8');
      if (!text.includes(' stdout F hi') || !text.includes(' stderr F oops')) throw new Error(`log: ${text}`);
      return text;
    }, 5000, 100);
    assert.match(log, /^\S+ stdout F hi$/m);

    // ContainerStats: cgroup metrics from the runc shim.
    const stats = (await env.client.containerStats({ containerId: web })).stats!;
    assert.equal(stats.attributes?.id, web);
    assert.ok((stats.cpu?.timestamp ?? 0) > 0);
    assert.ok(stats.cpu?.usageCoreNanoSeconds !== undefined && stats.cpu.usageCoreNanoSeconds.value > 0);
    assert.ok((stats.memory?.workingSetBytes?.value ?? 0) > 0, JSON.stringify(stats.memory));
    assert.ok(stats.writableLayer?.fsId?.mountpoint);

    // From the host to the pod's CNI address, on the env's own bridge.
    const page = await retry(() => httpGet(ip, 8080, '/index.html'), 5000, 100);
    assert.equal(page.status, 200);
    assert.equal(page.body, 'hello from kata-ts-web\n');

    // UpdateContainerResources on a running container reaches the cgroup (cgroup v1 memory here).
    await env.client.updateContainerResources({
      containerId: web,
      linux: criMessage(cri.LinuxContainerResources, { memoryLimitInBytes: 96 << 20, cpuPeriod: 100_000, cpuQuota: 20_000 }),
    });
    const limit = await env.client.execSync({
      containerId: web,
      cmd: ['sh', '-c', 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max'],
      timeout: 10,
    });
    assert.equal(limit.stdout.toString().trim(), String(96 << 20));

    // A second container that exits on its own: EXITED with its code and finish time.
    // It lives a second: containerd takes started_at after the shim's Start returns and finished_at from the
    // shim's exit time, so a process that exits at once can show finished_at < started_at.
    const job = await pod.runContainer({ name: 'job', command: ['sh', '-c', 'echo done; sleep 1; exit 3'] });
    const done = await pod.waitContainerState(job, cri.ContainerState.CONTAINER_EXITED);
    assert.equal(done.exitCode, 3);
    assert.equal(done.reason, 'Error');
    const ranMs = (done.finishedAt - done.startedAt) / 1e6;
    assert.ok(done.startedAt > 0 && ranMs > 900 && ranMs < 10_000, `started ${done.startedAt} finished ${done.finishedAt}`);

    // StopContainer (SIGTERM, then SIGKILL after the timeout) and RemoveContainer.
    await env.client.stopContainer({ containerId: web, timeout: 2 });
    const stopped = (await env.client.containerStatus({ containerId: web })).status!;
    assert.equal(stopped.state, cri.ContainerState.CONTAINER_EXITED);
    assert.ok(stopped.finishedAt > stopped.startedAt);
    await env.client.removeContainer({ containerId: web });
    await env.client.removeContainer({ containerId: job });
    await assert.rejects(env.client.containerStatus({ containerId: web }), (err) => criStatusCode(err) === GrpcStatus.NOT_FOUND);

    // StopPodSandbox tears the network down; RemovePodSandbox forgets it. Both are idempotent.
    await env.client.stopPodSandbox({ podSandboxId: pod.id });
    const notReady = await pod.status();
    assert.equal(notReady.status?.state, cri.PodSandboxState.SANDBOX_NOTREADY);
    await env.client.stopPodSandbox({ podSandboxId: pod.id });
    await pod.remove();
    await env.client.removePodSandbox({ podSandboxId: pod.id });
    await assert.rejects(pod.status(), (err) => criStatusCode(err) === GrpcStatus.NOT_FOUND);

    assert.deepEqual(await env.leakedSince(baseline), NOTHING);
  });

  test('a pod without linux.resources gets no sizing annotations; removing a running pod cleans up', async () => {
    const pod = await env.runPod({ name: 'bare', resources: null });
    const ann = (await pod.info()).runtimeSpec?.annotations ?? {};
    assert.equal(ann['io.kubernetes.cri.sandbox-memory'], undefined);
    assert.equal(ann['io.kubernetes.cri.sandbox-cpu-quota'], undefined);
    await pod.runContainer({ name: 'sleeper', command: ['sleep', '1000'] });
    // No StopContainer: RemovePodSandbox after StopPodSandbox must take the container with it.
    await pod.remove();
    const left = await env.client.listContainers({});
    assert.deepEqual(left.containers, []);
    assert.deepEqual(await env.leakedSince(baseline), NOTHING);
  });

  test('errors carry the gRPC status: unknown handler, unknown ids', async () => {
    await assert.rejects(env.runPod({ name: 'nohandler', handler: 'no-such-handler' }), (err: Error) => {
      assert.match(err.message, /no runtime for "no-such-handler" is configured/);
      return true;
    });
    const notFound = (err: unknown) => criStatusCode(err) === GrpcStatus.NOT_FOUND;
    await assert.rejects(env.client.startContainer({ containerId: 'does-not-exist' }), notFound);
    // containerd 1.6.20: Stop* of an unknown id is NOT_FOUND, Remove* of an unknown id succeeds.
    await assert.rejects(env.client.stopPodSandbox({ podSandboxId: 'does-not-exist' }), notFound);
    await assert.rejects(env.client.stopContainer({ containerId: 'does-not-exist' }), notFound);
    await env.client.removePodSandbox({ podSandboxId: 'does-not-exist' });
    await env.client.removeContainer({ containerId: 'does-not-exist' });
    // A client deadline is reported as such.
    await assert.rejects(env.client.version({}, { timeoutMs: 0 }), (err) => criStatusCode(err) === GrpcStatus.DEADLINE_EXCEEDED);
    assert.deepEqual(await env.leakedSince(baseline), NOTHING);
  });
});
