import type { Logger } from '../base/logger.js';

/**
 * The whole hypervisor contract. QEMU implements it for real; Firecracker and Cloud Hypervisor drivers
 * implement the same interface. Drivers never grow methods of their own on it.
 */

export type Accelerator = 'kvm' | 'tcg';

/** Devices that may be attached at boot (cold plug) or, where the machine allows, hot-plugged. */
export type VmDevice =
  | { kind: 'virtio-fs'; id: string; socketPath: string; tag: string; queueSize?: number }
  | { kind: '9p'; id: string; hostPath: string; tag: string; readonly?: boolean }
  | { kind: 'block'; id: string; path: string; readonly: boolean; format?: 'raw' }
  /**
   * A tap: by name (`ifname`, QEMU opens it; tc-filter) or by a character device QEMU gets as an open fd
   * (`fdPath`, e.g. a macvtap's /dev/tapN node; the driver opens it and passes the descriptor).
   */
  | { kind: 'net-tap'; id: string; ifname?: string; fdPath?: string; mac: string; netnsPath?: string };

/** How guest RAM is backed: shared memory is needed by virtio-fs and by templates. */
export type MemoryBackend =
  | { kind: 'anonymous' }
  | { kind: 'memfd' }
  | { kind: 'file'; path: string; share: boolean };

/** Host side of the agent channel. */
export type AgentChannel =
  | { kind: 'virtio-serial'; socketPath: string }
  | { kind: 'vsock'; guestCid: number; port: number };

export interface VmConfig {
  sandboxId: string;
  /** Host folder for this VM's sockets, pid and console log, e.g. /run/vc/vm/<sandboxId>. */
  vmDir: string;
  hypervisorPath: string;
  /** Guest kernel. '' means none: QEMU runs its firmware only (lifecycle tests without a guest). */
  kernelPath: string;
  initrdPath?: string;
  imagePath?: string;
  /** Appended after the driver's tuned defaults. */
  kernelParams: string[];
  machineType: 'microvm' | 'q35' | 'pc';
  accel: Accelerator;
  vcpus: number;
  memoryMiB: number;
  memoryBackend: MemoryBackend;
  agentChannel: AgentChannel;
  devices: VmDevice[];
  /** Restore device state from a template instead of booting (clone). */
  incomingStatePath?: string;
  /** Network namespace to start the VMM in (it must hold the taps). */
  netnsPath?: string;
  extraArgs?: string[];
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Hypervisor {
  readonly kind: 'qemu' | 'firecracker' | 'cloud-hypervisor';
  /**
   * Starts the VMM and waits until the VM runs (QMP answers). A clone (`incomingStatePath`) is left paused once
   * its state is loaded, so the caller can connect the agent before `resume()`.
   */
  start(opts: { timeoutMs: number; signal?: AbortSignal }): Promise<void>;
  /** Asks the VM to power off; kills it after `timeoutMs`. */
  stop(opts: { timeoutMs: number }): Promise<void>;
  /** SIGKILL the VMM. Idempotent. */
  kill(): Promise<void>;
  /** Resolves when the VMM process exits, for any reason. */
  wait(): Promise<VmExit>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Saves device state (memory excluded when shared) for templates. */
  saveState(statePath: string): Promise<void>;
  addDevice(device: VmDevice): Promise<void>;
  removeDevice(id: string): Promise<void>;
  /** VMM process ids (QEMU: one). */
  pids(): number[];
  /** The last lines the guest printed on its console, for error messages. */
  consoleTail(lines: number): Promise<string[]>;
  /** Removes everything the driver created on the host (sockets, logs, vmDir). Idempotent. */
  cleanup(): Promise<void>;
}

export interface HypervisorFactory {
  create(config: VmConfig, log: Logger): Hypervisor;
}
