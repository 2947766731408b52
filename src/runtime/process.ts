import type { Logger } from '../base/logger.js';
import type { AgentClient } from '../agent-client/agent-client.js';
import { ProcessIo, type HostStdio } from './process-io.js';
import { PROCESS_TRANSITIONS, StateMachine, type ProcessState } from './state-machine.js';

export interface ProcessExit {
  status: number;
  exitedAt: Date;
}

/** How long to wait for output EOF after a process exited (a daemonized child may hold the pipe forever). */
const OUTPUT_DRAIN_MS = 5_000;

/**
 * One process in a container, seen from the host: the container's init (execId = containerId) or an exec.
 * Exit is observed once through WaitProcess and shared by every waiter.
 */
export class Process {
  readonly sm: StateMachine<ProcessState>;
  private readonly io: ProcessIo;
  private exitPromise?: Promise<ProcessExit>;
  private exitInfo?: ProcessExit;

  constructor(
    private readonly agent: AgentClient,
    readonly containerId: string,
    readonly execId: string,
    readonly terminal: boolean,
    stdio: HostStdio,
    private readonly log: Logger,
  ) {
    this.sm = new StateMachine(`process ${execId}`, 'created', PROCESS_TRANSITIONS);
    this.io = new ProcessIo(agent, containerId, execId, stdio, log, terminal);
  }

  get exit(): ProcessExit | undefined {
    return this.exitInfo;
  }

  /** Starts copying output: the agent knows the process (init: after CreateContainer; exec: after ExecProcess). */
  attachOutput(): void {
    this.io.startOutput();
  }

  /**
   * Marks the process running (after StartContainer / ExecProcess succeeded) and starts the stdio copy. A fast
   * process may already have been seen to exit: it stays exited.
   */
  started(): void {
    if (this.sm.is('created')) this.sm.to('running');
    this.io.startOutput();
    this.io.startInput();
  }

  /**
   * Resolves once the process exited and its output reached EOF. If the agent connection breaks (the VM
   * died), the status is 137 (128 + SIGKILL), as Kata reports it.
   */
  wait(): Promise<ProcessExit> {
    if (!this.exitPromise) this.exitPromise = this.waitOnce();
    return this.exitPromise;
  }

  async resize(rows: number, columns: number): Promise<void> {
    await this.agent.call('TtyWinResize', { containerId: this.containerId, execId: this.execId, row: rows, column: columns });
  }

  async closeStdin(): Promise<void> {
    await this.agent.call('CloseStdin', { containerId: this.containerId, execId: this.execId });
  }

  /** Ends the stdio copy without waiting (teardown). */
  stopIo(): void {
    this.io.stop();
  }

  private async waitOnce(): Promise<ProcessExit> {
    let status: number;
    try {
      ({ status } = await this.agent.call('WaitProcess', { containerId: this.containerId, execId: this.execId }));
    } catch (err) {
      this.log.warn({ err, execId: this.execId }, 'wait failed: agent gone, reporting SIGKILL');
      status = 137;
      this.io.stop();
    }
    const drained = await Promise.race([
      this.io.outputs().then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), OUTPUT_DRAIN_MS).unref()),
    ]);
    if (!drained) {
      this.log.warn({ execId: this.execId }, 'output still open after exit; stopped copying');
      this.io.stop();
    }
    this.exitInfo = { status, exitedAt: new Date() };
    if (!this.sm.is('exited')) this.sm.to('exited');
    return this.exitInfo;
  }
}
