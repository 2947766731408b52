import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync, openSync, closeSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import type { Logger } from '../../base/logger.js';
import { probeAccel } from '../../hypervisor/accel.js';
import { defaultHypervisorConfig, type RuntimeConfig } from '../../runtime/config/index.js';
import { loadRuntimeConfig } from '../load-runtime-config.js';
import type { CommandDeps } from '../command-deps.js';

/**
 * `kata-runtime check`: Kata's host checks, adapted to kata-ts. The host may lack KVM (TCG still runs pods,
 * slowly) and vhost-vsock (the agent uses virtio-serial), so those are warnings; only what makes kata-ts unable
 * to run at all (no QEMU, no guest assets, a config that cannot load) fails the check.
 */

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'info';

export interface CheckResult {
  name: string;
  status: CheckStatus;
  detail: string;
  /** Extra lines shown with --verbose. */
  more?: string[];
}

export interface CheckReport {
  checks: CheckResult[];
  kvm: boolean;
  /** Nothing failed: kata-ts can run pods here. */
  capable: boolean;
  verdict: string;
  exitCode: number;
}

export interface CheckOptions {
  verbose?: boolean;
  strict?: boolean;
}

/** How long the KVM test guest may take (a working KVM needs well under a second; a broken one hangs). */
const KVM_PROBE_TIMEOUT_MS = 2_500;
const TCG_PROBE_TIMEOUT_MS = 15_000;
export const SHIM_BINARY = 'containerd-shim-kata-v2';

/** Runs `cmd --version` and returns its first line. */
export function versionOf(cmd: string, args: string[] = ['--version']): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 5_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      const first = `${stdout}\n${stderr}`.split('\n').map((l) => l.trim()).find((l) => l.length > 0);
      resolve(err && !first ? undefined : first);
    });
  });
}

export function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The first `name` on PATH (or in /usr/local/bin, which containerd puts first), without resolving links. */
export function findOnPath(name: string, pathEnv = process.env.PATH ?? ''): string | undefined {
  for (const dir of ['/usr/local/bin', ...pathEnv.split(delimiter)].filter(Boolean)) {
    const p = join(dir, name);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

/** This installation's bin/ (dist/src/cli/commands -> the package root). */
export function ownBinDir(): string {
  return fileURLToPath(new URL('../../../../bin/', import.meta.url));
}

/** The fields of the first processor in /proc/cpuinfo. */
export function parseCpuinfo(text: string): { vendor?: string; model?: string; flags: Set<string> } {
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const field = (k: string) => new RegExp(`^${k}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1]?.trim();
  return { vendor: field('vendor_id'), model: field('model name'), flags: new Set((field('flags') ?? '').split(/\s+/).filter(Boolean)) };
}

function moduleLoaded(name: string): boolean {
  return existsSync(join('/sys/module', name));
}

function moduleParam(name: string, param: string): string | undefined {
  try {
    return readFileSync(join('/sys/module', name, 'parameters', param), 'utf8').trim();
  } catch {
    return undefined;
  }
}

function cpuChecks(cpuinfo: string): CheckResult[] {
  const cpu = parseCpuinfo(cpuinfo);
  const out: CheckResult[] = [];
  const known = cpu.vendor === 'GenuineIntel' || cpu.vendor === 'AuthenticAMD';
  out.push({
    name: 'CPU vendor',
    status: known ? 'ok' : 'warn',
    detail: known ? `${cpu.vendor} (${cpu.model ?? 'unknown model'})` : `${cpu.vendor ?? 'unknown'}: Kata supports GenuineIntel and AuthenticAMD; TCG does not care`,
  });
  const virt = cpu.vendor === 'AuthenticAMD' ? 'svm' : 'vmx';
  out.push({
    name: `CPU flag ${virt}`,
    status: cpu.flags.has(virt) ? 'ok' : 'warn',
    detail: cpu.flags.has(virt) ? 'hardware virtualization is exposed' : 'absent: no hardware virtualization, KVM cannot work (TCG will)',
  });
  for (const flag of ['lm', 'sse4_1']) {
    out.push({
      name: `CPU flag ${flag}`,
      status: cpu.flags.has(flag) ? 'ok' : 'warn',
      detail: cpu.flags.has(flag) ? 'present' : 'absent: Kata requires it for KVM guests',
    });
  }
  if (cpu.flags.has('hypervisor')) {
    out.push({ name: 'nesting', status: 'info', detail: 'this host is itself a VM (nested virtualization: KVM, if any, is slower)' });
  }
  return out;
}

function moduleChecks(cpuinfo: string): CheckResult[] {
  const vendor = parseCpuinfo(cpuinfo).vendor;
  const backend = vendor === 'AuthenticAMD' ? 'kvm_amd' : 'kvm_intel';
  const modules: [string, string][] = [
    ['kvm', 'no KVM'],
    [backend, `no KVM backend for this ${vendor ?? ''} CPU: KVM cannot run guests`],
    ['vhost', 'no vhost: virtio devices are emulated in QEMU (slower)'],
    ['vhost_net', 'no vhost-net: QEMU moves network packets itself (slower)'],
    ['vhost_vsock', 'no vhost-vsock: the agent talks over virtio-serial (kata-ts does this already)'],
  ];
  const out: CheckResult[] = [];
  for (const [m, without] of modules) {
    const loaded = moduleLoaded(m);
    const more: string[] = [];
    if (loaded && (m === 'kvm_intel' || m === 'kvm_amd')) {
      for (const p of ['nested', 'unrestricted_guest']) {
        const v = moduleParam(m, p);
        if (v !== undefined) more.push(`${m}.${p} = ${v}`);
      }
      if (m === 'kvm_intel' && moduleParam(m, 'unrestricted_guest') === 'N') {
        out.push({ name: `kernel module ${m}`, status: 'warn', detail: 'loaded, but unrestricted_guest=N: Kata needs Y', more });
        continue;
      }
    }
    out.push({ name: `kernel module ${m}`, status: loaded ? 'ok' : 'warn', detail: loaded ? 'loaded' : `not loaded: ${without}`, more });
  }
  if (moduleLoaded('kvm_pvm')) {
    out.push({ name: 'kernel module kvm_pvm', status: 'info', detail: 'loaded: a KVM backend without hardware virtualization (PVM); the KVM probe below says whether it runs guests' });
  }
  return out;
}

function devKvmCheck(): { result: CheckResult; usable: boolean } {
  if (!existsSync('/dev/kvm')) return { result: { name: '/dev/kvm', status: 'warn', detail: 'absent: no KVM here, guests run under TCG' }, usable: false };
  try {
    closeSync(openSync('/dev/kvm', constants.O_RDWR));
    return { result: { name: '/dev/kvm', status: 'ok', detail: 'opens read-write' }, usable: true };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { result: { name: '/dev/kvm', status: 'warn', detail: `cannot open it (${code}${code === 'EBUSY' ? ': another hypervisor holds it' : ''})` }, usable: false };
  }
}

/** The guest asset manifest written by guest/build.sh next to the assets. */
export interface GuestManifest {
  hash?: string;
  [asset: string]: unknown;
}

export function readGuestManifest(assetDir: string): { path: string; manifest: GuestManifest } | undefined {
  const path = join(assetDir, 'kata-ts-guest.json');
  try {
    return { path, manifest: JSON.parse(readFileSync(path, 'utf8')) as GuestManifest };
  } catch {
    return undefined;
  }
}

/** The manifest's entry for an asset file, when the file is the one the manifest describes. */
export function manifestEntry(
  m: { path: string; manifest: GuestManifest } | undefined,
  assetPath: string,
): Record<string, unknown> | undefined {
  if (!m || dirname(m.path) !== dirname(assetPath)) return undefined;
  for (const v of Object.values(m.manifest)) {
    if (v && typeof v === 'object' && (v as { file?: unknown }).file === basename(assetPath)) return v as Record<string, unknown>;
  }
  return undefined;
}

function assetChecks(config: RuntimeConfig): CheckResult[] {
  const hv = config.hypervisor;
  const manifest = readGuestManifest(dirname(hv.kernel));
  const out: CheckResult[] = [];
  const assets: [string, string | undefined][] = [
    ['guest kernel', hv.kernel],
    ['guest initrd', hv.initrd],
    ['guest image', hv.image],
  ];
  for (const [name, path] of assets) {
    if (path === undefined) {
      out.push({ name, status: 'info', detail: 'not configured' });
      continue;
    }
    let size: number;
    try {
      accessSync(path, constants.R_OK);
      size = statSync(path).size;
    } catch (err) {
      out.push({ name, status: 'fail', detail: `${path}: ${(err as NodeJS.ErrnoException).code ?? 'unreadable'} (scripts/setup.sh builds the guest assets)` });
      continue;
    }
    const entry = manifestEntry(manifest, path);
    if (entry && typeof entry.size === 'number' && entry.size !== size) {
      out.push({ name, status: 'warn', detail: `${path}: ${size} bytes, but kata-ts-guest.json says ${entry.size}: rebuild the guest` });
      continue;
    }
    const more = entry ? [`sha256 ${String(entry.sha256)} (from ${manifest!.path})`] : [];
    out.push({ name, status: 'ok', detail: `${path} (${(size / 1024 / 1024).toFixed(1)} MiB${entry ? ', matches kata-ts-guest.json' : ''})`, more });
  }
  out.push(
    manifest
      ? { name: 'guest manifest', status: 'ok', detail: `${manifest.path} (hash ${String(manifest.manifest.hash ?? '?').slice(0, 12)})` }
      : { name: 'guest manifest', status: 'warn', detail: `no kata-ts-guest.json in ${dirname(hv.kernel)}: assets were not built by guest/build.sh` },
  );
  return out;
}

/** Gathers every check. `log` receives the details of config loading. */
export async function runChecks(configPath: string | undefined, opts: CheckOptions, log: Logger): Promise<CheckReport> {
  const checks: CheckResult[] = [];
  let config: RuntimeConfig | undefined;
  try {
    config = await loadRuntimeConfig(configPath, log);
    checks.push({ name: 'configuration', status: 'ok', detail: config.sourcePath });
  } catch (err) {
    checks.push({ name: 'configuration', status: 'fail', detail: (err as Error).message });
  }
  const hv = config?.hypervisor ?? defaultHypervisorConfig();

  const cpuinfo = (() => {
    try {
      return readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return '';
    }
  })();
  checks.push(...cpuChecks(cpuinfo), ...moduleChecks(cpuinfo));

  // The hypervisor binary, then whether it really runs a guest with each accelerator.
  const qemuOk = isExecutable(hv.path);
  const qemuVersion = qemuOk ? await versionOf(hv.path) : undefined;
  checks.push(
    qemuOk
      ? { name: 'QEMU', status: 'ok', detail: `${hv.path}: ${qemuVersion ?? 'version unknown'}` }
      : { name: 'QEMU', status: 'fail', detail: `${hv.path} is missing or not executable (apt-get install qemu-system-x86)` },
  );
  const dev = devKvmCheck();
  checks.push(dev.result);
  let kvm = false;
  if (dev.usable && qemuOk) {
    const r = await probeAccel(hv.path, 'kvm', KVM_PROBE_TIMEOUT_MS);
    kvm = r.ok;
    checks.push({ name: 'KVM runs a guest', status: r.ok ? 'ok' : 'warn', detail: r.ok ? r.detail : `no: ${r.detail}` });
  } else {
    checks.push({ name: 'KVM runs a guest', status: 'warn', detail: dev.usable ? 'not tried: no QEMU' : 'not tried: /dev/kvm is not usable' });
  }
  if (qemuOk) {
    const r = await probeAccel(hv.path, 'tcg', TCG_PROBE_TIMEOUT_MS);
    checks.push({ name: 'TCG runs a guest', status: r.ok ? 'ok' : kvm ? 'warn' : 'fail', detail: r.detail });
  }
  if (config) {
    const accel = config.hypervisor.accel;
    if (accel === 'kvm' && !kvm) checks.push({ name: 'accelerator', status: 'fail', detail: 'accel = "kvm" in the configuration, but KVM does not work here (use "auto")' });
    else checks.push({ name: 'accelerator', status: 'ok', detail: `accel = "${accel}": guests will use ${accel === 'tcg' || !kvm ? 'TCG' : 'KVM'}` });
  }

  if (config) {
    checks.push(...assetChecks(config));
    if (hv.sharedFs === 'virtio-fs') {
      const ok = isExecutable(hv.virtioFsDaemon);
      const v = ok ? await versionOf(hv.virtioFsDaemon) : undefined;
      checks.push(
        ok
          ? { name: 'virtiofsd', status: 'ok', detail: `${hv.virtioFsDaemon}: ${v ?? 'version unknown'}` }
          : { name: 'virtiofsd', status: 'fail', detail: `${hv.virtioFsDaemon} is missing (shared_fs = "virtio-fs" needs it; or use "virtio-9p")` },
      );
    } else {
      checks.push({ name: 'virtiofsd', status: 'info', detail: `not needed (shared_fs = "${hv.sharedFs}")` });
    }
    const channel = config.agent.agentChannel;
    checks.push(
      channel === 'vsock'
        ? { name: 'agent channel', status: 'fail', detail: 'agent_channel = "vsock" is not implemented by kata-ts (use "auto")' }
        : { name: 'agent channel', status: 'ok', detail: `agent_channel = "${channel}": virtio-serial` },
    );
  }

  // containerd finds the shim by name on its PATH.
  const shim = findOnPath(SHIM_BINARY);
  if (!shim) {
    checks.push({ name: 'containerd shim', status: 'warn', detail: `${SHIM_BINARY} is not on PATH: containerd cannot start kata-ts pods (kata-runtime run works)` });
  } else {
    const target = realpathSync(shim);
    const ours = dirname(target) === realpathSync(ownBinDir()).replace(/\/$/, '');
    checks.push({
      name: 'containerd shim',
      status: ours ? 'ok' : 'warn',
      detail: ours ? `${shim}${target !== shim ? ` -> ${target}` : ''}` : `${shim} -> ${target}: another kata-ts installation than this kata-runtime (${ownBinDir()})`,
    });
  }
  const ctd = findOnPath('containerd');
  checks.push({ name: 'containerd', status: 'info', detail: ctd ? `${ctd}: ${(await versionOf(ctd)) ?? 'version unknown'}` : 'not installed' });
  const root = process.geteuid?.() === 0;
  checks.push({ name: 'privileges', status: root ? 'ok' : 'warn', detail: root ? 'running as root' : 'not root: creating sandboxes needs root' });

  const failed = checks.filter((c) => c.status === 'fail');
  const capable = failed.length === 0;
  let verdict: string;
  let exitCode = 0;
  if (!capable) {
    verdict = `System is NOT capable of running kata-ts: ${failed.map((c) => c.name).join(', ')} failed`;
    exitCode = 1;
  } else {
    verdict = kvm ? 'System is capable of running kata-ts with KVM' : 'System is capable of running kata-ts (TCG: slow, no KVM)';
    if (opts.strict && !kvm) {
      verdict += '\n--strict: KVM is required, and it does not work here';
      exitCode = 1;
    } else if (root) {
      verdict += '\nSystem can currently create kata-ts sandboxes';
    }
  }
  return { checks, kvm, capable, verdict, exitCode };
}

export function formatReport(r: CheckReport, opts: CheckOptions): string[] {
  const out: string[] = [];
  for (const c of r.checks) {
    out.push(`${`[${c.status}]`.padEnd(7)}${c.name}: ${c.detail}`);
    if (opts.verbose) for (const m of c.more ?? []) out.push(`       ${m}`);
  }
  out.push('', ...r.verdict.split('\n'));
  return out;
}

export function registerCheckCommand(
  program: Command,
  deps: CommandDeps,
): void {
  program
    .command('check')
    .alias('kata-check')
    .description('check that this host can run kata-ts (CPU, kernel modules, KVM, QEMU, guest assets, shim)')
    .option('-v, --verbose', 'show more detail per check')
    .option('-s, --strict', 'fail also when KVM does not work (TCG only)')
    .action(async (o: CheckOptions) => {
      const report = await runChecks(deps.configPath(), o, deps.log());
      for (const line of formatReport(report, o)) process.stdout.write(line + '\n');
      deps.setResult(report.exitCode);
    });
}
