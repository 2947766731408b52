/**
 * Which accelerator really works here. `/dev/kvm` existing proves nothing (on this platform it exists and a KVM
 * guest hangs), so the probe boots a 7-byte real-mode program under `-accel kvm` and checks that it exits
 * through isa-debug-exit with the expected code. The verdict is cached per QEMU binary and host kernel.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../base/logger.js';
import type { Accelerator } from './hypervisor.js';

export type AccelSetting = 'auto' | Accelerator;

export interface AccelVerdict {
  accel: Accelerator;
  /** Why: "configured", "KVM ran a test guest in 140 ms", "KVM unusable: ...". */
  reason: string;
  source: 'config' | 'probe' | 'cache';
}

export interface DetectAccelOptions {
  qemuPath: string;
  log: Logger;
  /** Where verdicts are cached (default /run/kata-ts). */
  cacheDir?: string;
  /** How long the test guest may take (default 2500 ms; a working KVM needs well under 1 s). */
  probeTimeoutMs?: number;
  /** Default /dev/kvm. */
  kvmDevice?: string;
}

export interface ProbeResult {
  ok: boolean;
  /** What happened, for logs and the cache. */
  detail: string;
  elapsedMs: number;
}

export const DEFAULT_ACCEL_CACHE_DIR = '/run/kata-ts';
const DEFAULT_PROBE_TIMEOUT_MS = 2500;
/** The value the test program writes to port 0xf4; isa-debug-exit turns it into exit status (v << 1) | 1. */
const PROBE_EXIT_VALUE = 0x2a;
export const PROBE_EXPECTED_STATUS = (PROBE_EXIT_VALUE << 1) | 1;

/**
 * A 512-byte MBR: `mov al, 0x2a; out 0xf4, al; hlt; jmp $-1`, then the 0x55AA boot signature. The BIOS loads
 * it at 0x7c00 in real mode; isa-debug-exit at port 0xf4 ends QEMU with status 85.
 */
export function probeBootSector(): Buffer {
  const code = [0xb0, PROBE_EXIT_VALUE, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd];
  const mbr = Buffer.alloc(512);
  Buffer.from(code).copy(mbr, 0);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  return mbr;
}

/** Boots the probe program with `accel` and reports whether it exited as expected within `timeoutMs`. */
export async function probeAccel(qemuPath: string, accel: Accelerator, timeoutMs: number): Promise<ProbeResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kata-accel-'));
  const t0 = Date.now();
  try {
    const img = path.join(dir, 'probe.img');
    fs.writeFileSync(img, probeBootSector());
    const args = [
      '-M', 'pc', '-accel', accel, '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-m', '16',
      '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04',
      '-drive', `format=raw,if=ide,file=${img.replaceAll(',', ',,')}`,
    ];
    const r = await runWithTimeout(qemuPath, args, timeoutMs);
    const elapsedMs = Date.now() - t0;
    if (r.spawnError) return { ok: false, detail: `cannot run ${qemuPath}: ${r.spawnError}`, elapsedMs };
    if (r.timedOut) return { ok: false, detail: `test guest did not finish within ${timeoutMs} ms (killed)`, elapsedMs };
    if (r.code === PROBE_EXPECTED_STATUS) return { ok: true, detail: `test guest ran in ${elapsedMs} ms`, elapsedMs };
    const why = r.stderr.trim().split('\n').slice(-2).join(' | ');
    return {
      ok: false,
      detail: `test guest ended with ${r.code === null ? `signal ${r.signal}` : `status ${r.code}`} (want ${PROBE_EXPECTED_STATUS})${why ? `: ${why}` : ''}`,
      elapsedMs,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  timedOut: boolean;
  spawnError?: string;
}

function runWithTimeout(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    // Own process group, so that the kill on timeout takes anything the binary started with it.
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    let timedOut = false;
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stderr, timedOut: false, spawnError: err.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, timedOut });
    });
  });
}

function killGroup(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/** Cache key: the QEMU binary (path, size, mtime) and the host kernel (release and build). */
export function accelCacheKey(qemuPath: string): string {
  let stamp = 'missing';
  try {
    const st = fs.statSync(qemuPath);
    stamp = `${fs.realpathSync(qemuPath)}:${st.size}:${st.mtimeMs}`;
  } catch {
    /* the probe will report it */
  }
  return createHash('sha256').update(JSON.stringify([qemuPath, stamp, os.release(), os.version()])).digest('hex').slice(0, 24);
}

interface CacheEntry {
  key: string;
  accel: Accelerator;
  reason: string;
  qemuPath: string;
  kernel: string;
  at: string;
}

function readCache(file: string, key: string): CacheEntry | undefined {
  try {
    const e = JSON.parse(fs.readFileSync(file, 'utf8')) as CacheEntry;
    if (e.key === key && (e.accel === 'kvm' || e.accel === 'tcg')) return e;
  } catch {
    /* absent or corrupt: probe again */
  }
  return undefined;
}

function writeCache(file: string, entry: CacheEntry): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(entry));
  fs.renameSync(tmp, file);
}

/**
 * Decides the accelerator. `kvm`/`tcg` are taken as configured; `auto` uses KVM only if a KVM guest really runs
 * (cached), else TCG with a warning.
 */
export async function detectAccel(setting: AccelSetting, opts: DetectAccelOptions): Promise<AccelVerdict> {
  const log = opts.log.child({ subsystem: 'accel' });
  if (setting === 'kvm' || setting === 'tcg') return { accel: setting, reason: 'configured', source: 'config' };

  const key = accelCacheKey(opts.qemuPath);
  const cacheFile = path.join(opts.cacheDir ?? DEFAULT_ACCEL_CACHE_DIR, `accel-${key}.json`);
  const cached = readCache(cacheFile, key);
  let verdict: AccelVerdict;
  if (cached) {
    verdict = { accel: cached.accel, reason: cached.reason, source: 'cache' };
  } else {
    verdict = { ...(await probeKvm(opts)), source: 'probe' };
    try {
      writeCache(cacheFile, {
        key,
        accel: verdict.accel,
        reason: verdict.reason,
        qemuPath: opts.qemuPath,
        kernel: `${os.release()} ${os.version()}`,
        at: new Date().toISOString(),
      });
    } catch (err) {
      log.debug({ err, cacheFile }, 'cannot cache the accelerator verdict');
    }
  }
  if (verdict.accel === 'tcg') log.warn({ reason: verdict.reason, source: verdict.source }, `${verdict.reason}; falling back to TCG (slow)`);
  else log.info({ reason: verdict.reason, source: verdict.source }, 'using KVM');
  return verdict;
}

async function probeKvm(opts: DetectAccelOptions): Promise<Omit<AccelVerdict, 'source'>> {
  const dev = opts.kvmDevice ?? '/dev/kvm';
  try {
    fs.accessSync(dev, fs.constants.R_OK | fs.constants.W_OK);
  } catch (err) {
    return { accel: 'tcg', reason: `KVM unusable: ${dev}: ${(err as NodeJS.ErrnoException).code ?? String(err)}` };
  }
  const r = await probeAccel(opts.qemuPath, 'kvm', opts.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS);
  return r.ok ? { accel: 'kvm', reason: `KVM works: ${r.detail}` } : { accel: 'tcg', reason: `KVM unusable: ${r.detail}` };
}

/**
 * Host TSC frequency in kHz, for the guest's `tsc_early_khz=`. Prefers the exact sysfs value (present on some
 * kernels), else `cpu MHz` of /proc/cpuinfo, which is the calibrated TSC on constant-TSC hosts. Undefined when
 * neither is readable.
 */
export function hostTscKhz(
  src: { sysfsPath?: string; cpuinfoPath?: string } = {},
): number | undefined {
  const sysfs = src.sysfsPath ?? '/sys/devices/system/cpu/cpu0/tsc_freq_khz';
  try {
    const v = parseInt(fs.readFileSync(sysfs, 'utf8').trim(), 10);
    if (Number.isFinite(v) && v > 0) return v;
  } catch {
    /* not exposed by this kernel */
  }
  try {
    const text = fs.readFileSync(src.cpuinfoPath ?? '/proc/cpuinfo', 'utf8');
    const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(text);
    if (m) {
      const khz = Math.round(parseFloat(m[1]!) * 1000);
      if (Number.isFinite(khz) && khz > 0) return khz;
    }
  } catch {
    /* no procfs */
  }
  return undefined;
}
