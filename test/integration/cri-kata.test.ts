import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as cri from '../../src/protocol/gen/cri/api.js';
import { criMessage } from '../helpers/cri-client.js';
import { CriEnv, type CriHostSnapshot, type CriPod } from '../helpers/cri-env.js';
import { writeTestConfig } from '../helpers/config.js';
import { runCli } from '../helpers/run-cli.js';
import { httpGet, retry } from '../helpers/wait.js';

/**
 * The Kubernetes path: containerd's CRI plugin with the RuntimeClass handler `kata`, real CNI (bridge +
 * host-local), kata-ts's shim: pod networking through tc-filter, volumes, sizing, stats, and nothing left.
 */

const qemuOf = (sandboxId: string) =>
  execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes('qemu-system') && l.includes(`/run/vc/vm/${sandboxId}/`));

/** How the pod's VM started (`vm_origin` of the shim's kata_shim_sandbox_info metric). */
async function vmOrigin(sandboxId: string): Promise<string | undefined> {
  const r = await runCli(['metrics', sandboxId]);
  assert.equal(r.code, 0, r.stderr);
  return /^kata_shim_sandbox_info\{[^}]*vm_origin="([^"]+)"/m.exec(r.stdout)?.[1];
}

describe('Kubernetes path: CRI RuntimeClass handler kata, CNI, volumes', () => {
  let env: CriEnv;
  let baseline: CriHostSnapshot;
  const cfg = writeTestConfig();
  const vol = mkdtempSync(join(tmpdir(), 'kata-ts-vol-'));
  const emptyDir = join(vol, 'pods/uid/volumes/kubernetes.io~empty-dir/cache');

  before(async () => {
    mkdirSync(join(vol, 'rw'));
    mkdirSync(join(vol, 'ro'));
    writeFileSync(join(vol, 'ro/hello'), 'from-host\n');
    mkdirSync(emptyDir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', emptyDir]);
    env = await CriEnv.start({ kata: { configPath: cfg.path, podAnnotations: ['io.katacontainers.*'] }, images: ['busybox'] });
    baseline = await env.hostSnapshot();
  });

  after(async () => {
    await env?.stop();
    execFileSync('umount', [emptyDir]);
    rmSync(vol, { recursive: true, force: true });
    cfg.remove();
  });

  test('a kata pod beside a runc pod: IP from CNI, HTTP from the host, ping of the gateway, one VM per pod, volumes, sizing, stats', async (t) => {
    const t0 = performance.now();
    const pod: CriPod = await env.runPod({
      handler: 'kata',
      name: 'web',
      hostname: 'kata-web',
      dns: { servers: [env.network.gateway], searches: ['kata-ts.test'], options: [] },
      resources: { cpuPeriod: 100_000, cpuQuota: 100_000, cpuShares: 1024, memoryLimitInBytes: 256 << 20 },
    });
    const mounts = [
      criMessage(cri.Mount, { containerPath: '/data', hostPath: join(vol, 'rw') }),
      criMessage(cri.Mount, { containerPath: '/config', hostPath: join(vol, 'ro'), readonly: true }),
      criMessage(cri.Mount, { containerPath: '/cache', hostPath: emptyDir }),
    ];
    const web = await pod.runContainer({
      name: 'httpd',
      command: ['sh', '-c'],
      args: ['mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www'],
      mounts,
      resources: { cpuPeriod: 100_000, cpuQuota: 100_000, memoryLimitInBytes: 256 << 20 },
    });
    t.diagnostic(`kata: RunPodSandbox-to-running ${(performance.now() - t0).toFixed(0)} ms`);

    // One VM for the pod (the pause container's), none for the app container; a clone of a VM template
    // (the shipped configuration's default), NIC included.
    assert.equal(qemuOf(pod.id).length, 1);
    assert.equal(qemuOf(web).length, 0);
    assert.equal(await vmOrigin(pod.id), 'template');

    // Network: the CNI address is the guest's; the host reaches the pod; the pod reaches the gateway.
    const ip = await pod.ip();
    const res = await retry(() => httpGet(ip, 8080, '/index.html'), 30_000);
    assert.equal(res.status, 200);
    assert.equal(res.body, 'hello from kata-web\n');
    const ping = await env.client.execSync({ containerId: web, cmd: ['ping', '-c', '2', '-W', '5', env.network.gateway], timeout: 30 });
    assert.equal(ping.exitCode, 0, ping.stdout.toString() + ping.stderr.toString());
    const addr = await env.client.execSync({ containerId: web, cmd: ['ip', '-4', 'addr', 'show', 'eth0'], timeout: 10 });
    assert.match(addr.stdout.toString(), new RegExp(`inet ${ip.replaceAll('.', '\\.')}/`));

    // The guest kernel; DNS and hostname from CRI.
    const view = await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'uname -r; hostname; cat /etc/resolv.conf'], timeout: 10 });
    const lines = view.stdout.toString().split('\n');
    assert.match(lines[0]!, /^6\.1\.\d+.*amd64$/);
    assert.equal(lines[1], 'kata-web');
    assert.ok(lines.includes(`nameserver ${env.network.gateway}`), view.stdout.toString());

    // ExecSync keeps stdout, stderr and the exit code apart.
    const ex = await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'echo out; echo err >&2; exit 7'], timeout: 10 });
    assert.deepEqual([ex.stdout.toString(), ex.stderr.toString(), ex.exitCode], ['out\n', 'err\n', 7]);

    // Volumes: rw bind, ro bind, memory emptyDir as a tmpfs in the guest shared by the pod's containers.
    const w = await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'echo from-guest > /data/out; cat /config/hello; echo x > /config/nope'], timeout: 10 });
    assert.equal(w.stdout.toString(), 'from-host\n');
    assert.notEqual(w.exitCode, 0, 'writing a read-only volume fails');
    assert.equal(readFileSync(join(vol, 'rw/out'), 'utf8'), 'from-guest\n');
    assert.equal(existsSync(join(vol, 'ro/nope')), false);
    const side = await pod.runContainer({ name: 'side', command: ['sleep', '1000'], mounts: [mounts[2]!] });
    await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'echo shared > /cache/f'], timeout: 10 });
    const cache = await env.client.execSync({ containerId: side, cmd: ['sh', '-c', 'cat /cache/f; grep " /cache " /proc/mounts'], timeout: 10 });
    assert.match(cache.stdout.toString(), /^shared\n.* \/cache tmpfs /);
    assert.equal(existsSync(join(emptyDir, 'f')), false, 'the memory emptyDir lives in the guest, not on the host');

    // Sizing: the VM got the pod's CPU and memory on top of the defaults; the container sees about that.
    const size = await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'nproc; head -n1 /proc/meminfo'], timeout: 10 });
    const [nproc, mem] = size.stdout.toString().split('\n');
    assert.equal(Number(nproc), 2);
    const kb = Number(/(\d+) kB/.exec(mem!)![1]);
    assert.ok(kb > (512 + 256 - 100) * 1024 && kb <= (512 + 256) * 1024, `MemTotal ${kb} kB`);

    // UpdateContainerResources reaches the guest cgroup; ContainerStats come from the guest.
    await env.client.updateContainerResources({ containerId: web, linux: criMessage(cri.LinuxContainerResources, { memoryLimitInBytes: 200 << 20 }) });
    const max = await env.client.execSync({ containerId: web, cmd: ['sh', '-c', 'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max'], timeout: 10 });
    assert.equal(max.stdout.toString().trim(), String(200 << 20));
    const stats = await env.client.containerStats({ containerId: web });
    assert.ok((stats.stats?.memory?.workingSetBytes?.value ?? 0) > 0, JSON.stringify(stats.stats?.memory));
    assert.ok((stats.stats?.cpu?.usageCoreNanoSeconds?.value ?? 0) > 0);

    // A container that exits: status with exit code and times.
    const quit = await pod.runContainer({ name: 'quit', command: ['sh', '-c', 'sleep 1; exit 3'] });
    const st = await pod.waitContainerState(quit, cri.ContainerState.CONTAINER_EXITED, 60_000);
    assert.equal(st.exitCode, 3);
    assert.ok(st.finishedAt > st.startedAt && st.startedAt > 0);

    // A runc pod beside it still works.
    const plain = await env.runPod({ name: 'plain' });
    const pc = await plain.runContainer({ name: 'c', command: ['sleep', '1000'] });
    const pr = await env.client.execSync({ containerId: pc, cmd: ['uname', '-r'], timeout: 10 });
    assert.equal(pr.stdout.toString().trim(), execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim());

    await plain.remove();
    await pod.remove();
    assert.equal(qemuOf(pod.id).length, 0);
    for (const d of [`/run/vc/vm/${pod.id}`, `/run/vc/sbs/${pod.id}`, `/run/kata-containers/shared/sandboxes/${pod.id}`]) {
      assert.equal(existsSync(d), false, `${d} left behind`);
    }
    assert.deepEqual(await env.leakedSince(baseline), { netns: [], veths: [], shims: [], mounts: [], cniState: [] });
  });

  /** A kata pod with `annotations` whose busybox httpd serves `name`; checks the host gets it. */
  async function annotatedHttpdPod(name: string, annotations: Record<string, string>): Promise<CriPod> {
    const pod = await env.runPod({ handler: 'kata', name, resources: null, annotations });
    await pod.runContainer({ name: 'httpd', command: ['sh', '-c', `echo ${name} > /index.html && exec httpd -f -p 8080 -h /`] });
    const ip = await pod.ip();
    const res = await retry(() => httpGet(ip, 8080, '/index.html'), 30_000);
    assert.equal(res.body, `${name}\n`);
    return pod;
  }

  async function removeLeavingNothing(pod: CriPod): Promise<void> {
    await pod.remove();
    assert.equal(qemuOf(pod.id).length, 0);
    assert.deepEqual(await env.leakedSince(baseline), { netns: [], veths: [], shims: [], mounts: [], cniState: [] });
  }

  test('macvtap interworking (runtime annotation): the host reaches the pod through the macvtap', async () => {
    const pod = await annotatedHttpdPod('mvt', { 'io.katacontainers.config.runtime.internetworking_model': 'macvtap' });
    assert.equal(await vmOrigin(pod.id), 'template', 'a clone backs its NIC with the macvtap fd');
    await removeLeavingNothing(pod);
  });

  test('a pod that asks for virtio-fs (shared_fs annotation, enabled in the shipped config) boots cold with virtiofsd', async () => {
    const pod = await annotatedHttpdPod('vfs', { 'io.katacontainers.config.hypervisor.shared_fs': 'virtio-fs' });
    const metrics = await runCli(['metrics', pod.id]);
    assert.match(metrics.stdout, /^kata_shim_sandbox_info\{[^}]*shared_fs="virtio-fs"[^}]*vm_origin="cold-boot"/m);
    assert.match(metrics.stdout, /^kata_virtiofsd_processes [1-9]/m);
    await removeLeavingNothing(pod);
  });

  test('an annotation that enable_annotations does not allow fails the pod clearly; nothing leaks', async () => {
    await assert.rejects(
      env.runPod({ handler: 'kata', name: 'bad', annotations: { 'io.katacontainers.config.hypervisor.default_memory': '4096' } }),
      /not enabled/,
    );
    assert.deepEqual(await env.removeAllPods(), []);
    assert.deepEqual(await env.leakedSince(baseline), { netns: [], veths: [], shims: [], mounts: [], cniState: [] });
  });
});
