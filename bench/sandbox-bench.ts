import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeBundleAt } from '../test/helpers/bundle.js';
import { hostTscKhz } from '../src/hypervisor/accel.js';
import { buildQemuArgs } from '../src/hypervisor/qemu/cmdline.js';
import { loadConfig } from '../src/runtime/config/load.js';
import { writeTestConfig } from '../test/helpers/config.js';
import { fmtMs, median, runs, table, timeCommand, writeResults } from './stats.js';

/**
 * The cold sandbox path, side by side in one run:
 *  (a) floor: the same QEMU, kernel, machine and image booting to guest /init and powering off (kata.floor=1);
 *  (b) `kata-runtime run` of `true` booting cold (the shipped configuration with `enable_template = false`;
 *      the template bench compares it with clones), with its phase breakdown;
 *  (c) `runc run` of the same bundle.
 */
const KATA_RUNTIME = new URL('../../bin/kata-runtime', import.meta.url).pathname;

async function main(): Promise<void> {
  const n = runs();
  const cold = writeTestConfig({ enable_template: 'false' });
  const config = await loadConfig(cold.path);
  const hv = config.hypervisor;
  const work = mkdtempSync(join(tmpdir(), 'kata-ts-bench-'));
  try {
    const bundle = join(work, 'bundle');
    await makeBundleAt(bundle, ['true']);
    const floorArgs = buildQemuArgs(
      {
        sandboxId: 'floor',
        vmDir: work,
        hypervisorPath: hv.path,
        kernelPath: hv.kernel,
        initrdPath: hv.initrd,
        imagePath: hv.image,
        kernelParams: ['kata.floor=1'],
        machineType: hv.machineType,
        accel: 'tcg',
        vcpus: hv.defaultVcpus,
        memoryMiB: hv.defaultMemoryMiB,
        memoryBackend: { kind: 'anonymous' },
        agentChannel: { kind: 'virtio-serial', socketPath: join(work, 'agent.sock') },
        devices: [],
      },
      { tscKhz: hostTscKhz() },
    );
    const floor: number[] = [];
    const kata: number[] = [];
    const runc: number[] = [];
    const phases: Record<string, number[]> = {};
    for (let i = 0; i < n; i++) {
      floor.push((await timeCommand(hv.path, floorArgs)).ms);
      const tf = join(work, `timings-${i}.json`);
      const r = await timeCommand(KATA_RUNTIME, ['--config', cold.path, 'run', '--bundle', bundle, '--timings-file', tf, `bench-${process.pid}-${i}`]);
      if (r.code !== 0) throw new Error('kata-runtime run failed');
      kata.push(r.ms);
      const t = JSON.parse(readFileSync(tf, 'utf8')) as Record<string, number>;
      for (const [k, v] of Object.entries(t)) (phases[k] ??= []).push(v);
      const rr = await timeCommand('runc', ['run', '--bundle', bundle, `bench-runc-${process.pid}-${i}`]);
      if (rr.code !== 0) throw new Error('runc run failed');
      runc.push(rr.ms);
    }
    const mf = median(floor);
    const mk = median(kata);
    const mr = median(runc);
    const phase = (k: string) => (phases[k] ? median(phases[k]!) : undefined);
    const initHostMs = phase('guestInitUptimeS') !== undefined ? phase('guestInitUptimeS')! * 1000 : undefined;
    const agentAfterInitMs =
      phase('guestAgentUptimeS') !== undefined && phase('guestInitUptimeS') !== undefined
        ? (phase('guestAgentUptimeS')! - phase('guestInitUptimeS')!) * 1000
        : undefined;
    const summary = {
      date: new Date().toISOString(),
      runs: n,
      machine: hv.machineType,
      medianMs: { floor: mf, kataRuntimeRun: mk, runcRun: mr },
      ratioKataToFloor: mk / mf,
      phasesMs: {
        qemuStarted: phase('vmRunningMs'),
        kernelReachedInitGuestUptime: initHostMs,
        agentReady: phase('agentReadyMs'),
        agentReadyAfterInitGuest: agentAfterInitMs,
        containerStarted: phase('containerStartedMs'),
        containerExited: phase('containerExitedMs'),
        teardownDone: phase('teardownDoneMs'),
      },
      samplesMs: { floor, kata, runc },
    };
    const out = [
      `cold sandbox path, medians of ${n} (${hv.machineType}, TCG)`,
      table([
        ['what', 'median'],
        ['(a) floor: QEMU boot to /init + poweroff', fmtMs(mf)],
        ['(b) kata-runtime run true (cold boot)', fmtMs(mk)],
        ['(c) runc run true', fmtMs(mr)],
        ['ratio (b)/(a)', (mk / mf).toFixed(2)],
      ]),
      '',
      'phase breakdown of (b), ms since start:',
      table([
        ['phase', 'median'],
        ['QEMU started (QMP answers)', fmtMs(summary.phasesMs.qemuStarted)],
        ['kernel reached /init (guest uptime)', fmtMs(initHostMs)],
        ['agent ready', fmtMs(summary.phasesMs.agentReady)],
        ['  agent ready after /init (guest clock)', fmtMs(agentAfterInitMs)],
        ['container started', fmtMs(summary.phasesMs.containerStarted)],
        ['container exited', fmtMs(summary.phasesMs.containerExited)],
        ['teardown done', fmtMs(summary.phasesMs.teardownDone)],
      ]),
    ].join('\n');
    process.stdout.write(out + '\n');
    writeResults('sandbox', summary, '```\n' + out + '\n```\n');
  } finally {
    spawnSync('sh', ['-c', `runc list -q | grep bench-runc-${process.pid} | xargs -r -n1 runc delete -f`]);
    rmSync(work, { recursive: true, force: true });
    cold.remove();
  }
}

await main();
