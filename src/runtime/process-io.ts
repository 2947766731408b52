import type { Readable, Writable } from 'node:stream';
import type { Logger } from '../base/logger.js';
import type { AgentClient } from '../agent-client/agent-client.js';

/** Where a process's stdio goes on the host: any streams (a terminal, fifos, pipes). */
export interface HostStdio {
  stdin?: Readable;
  stdout?: Writable;
  stderr?: Writable;
  /**
   * End stdout/stderr when the process's output reaches EOF. containerd needs this: it waits for EOF on its
   * fifos before it finishes an exec, and the shim is their last writer.
   */
  endOnEof?: boolean;
}

const READ_CHUNK = 32 * 1024;

/**
 * Copies one guest process's stdio through the agent: ReadStdout/ReadStderr long polls into the host
 * streams (in order, waiting for drain, so nothing is lost or reordered), and host stdin into WriteStdin
 * followed by CloseStdin at end of input.
 */
export class ProcessIo {
  private outputsDone?: Promise<void>;
  private inputStarted = false;
  private stopped = false;
  private readonly abort = new AbortController();

  constructor(
    private readonly agent: AgentClient,
    private readonly containerId: string,
    private readonly execId: string,
    private readonly stdio: HostStdio,
    private readonly log: Logger,
    private readonly terminal: boolean,
  ) {}

  /**
   * Starts copying output; call once the agent knows the process (after CreateContainer for an init process,
   * after ExecProcess for an exec). What the process wrote before is buffered by the agent: nothing is lost.
   */
  startOutput(): void {
    if (this.outputsDone) return;
    const pumps = [this.pumpOut('ReadStdout', this.stdio.stdout)];
    if (!this.terminal) pumps.push(this.pumpOut('ReadStderr', this.stdio.stderr));
    this.outputsDone = Promise.all(pumps).then(() => undefined);
  }

  /** Starts forwarding stdin; call once the process runs. */
  startInput(): void {
    if (this.stdio.stdin && !this.inputStarted) {
      this.inputStarted = true;
      void this.pumpIn(this.stdio.stdin);
    }
  }

  /** Resolves when both output streams reached EOF (or the copy was stopped). */
  outputs(): Promise<void> {
    return this.outputsDone ?? Promise.resolve();
  }

  /** Stops copying (used when the VM is gone or the host gives up waiting for EOF). */
  stop(): void {
    this.stopped = true;
    this.abort.abort();
    this.stdio.stdin?.pause();
  }

  private async pumpOut(method: 'ReadStdout' | 'ReadStderr', sink?: Writable): Promise<void> {
    const ids = { containerId: this.containerId, execId: this.execId };
    while (!this.stopped) {
      let data: Buffer;
      try {
        ({ data } = await this.agent.call(method, { ...ids, len: READ_CHUNK }, { signal: this.abort.signal }));
      } catch (err) {
        if (!this.stopped) this.log.debug({ err, method, ...ids }, 'output copy ended');
        return;
      }
      if (data.length === 0) {
        if (this.stdio.endOnEof && sink && !sink.destroyed) sink.end();
        return;
      }
      if (sink && !sink.destroyed) {
        if (!sink.write(data)) await new Promise<void>((r) => sink.once('drain', r).once('close', r));
      }
    }
  }

  private async pumpIn(input: Readable): Promise<void> {
    const ids = { containerId: this.containerId, execId: this.execId };
    try {
      for await (const chunk of input) {
        if (this.stopped) return;
        const data = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
        for (let off = 0; off < data.length; off += READ_CHUNK) {
          await this.agent.call('WriteStdin', { ...ids, data: data.subarray(off, off + READ_CHUNK) });
        }
      }
      if (!this.stopped) await this.agent.call('CloseStdin', ids);
    } catch (err) {
      if (!this.stopped) this.log.debug({ err, ...ids }, 'stdin copy ended');
    }
  }
}
