import { errors } from '../base/errors.js';

/**
 * A tiny state machine: the allowed transitions are data, and an illegal call fails with an explicit
 * FailedPrecondition error ("cannot start container abc in state stopped").
 */
export class StateMachine<S extends string> {
  private current: S;

  constructor(
    private readonly what: string,
    initial: S,
    private readonly allowed: Readonly<Record<S, readonly S[]>>,
  ) {
    this.current = initial;
  }

  get state(): S {
    return this.current;
  }

  is(...states: S[]): boolean {
    return states.includes(this.current);
  }

  /** Fails unless the current state is one of `states`; `action` names the refused operation. */
  require(action: string, ...states: S[]): void {
    if (!states.includes(this.current)) {
      throw errors.precondition('KATA_ILLEGAL_STATE', `cannot ${action} ${this.what} in state ${this.current}`);
    }
  }

  to(next: S): void {
    if (next === this.current) return;
    if (!this.allowed[this.current].includes(next)) {
      throw errors.precondition(
        'KATA_ILLEGAL_TRANSITION',
        `${this.what}: illegal transition ${this.current} -> ${next}`,
      );
    }
    this.current = next;
  }
}

export type SandboxState = 'creating' | 'ready' | 'stopping' | 'stopped';
export const SANDBOX_TRANSITIONS: Record<SandboxState, readonly SandboxState[]> = {
  creating: ['ready', 'stopping', 'stopped'],
  ready: ['stopping', 'stopped'],
  stopping: ['stopped'],
  stopped: [],
};

export type ContainerState = 'created' | 'running' | 'paused' | 'stopped';
export const CONTAINER_TRANSITIONS: Record<ContainerState, readonly ContainerState[]> = {
  created: ['running', 'stopped'],
  running: ['paused', 'stopped'],
  paused: ['running', 'stopped'],
  stopped: [],
};

export type ProcessState = 'created' | 'running' | 'exited';
export const PROCESS_TRANSITIONS: Record<ProcessState, readonly ProcessState[]> = {
  created: ['running', 'exited'],
  running: ['exited'],
  exited: [],
};
