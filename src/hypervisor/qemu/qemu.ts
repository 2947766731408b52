/**
 * The QEMU driver (facade + lifecycle). Command line: cmdline.ts; process: qemu-process.ts; hotplug: hotplug.ts;
 * the VMM's protocol client: protocol/qmp.
 *
 * Contract of one instance: start() once; then pause/resume/saveState/addDevice/removeDevice while QEMU runs;
 * stop() or kill() end QEMU; wait() resolves with its exit whenever that happens (also when the guest powers
 * off); cleanup() kills if needed and removes everything on the host. Illegal calls fail with
 * FailedPrecondition ("cannot pause vm in state exited").
 */
import fs from 'node:fs';
import path from 'node:path';
import { CleanupStack } from '../../base/cleanup.js';
import { KataError, errors, isKind, wrapError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import { QmpClient } from '../../protocol/qmp/qmp-client.js';
import { hostTscKhz } from '../accel.js';
import type { Hypervisor, HypervisorFactory, VmConfig, VmDevice, VmExit } from '../hypervisor.js';
import {
  buildQemuArgs,
  hotplugPortIds,
  passedFdPaths,
  qemuPaths,
  supportsHotplug,
  validateDevice,
  type QemuArgsOptions,
  type QemuPaths,
} from './cmdline.js';
import { canHotplug, hotplugUnsupported, plugDevice, unplugDevice } from './hotplug.js';
import { QemuProcess } from './qemu-process.js';

export type QemuState =
  | 'created'
  | 'starting'
  /** Guest vCPUs run. */
  | 'running'
  /** QEMU is up, vCPUs stopped (pause(), a clone waiting for resume(), after saveState()). */
  | 'paused'
  | 'stopping'
  /** QEMU has exited (stop, kill, guest poweroff, crash). */
  | 'exited'
  /** start() failed; everything it made is gone. */
  | 'failed'
  | 'cleaned';

export interface QemuDriverOptions extends QemuArgsOptions {
  /** util-linux nsenter, used when `netnsPath` is set. */
  nsenterPath?: string;
  /** stop(): how long the guest gets to power off after ACPI `system_powerdown` before `quit` (default 0: skip). */
  powerdownGraceMs?: number;
  /** Timeout of single QMP commands (default 10 s). */
  qmpTimeoutMs?: number;
  /** saveState(): how long the migration may take (default 120 s). */
  saveTimeoutMs?: number;
  /** removeDevice(): how long the guest may take to release a device (default 10 s). */
  unplugTimeoutMs?: number;
}

interface PluggedDevice {
  device: VmDevice;
  /** q35 root port holding a hot-plugged device. */
  port?: string;
}

const CONSOLE_TAIL_BYTES = 64 * 1024;
const QEMU_LOG_TAIL_BYTES = 4 * 1024;
const POLL_MS = 10;

export class Qemu implements Hypervisor {
  readonly kind = 'qemu' as const;
  readonly paths: QemuPaths;
  private readonly log: Logger;
  private stateValue: QemuState = 'created';
  private proc: QemuProcess | undefined;
  private qmpClient: QmpClient | undefined;
  private readonly exitPromise: Promise<VmExit>;
  private resolveExit!: (e: VmExit) => void;
  private readonly devices = new Map<string, PluggedDevice>();
  private readonly freePorts: string[];

  constructor(
    private readonly config: VmConfig,
    log: Logger,
    private readonly opts: QemuDriverOptions = {},
  ) {
    this.log = log.child({ subsystem: 'qemu', sandboxId: config.sandboxId });
    this.paths = qemuPaths(config.vmDir);
    this.exitPromise = new Promise<VmExit>((resolve) => (this.resolveExit = resolve));
    for (const d of config.devices) this.devices.set(d.id, { device: d });
    this.freePorts = hotplugPortIds(config, opts);
  }

  get state(): QemuState {
    return this.stateValue;
  }

  /** The live QMP connection (diagnostics and tests); undefined unless QEMU runs. */
  get qmp(): QmpClient | undefined {
    return this.qmpClient && !this.qmpClient.closed ? this.qmpClient : undefined;
  }

  async start(opts: { timeoutMs: number; signal?: AbortSignal }): Promise<void> {
    this.requireState('start', ['created']);
    // Validate before touching the host.
    const args = buildQemuArgs(this.config, this.opts);
    if (this.config.incomingStatePath !== undefined) checkStateFile(this.config.incomingStatePath);
    this.stateValue = 'starting';
    const t0 = Date.now();
    const undo = new CleanupStack(this.log);
    const ac = new AbortController();
    let why: 'timeout' | 'cancelled' | 'exited' | undefined;
    const abort = (reason: typeof why) => {
      if (!why) why = reason;
      ac.abort();
    };
    const timer = setTimeout(() => abort('timeout'), opts.timeoutMs);
    const onUserAbort = () => abort('cancelled');
    if (opts.signal?.aborted) abort('cancelled');
    opts.signal?.addEventListener('abort', onUserAbort, { once: true });

    try {
      this.prepareVmDir(undo);
      const proc = new QemuProcess({
        binary: this.config.hypervisorPath,
        args,
        logPath: this.paths.qemuLog,
        netnsPath: this.config.netnsPath,
        nsenterPath: this.opts.nsenterPath,
        passFdPaths: passedFdPaths(this.config),
      });
      this.proc = proc;
      undo.push('kill qemu', async () => {
        await proc.kill();
      });
      void proc.exit.then((e) => this.onExit(e));
      void proc.exit.then(() => abort('exited'));
      this.log.debug({ pid: proc.pid, args }, 'qemu spawned');

      const qmp = await QmpClient.connect(this.paths.qmpSocket, {
        timeoutMs: Math.max(1, opts.timeoutMs - (Date.now() - t0)),
        signal: ac.signal,
        log: this.log,
      });
      this.qmpClient = qmp;
      undo.push('close qmp', () => qmp.close());
      qmp.on('event', (ev) => this.onQmpEvent(ev.event, ev.data));

      const cmd = { timeoutMs: Math.max(1, opts.timeoutMs - (Date.now() - t0)), signal: ac.signal };
      if (this.config.incomingStatePath !== undefined) {
        await this.loadIncomingState(qmp, this.config.incomingStatePath, cmd.signal);
        this.stateValue = 'paused';
      } else {
        const st = await qmp.execute<{ status: string }>('query-status', undefined, cmd);
        this.stateValue = st.status === 'running' ? 'running' : 'paused';
      }
      if (ac.signal.aborted) throw errors.cancelled('KATA_CANCELLED', 'aborted');
      this.log.info({ pid: proc.pid, ms: Date.now() - t0, state: this.stateValue }, 'qemu started');
    } catch (err) {
      // QMP often notices first (QEMU opens its socket, then fails on e.g. the kernel file): give the exit a
      // moment to arrive so that the error carries QEMU's own words.
      if (this.proc && !this.proc.exited && isKind(err, 'Unavailable')) await raceTimeout(this.proc.exit, 2000);
      const failure = await this.startFailure(err, why, opts.timeoutMs);
      await undo.run();
      this.qmpClient = undefined;
      this.stateValue = 'failed';
      this.log.warn({ err: failure }, 'qemu start failed');
      throw failure;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onUserAbort);
    }
  }

  async stop(opts: { timeoutMs: number }): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exited) return;
    if (this.stateValue === 'starting') {
      await this.kill();
      return;
    }
    const deadline = Date.now() + opts.timeoutMs;
    const remaining = () => Math.max(1, deadline - Date.now());
    this.stateValue = 'stopping';
    const qmp = this.qmp;
    const grace = Math.min(this.opts.powerdownGraceMs ?? 0, opts.timeoutMs);
    if (qmp && grace > 0) {
      try {
        await qmp.execute('system_powerdown', undefined, { timeoutMs: remaining() });
        await raceTimeout(proc.exit, grace);
      } catch (err) {
        this.log.debug({ err }, 'system_powerdown failed');
      }
    }
    if (!proc.exited && qmp) {
      // The reply to `quit` races with the connection closing; either means QEMU is on its way out.
      await qmp.execute('quit', undefined, { timeoutMs: remaining() }).catch(() => undefined);
      await raceTimeout(proc.exit, remaining());
    }
    if (!proc.exited) {
      this.log.warn({ pid: proc.pid, timeoutMs: opts.timeoutMs }, 'qemu did not quit in time; SIGKILL');
      await proc.kill();
    }
    await proc.exit;
  }

  async kill(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    await proc.kill();
  }

  wait(): Promise<VmExit> {
    return this.exitPromise;
  }

  async pause(): Promise<void> {
    this.requireState('pause', ['running', 'paused']);
    if (this.stateValue === 'paused') return;
    await this.requireQmp('pause').execute('stop', undefined, this.cmdOpts());
    this.stateValue = 'paused';
  }

  async resume(): Promise<void> {
    this.requireState('resume', ['running', 'paused']);
    if (this.stateValue === 'running') return;
    await this.requireQmp('resume').execute('cont', undefined, this.cmdOpts());
    this.stateValue = 'running';
  }

  /**
   * Saves the device state to `statePath` and leaves the VM paused. With a file memory backend, guest RAM is
   * not written (`x-ignore-shared`): it is already in the file. Otherwise the state file holds all RAM.
   */
  async saveState(statePath: string): Promise<void> {
    this.requireState('save state of', ['running', 'paused']);
    if (!path.isAbsolute(statePath)) throw errors.invalid('KATA_VM_CONFIG_INVALID', `state path must be absolute: ${statePath}`);
    const qmp = this.requireQmp('save state of');
    const t0 = Date.now();
    try {
      await qmp.execute(
        'migrate-set-capabilities',
        { capabilities: [{ capability: 'x-ignore-shared', state: this.ignoresSharedMemory() }] },
        this.cmdOpts(),
      );
      if (this.stateValue === 'running') {
        await qmp.execute('stop', undefined, this.cmdOpts());
        this.stateValue = 'paused';
      }
      await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` }, this.cmdOpts());
      const timeoutMs = this.opts.saveTimeoutMs ?? 120_000;
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate', undefined, this.cmdOpts());
        if (m.status === 'completed') break;
        if (m.status === 'failed' || m.status === 'cancelled') {
          throw errors.internal('KATA_VM_SAVE_FAILED', `migration ${m.status}: ${m['error-desc'] ?? 'no detail'}`);
        }
        if (Date.now() > deadline) {
          await qmp.execute('migrate_cancel', undefined, this.cmdOpts()).catch(() => undefined);
          throw errors.deadline('KATA_VM_SAVE_TIMEOUT', `migration not completed within ${timeoutMs} ms (${m.status})`);
        }
        await delay(POLL_MS);
      }
    } catch (err) {
      throw wrapError(`save vm state to ${statePath}`, err);
    }
    this.log.info({ statePath, ms: Date.now() - t0 }, 'vm state saved');
  }

  async addDevice(device: VmDevice): Promise<void> {
    if (!supportsHotplug(this.config.machineType)) throw hotplugUnsupported(this.config.machineType);
    this.requireState('add a device to', ['running', 'paused']);
    validateDevice(this.config, device);
    if (this.devices.has(device.id)) {
      throw new KataError('AlreadyExists', 'KATA_DEVICE_EXISTS', `device ${device.id} is already plugged`);
    }
    if (!canHotplug(device)) {
      throw errors.notImplemented('KATA_HOTPLUG_UNSUPPORTED', `hotplug of ${device.kind} devices is not implemented`);
    }
    let port: string | undefined;
    if (this.config.machineType === 'q35') {
      port = this.freePorts.shift();
      if (!port) throw errors.exhausted('KATA_HOTPLUG_NO_PORT', `no free PCIe root port for ${device.id}`);
    }
    try {
      await plugDevice(this.requireQmp('add a device to'), this.config.machineType, device, port, this.log);
    } catch (err) {
      if (port) this.freePorts.unshift(port);
      throw wrapError(`hotplug ${device.kind} ${device.id}`, err);
    }
    this.devices.set(device.id, { device, port });
    this.log.info({ id: device.id, kind: device.kind, port }, 'device hot-plugged');
  }

  async removeDevice(id: string): Promise<void> {
    if (!supportsHotplug(this.config.machineType)) throw hotplugUnsupported(this.config.machineType);
    this.requireState('remove a device from', ['running', 'paused']);
    const plugged = this.devices.get(id);
    if (!plugged) throw errors.notFound('KATA_DEVICE_NOT_FOUND', `no device ${id}`);
    try {
      await unplugDevice(this.requireQmp('remove a device from'), plugged.device, this.opts.unplugTimeoutMs ?? 10_000);
    } catch (err) {
      throw wrapError(`hot-unplug ${plugged.device.kind} ${id}`, err);
    }
    this.devices.delete(id);
    if (plugged.port) this.freePorts.push(plugged.port);
    this.log.info({ id }, 'device hot-unplugged');
  }

  pids(): number[] {
    const p = this.proc;
    return p && !p.exited && p.pid !== undefined ? [p.pid] : [];
  }

  async consoleTail(lines: number): Promise<string[]> {
    return tailLines(this.paths.consoleLog, lines, CONSOLE_TAIL_BYTES);
  }

  async cleanup(): Promise<void> {
    if (this.stateValue === 'cleaned') return;
    await this.kill();
    this.qmpClient?.close();
    this.qmpClient = undefined;
    this.removeHostFiles();
    this.stateValue = 'cleaned';
  }

  // --- internals -------------------------------------------------------------------------------------------

  private requireState(what: string, allowed: QemuState[]): void {
    if (!allowed.includes(this.stateValue)) {
      throw errors.precondition('KATA_VM_BAD_STATE', `cannot ${what} vm in state ${this.stateValue}`);
    }
  }

  private requireQmp(what: string): QmpClient {
    const q = this.qmp;
    if (!q) throw errors.unavailable('KATA_QMP_DISCONNECTED', `cannot ${what} vm: no QMP connection`);
    return q;
  }

  private cmdOpts(): { timeoutMs: number } {
    return { timeoutMs: this.opts.qmpTimeoutMs ?? 10_000 };
  }

  /** Template and clones share RAM through a file: only then is RAM left out of the state (both sides agree). */
  private ignoresSharedMemory(): boolean {
    return this.config.memoryBackend.kind === 'file';
  }

  private prepareVmDir(undo: CleanupStack): void {
    const created = !fs.existsSync(this.config.vmDir);
    fs.mkdirSync(this.config.vmDir, { recursive: true, mode: 0o700 });
    fs.chmodSync(this.config.vmDir, 0o700);
    // A failed start removes only what it made: other components (virtiofsd) may keep sockets in vmDir too.
    undo.push('remove qemu files', () => {
      this.removeOwnFiles();
      if (created) {
        try {
          fs.rmdirSync(this.config.vmDir);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code !== 'ENOENT' && code !== 'ENOTEMPTY') throw err;
        }
      }
    });
    // Leftovers of an earlier run would confuse QMP connect or the error report.
    this.removeOwnFiles();
  }

  private ownFiles(): string[] {
    const files = [this.paths.qmpSocket, this.paths.consoleLog, this.paths.qemuLog, this.paths.pidFile];
    const ch = this.config.agentChannel;
    if (ch.kind === 'virtio-serial') files.push(ch.socketPath);
    return files;
  }

  private removeOwnFiles(): void {
    for (const f of this.ownFiles()) fs.rmSync(f, { force: true });
  }

  /** The final teardown: vmDir and everything in it, plus the agent socket when the caller put it elsewhere. */
  private removeHostFiles(): void {
    fs.rmSync(this.config.vmDir, { recursive: true, force: true });
    this.removeOwnFiles();
  }

  /** Clone: load the template's device state into the paused VM (PLATFORM.md, templates). */
  private async loadIncomingState(qmp: QmpClient, statePath: string, signal: AbortSignal): Promise<void> {
    const o = { ...this.cmdOpts(), signal };
    await qmp.execute(
      'migrate-set-capabilities',
      { capabilities: [{ capability: 'x-ignore-shared', state: this.ignoresSharedMemory() }] },
      o,
    );
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` }, o);
    for (;;) {
      const st = await qmp.execute<{ status: string }>('query-status', undefined, o);
      if (st.status !== 'inmigrate') {
        if (st.status !== 'paused' && st.status !== 'prelaunch') {
          throw errors.internal('KATA_VM_RESTORE_FAILED', `unexpected status ${st.status} after loading ${statePath}`);
        }
        return;
      }
      await delay(POLL_MS);
    }
  }

  private async startFailure(err: unknown, why: string | undefined, timeoutMs: number): Promise<KataError> {
    const proc = this.proc;
    if (proc?.exited || why === 'exited' || (!proc && !(err instanceof KataError))) {
      const exit = proc?.exitStatus;
      const status = proc?.spawnError
        ? `could not run ${this.config.hypervisorPath}: ${proc.spawnError.message}`
        : exit
          ? `qemu exited during start (${exit.code !== null ? `status ${exit.code}` : `signal ${exit.signal}`})`
          : `qemu start failed: ${(err as Error).message}`;
      const stderr = (await tailLines(this.paths.qemuLog, 20, QEMU_LOG_TAIL_BYTES)).join('\n').trim();
      const consoleLines = await this.consoleTail(10);
      let msg = `start vm: ${status}`;
      if (stderr) msg += `; qemu said: ${stderr}`;
      if (consoleLines.length > 0) msg += `; console: ${consoleLines.join(' | ')}`;
      return errors.unavailable('KATA_VM_START_FAILED', msg, err);
    }
    if (why === 'timeout' || isKind(err, 'DeadlineExceeded')) {
      return errors.deadline('KATA_VM_START_TIMEOUT', `start vm: not ready within ${timeoutMs} ms`, err);
    }
    if (why === 'cancelled') return errors.cancelled('KATA_CANCELLED', 'start vm: cancelled', err);
    return wrapError('start vm', err);
  }

  private onExit(e: VmExit): void {
    if (this.stateValue !== 'failed' && this.stateValue !== 'cleaned') this.stateValue = 'exited';
    this.qmpClient?.close();
    this.log.info({ code: e.code, signal: e.signal }, 'qemu exited');
    this.resolveExit(e);
  }

  private onQmpEvent(name: string, data: Record<string, unknown> | undefined): void {
    this.log.debug({ event: name, data }, 'qmp event');
    if (name === 'STOP' && this.stateValue === 'running') this.stateValue = 'paused';
    else if (name === 'RESUME' && this.stateValue === 'paused') this.stateValue = 'running';
  }
}

export const qemuFactory: HypervisorFactory = {
  create(config: VmConfig, log: Logger): Hypervisor {
    return new Qemu(config, log, { tscKhz: hostTscKhz() });
  },
};

/**
 * QEMU 7.2 waits forever in `inmigrate` when the incoming stream is empty (missing file: `cat` fails, QEMU
 * sees EOF before any byte), so a missing or empty state file is caught here.
 */
function checkStateFile(statePath: string): void {
  let size: number;
  try {
    fs.accessSync(statePath, fs.constants.R_OK);
    size = fs.statSync(statePath).size;
  } catch (err) {
    throw errors.notFound('KATA_VM_STATE_NOT_FOUND', `start vm: cannot read state file ${statePath}`, err);
  }
  if (size === 0) throw errors.invalid('KATA_VM_STATE_INVALID', `start vm: state file ${statePath} is empty`);
}

/** Quotes for /bin/sh: QEMU runs `exec:` migration URIs through the shell. */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Resolves when `p` settles or after `ms`, whichever comes first (never rejects). */
async function raceTimeout(p: Promise<unknown>, ms: number): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise<void>((r) => (t = setTimeout(r, ms)))]);
  clearTimeout(t);
}

/** The last `n` lines of a file, reading at most `maxBytes` from its end; [] when it does not exist. */
export async function tailLines(file: string, n: number, maxBytes: number): Promise<string[]> {
  if (n <= 0) return [];
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(file, 'r');
  } catch {
    return [];
  }
  try {
    const { size } = await fh.stat();
    const len = Math.min(size, maxBytes);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const lines = buf.toString('utf8').replaceAll('\r', '').split('\n');
    if (lines.at(-1) === '') lines.pop();
    if (len < size) lines.shift(); // probably cut in the middle
    return lines.slice(-n);
  } finally {
    await fh.close();
  }
}
