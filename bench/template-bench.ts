import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../src/base/logger.js';
import { loadConfig } from '../src/runtime/config/load.js';
import type { RuntimeConfig } from '../src/runtime/config/types.js';
import { defaultSandboxDeps } from '../src/runtime/default-deps.js';
import { destroyTemplates, TemplateStore, templateStatus } from '../src/runtime/factory/index.js';
import { defaultPaths } from '../src/runtime/paths.js';
import { Sandbox } from '../src/runtime/sandbox.js';
import { defaultSpec, makeBundleAt } from '../test/helpers/bundle.js';
import { writeTestConfig } from '../test/helpers/config.js';
import { TestContainerd } from '../test/helpers/containerd.js';
import { fmtMs, median, runs, table, timeCommand, writeResults } from './stats.js';

/**
 * VM templates against cold boots, side by side in one run (configurations differing only in
 * `enable_template`; both use virtio-9p, which templates need):
 *  (a) `ctr run --rm IMAGE true` through containerd: kata-ts cold, kata-ts from a template (each with its
 *      configuration file as `--runtime-config-path`), and runc;
 *  (b) `kata-runtime run` of `true`, cold and from a template, with the sandbox phase timings (agent ready);
 *  (c) PSS per idle pod (QEMU from /proc/<pid>/smaps_rollup, summed and divided by N) at 1, 5 and 10 pods
 *      running `sleep`, cold against clones; the template's own tmpfs is reported beside it.
 * Targets (issue): template run <= 0.15x cold and <= 0.6 s; <= 40 MB PSS per idle pod at 10 pods.
 */
const KATA_RUNTIME = new URL('../../bin/kata-runtime', import.meta.url).pathname;
const IMAGE = 'docker.io/library/busybox:kata-ts';
const NS = 'bench-template';
const MB = 1024 * 1024;

/** (a): medians of `ctr run --rm` cold, from a template, and with runc. */
async function ctrRuns(n: number, coldPath: string, tplPath: string): Promise<Record<'cold' | 'template' | 'runc', number[]>> {
  const ctd = await TestContainerd.start();
  const out: Record<'cold' | 'template' | 'runc', number[]> = { cold: [], template: [], runc: [] };
  try {
    execFileSync(new URL('../../images/import.sh', import.meta.url).pathname, ['--namespace', NS, '--address', ctd.address, '--only', 'busybox'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const kata = (cfg: string) => ['--runtime', 'io.containerd.kata.v2', '--runtime-config-path', cfg];
    for (let i = 0; i < n; i++) {
      for (const [variant, extra] of [['cold', kata(coldPath)], ['template', kata(tplPath)], ['runc', []]] as const) {
        const t0 = performance.now();
        const r = await ctd.ctr(['run', '--rm', ...extra, IMAGE, `bt-${variant}-${i}`, 'true'], { namespace: NS });
        if (r.code !== 0) throw new Error(`ctr run (${variant}): ${r.stderr}`);
        out[variant].push(performance.now() - t0);
      }
    }
    return out;
  } finally {
    await ctd.stop([NS]);
  }
}

function pssBytes(pid: number): number {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? NaN);
  return kb * 1024;
}

interface PssPoint {
  pods: number;
  perPodMB: number;
  totalMB: number;
}

/** Starts pods one after another up to each N in `steps`, each running `sleep`; PSS per pod at every N. */
async function measurePss(config: RuntimeConfig, bundleRootfs: string, steps: number[], tag: string): Promise<{ points: PssPoint[]; origins: string[] }> {
  const pods: Sandbox[] = [];
  const points: PssPoint[] = [];
  try {
    for (const n of steps) {
      while (pods.length < n) {
        const id = `tb${process.pid}-${tag}-${pods.length}`;
        const sb = await Sandbox.create({ sandboxId: id, config, paths: defaultPaths() }, defaultSandboxDeps(), silentLogger);
        pods.push(sb);
        const c = await sb.createContainer({ containerId: 'sleep', spec: defaultSpec(['sleep', '3600']), hostRootfs: bundleRootfs, stdio: {} });
        await c.start();
      }
      // Let the guests go idle (agent, crun and the container settled) before reading PSS.
      await new Promise((r) => setTimeout(r, 3000));
      let total = 0;
      for (const sb of pods) for (const p of sb.hostProcesses()) total += pssBytes(p.pid);
      points.push({ pods: n, perPodMB: total / n / MB, totalMB: total / MB });
      process.stderr.write(`  ${tag}: ${n} pods, ${(total / n / MB).toFixed(1)} MB PSS per pod\n`);
    }
    return { points, origins: pods.map((p) => p.timings.vmOrigin ?? '?') };
  } finally {
    for (const sb of pods) await sb.stop().catch((err) => process.stderr.write(`stop ${sb.id}: ${err}\n`));
  }
}

async function main(): Promise<void> {
  const n = runs();
  const podSteps = (process.env.BENCH_PODS ?? '1,5,10').split(',').map(Number);
  const work = mkdtempSync(join(tmpdir(), 'kata-ts-tbench-'));
  const templatePath = join(work, 'template');
  const common = { shared_fs: '"virtio-9p"', template_path: JSON.stringify(templatePath) };
  const coldCfg = writeTestConfig({ ...common, enable_template: 'false' });
  const tplCfg = writeTestConfig({ ...common, enable_template: 'true' });
  const [coldPath, tplPath] = [coldCfg.path, tplCfg.path];
  const tplConfig = await loadConfig(tplPath);
  const coldConfig = await loadConfig(coldPath);
  try {
    const bundle = join(work, 'bundle');
    await makeBundleAt(bundle, ['true']);

    const init = await timeCommand(KATA_RUNTIME, ['--config', tplPath, 'factory', 'init']);
    if (init.code !== 0) throw new Error('factory init failed');
    const status = await templateStatus(tplConfig, 'tcg', silentLogger);
    const tpl = status.templates.find((t) => t.meta?.key === status.currentKeys[0]?.key);

    const ctrWall = await ctrRuns(n, coldPath, tplPath);
    const c = { cold: median(ctrWall.cold), template: median(ctrWall.template), runc: median(ctrWall.runc) };

    const wall: Record<'cold' | 'template' | 'runc', number[]> = { cold: [], template: [], runc: [] };
    const phases: Record<'cold' | 'template', Record<string, number[]>> = { cold: {}, template: {} };
    for (let i = 0; i < n; i++) {
      for (const [variant, cfgPath] of [['cold', coldPath], ['template', tplPath]] as const) {
        const tf = join(work, `timings-${variant}-${i}.json`);
        const r = await timeCommand(KATA_RUNTIME, ['--config', cfgPath, 'run', '--bundle', bundle, '--timings-file', tf, `tb${process.pid}-${variant}-${i}`]);
        if (r.code !== 0) throw new Error(`kata-runtime run (${variant}) failed`);
        wall[variant].push(r.ms);
        const t = JSON.parse(readFileSync(tf, 'utf8')) as Record<string, number | string>;
        if (variant === 'template' && t.vmOrigin !== 'template') throw new Error(`template run booted ${String(t.vmOrigin)}`);
        for (const [k, v] of Object.entries(t)) if (typeof v === 'number') (phases[variant][k] ??= []).push(v);
      }
      const rr = await timeCommand('runc', ['run', '--bundle', bundle, `tb-runc-${process.pid}-${i}`]);
      if (rr.code !== 0) throw new Error('runc run failed');
      wall.runc.push(rr.ms);
    }
    const m = { cold: median(wall.cold), template: median(wall.template), runc: median(wall.runc) };
    const ph = (v: 'cold' | 'template', k: string) => (phases[v][k] ? median(phases[v][k]!) : undefined);

    process.stderr.write('PSS, clones:\n');
    const pssTemplate = await measurePss(tplConfig, join(bundle, 'rootfs'), podSteps, 'tpl');
    const tmpfsUsedMB = ((await templateStatus(tplConfig, 'tcg', silentLogger)).mount.usedBytes ?? 0) / MB;
    process.stderr.write('PSS, cold boots:\n');
    const pssCold = await measurePss(coldConfig, join(bundle, 'rootfs'), podSteps, 'cold');

    const summary = {
      date: new Date().toISOString(),
      runs: n,
      machine: tplConfig.hypervisor.machineType,
      memoryMiB: tplConfig.hypervisor.defaultMemoryMiB,
      sharedFs: 'virtio-9p',
      template: {
        initMs: init.ms,
        buildMs: tpl?.meta?.buildMs,
        memoryFileAllocatedMB: tpl?.memoryAllocatedBytes !== undefined ? tpl.memoryAllocatedBytes / MB : undefined,
        stateBytes: tpl?.stateBytes,
      },
      ctrRunMedianMs: c,
      ctrRatioTemplateToCold: c.template / c.cold,
      medianMs: { coldRun: m.cold, templateRun: m.template, runcRun: m.runc },
      ratioTemplateToCold: m.template / m.cold,
      phasesMs: Object.fromEntries(
        (['vmRunningMs', 'agentReadyMs', 'sandboxReadyMs', 'containerStartedMs', 'containerExitedMs', 'teardownDoneMs'] as const).map((k) => [
          k,
          { cold: ph('cold', k), template: ph('template', k) },
        ]),
      ),
      pssPerIdlePodMB: { cold: pssCold.points, template: pssTemplate.points, templateTmpfsMB: tmpfsUsedMB, templateOrigins: pssTemplate.origins },
      targets: {
        templateRunAtMost015xCold: c.template <= 0.15 * c.cold,
        templateRunAtMost600ms: c.template <= 600,
        pssAtMost40MBAt10Pods: (pssTemplate.points.find((p) => p.pods === 10)?.perPodMB ?? Infinity) <= 40,
      },
      samplesMs: { ctrRun: ctrWall, kataRuntimeRun: wall },
    };

    const yes = (b: boolean) => (b ? 'met' : 'NOT met');
    const fmtMB = (x: number | undefined) => (x === undefined ? '-' : `${x.toFixed(1)} MB`);
    const phaseRow = (label: string, k: string): string[] => [label, fmtMs(ph('cold', k)), fmtMs(ph('template', k))];
    const out = [
      `VM templates vs cold boot, medians of ${n} (${summary.machine}, TCG, ${summary.memoryMiB} MiB guests, virtio-9p)`,
      `template: built in ${fmtMs(summary.template.buildMs)} (factory init ${fmtMs(init.ms)}), RAM file ${fmtMB(summary.template.memoryFileAllocatedMB)} in tmpfs, state ${summary.template.stateBytes ?? '-'} bytes`,
      '',
      table([
        [`ctr run --rm ${IMAGE} true`, 'kata-ts cold', 'kata-ts template', 'runc'],
        ['wall, median', fmtMs(c.cold), fmtMs(c.template), fmtMs(c.runc)],
        ['ratio to cold', '1.00', (c.template / c.cold).toFixed(2), (c.runc / c.cold).toFixed(2)],
      ]),
      '',
      table([
        ['kata-runtime run true', 'cold', 'template', 'runc run true'],
        ['wall, median', fmtMs(m.cold), fmtMs(m.template), fmtMs(m.runc)],
        ['ratio to cold', '1.00', (m.template / m.cold).toFixed(2), (m.runc / m.cold).toFixed(2)],
      ]),
      '',
      'phases, ms since sandbox start (kata-runtime --timings-file):',
      table([
        ['phase', 'cold', 'template'],
        phaseRow('VM running (cold: QMP up; clone: state loaded, resumed)', 'vmRunningMs'),
        phaseRow('agent ready', 'agentReadyMs'),
        phaseRow('sandbox ready (RNG, clock, CreateSandbox)', 'sandboxReadyMs'),
        phaseRow('container started', 'containerStartedMs'),
        phaseRow('container exited', 'containerExitedMs'),
        phaseRow('teardown done', 'teardownDoneMs'),
      ]),
      '',
      'PSS per idle pod (QEMU, `sleep` container; the shim is measured by the shim bench), sum / N:',
      table([
        ['pods', 'cold', 'clones', 'clones + template tmpfs / N'],
        ...podSteps.map((p) => {
          const c = pssCold.points.find((x) => x.pods === p);
          const t = pssTemplate.points.find((x) => x.pods === p);
          return [String(p), fmtMB(c?.perPodMB), fmtMB(t?.perPodMB), fmtMB(t ? t.perPodMB + tmpfsUsedMB / p : undefined)];
        }),
      ]),
      `template tmpfs in use: ${fmtMB(tmpfsUsedMB)} (shared by all clones; pages they map are already in their PSS)`,
      '',
      'targets:',
      `  ctr run --rm from a template <= 0.15x cold: ${yes(summary.targets.templateRunAtMost015xCold)} (${(c.template / c.cold).toFixed(2)}x)`,
      `  ctr run --rm from a template <= 0.6 s: ${yes(summary.targets.templateRunAtMost600ms)} (${fmtMs(c.template)})`,
      `  PSS <= 40 MB per idle pod at 10 pods: ${yes(summary.targets.pssAtMost40MBAt10Pods)}`,
    ].join('\n');
    process.stdout.write(out + '\n');
    writeResults('template', summary, '```\n' + out + '\n```\n');
  } finally {
    spawnSync('sh', ['-c', `runc list -q | grep tb-runc-${process.pid} | xargs -r -n1 runc delete -f`]);
    await destroyTemplates(tplConfig, {}, silentLogger).catch((err) => process.stderr.write(`destroy template: ${err}\n`));
    rmSync(new TemplateStore(templatePath, silentLogger).lockPath, { force: true });
    rmSync(work, { recursive: true, force: true });
    coldCfg.remove();
    tplCfg.remove();
  }
}

await main();
