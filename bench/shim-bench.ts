
import { execFileSync } from 'node:child_process';
import { TestContainerd } from '../test/helpers/containerd.js';
import { pidsMatching, procMemKb } from './proc-mem.js';
import { fmtMs, median, runs, table, writeResults } from './stats.js';

/**
 * The containerd path, side by side in one run: `ctr run --rm IMAGE true` with kata-ts (the installed, shipped
 * configuration: VM templates on) and with runc, the raw QEMU floor (from bench/results/sandbox.json of the
 * same `npm run bench`), and memory per idle pod.
 */
const IMAGE = 'docker.io/library/busybox:kata-ts';
const NS = 'bench';

function timed(ctd: TestContainerd, args: string[]): Promise<number> {
  const t0 = performance.now();
  return ctd.ctr(args, { namespace: NS }).then((r) => {
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')}: ${r.stderr}`);
    return performance.now() - t0;
  });
}

async function main(): Promise<void> {
  const n = runs();
  const ctd = await TestContainerd.start();
  try {
    execFileSync(new URL('../../images/import.sh', import.meta.url).pathname, ['--namespace', NS, '--address', ctd.address, '--only', 'busybox'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const kata: number[] = [];
    const runc: number[] = [];
    for (let i = 0; i < n; i++) {
      kata.push(await timed(ctd, ['run', '--rm', '--runtime', 'io.containerd.kata.v2', IMAGE, `bk${i}`, 'true']));
      runc.push(await timed(ctd, ['run', '--rm', IMAGE, `br${i}`, 'true']));
    }
    let floor: number | undefined;
    try {
      const s = JSON.parse(execFileSync('cat', [new URL('../../bench/results/sandbox.json', import.meta.url).pathname], { encoding: 'utf8' }));
      floor = s.medianMs.floor;
    } catch {
      floor = undefined;
    }

    const memory: Record<string, Record<string, number>> = {};
    for (const pods of [1, 5]) {
      const ids = Array.from({ length: pods }, (_, i) => `bm${pods}-${i}`);
      for (const id of ids) await timed(ctd, ['run', '-d', '--runtime', 'io.containerd.kata.v2', IMAGE, id, 'sleep', '100000']);
      await new Promise((r) => setTimeout(r, 3000));
      const sum = (re: RegExp) =>
        pidsMatching(re).reduce(
          (acc, pid) => {
            const m = procMemKb(pid);
            return { rss: acc.rss + m.rssKb, pss: acc.pss + m.pssKb };
          },
          { rss: 0, pss: 0 },
        );
      const shim = sum(/containerd-shim-kata-v2 .*-socket/);
      const qemu = sum(/qemu-system.*\/run\/vc\/vm\/bm/);
      const vfs = sum(/virtiofsd.*\/run\/vc\/vm\/bm/);
      memory[`${pods}`] = {
        shimRssMB: shim.rss / 1024 / pods,
        shimPssMB: shim.pss / 1024 / pods,
        qemuRssMB: qemu.rss / 1024 / pods,
        qemuPssMB: qemu.pss / 1024 / pods,
        virtiofsdRssMB: vfs.rss / 1024 / pods,
        virtiofsdPssMB: vfs.pss / 1024 / pods,
        totalPssMB: (shim.pss + qemu.pss + vfs.pss) / 1024 / pods,
      };
      await ctd.removeAll([NS]);
    }
    const mk = median(kata);
    const mr = median(runc);
    const mb = (v: number | undefined) => (v === undefined ? '-' : `${v.toFixed(1)} MB`);
    const out = [
      `containerd path (ctr run --rm ${IMAGE} true), medians of ${n}`,
      table([
        ['what', 'median'],
        ['kata-ts (io.containerd.kata.v2, shipped config: VM template clones)', fmtMs(mk)],
        ['runc (io.containerd.runc.v2)', fmtMs(mr)],
        ['raw QEMU floor (sandbox bench)', fmtMs(floor)],
        ['ratio kata-ts / floor', floor ? (mk / floor).toFixed(2) : '-'],
        ['ratio kata-ts / runc', (mk / mr).toFixed(1)],
      ]),
      '',
      'memory per idle pod (sleep), averaged over the pods:',
      table([
        ['pods', 'shim RSS', 'shim PSS', 'QEMU RSS', 'QEMU PSS', 'virtiofsd RSS', 'virtiofsd PSS', 'total PSS'],
        ...Object.entries(memory).map(([p, m]) => [
          p,
          mb(m.shimRssMB),
          mb(m.shimPssMB),
          mb(m.qemuRssMB),
          mb(m.qemuPssMB),
          mb(m.virtiofsdRssMB),
          mb(m.virtiofsdPssMB),
          mb(m.totalPssMB),
        ]),
      ]),
    ].join('\n');
    process.stdout.write(out + '\n');
    writeResults('shim', { date: new Date().toISOString(), runs: n, medianMs: { kata: mk, runc: mr, floor }, samplesMs: { kata, runc }, memoryPerPod: memory }, '```\n' + out + '\n```\n');
  } finally {
    await ctd.stop([NS]);
  }
}


await main();
