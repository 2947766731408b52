import type { Logger } from './logger.js';

/**
 * A stack of undo steps. Whatever creates host state pushes how to remove it; a failed start or a
 * teardown runs the stack in reverse. Every step runs even when an earlier one fails.
 */
export class CleanupStack {
  private steps: { what: string; undo: () => Promise<void> | void }[] = [];

  constructor(private readonly log?: Logger) {}

  push(what: string, undo: () => Promise<void> | void): void {
    this.steps.push({ what, undo });
  }

  get size(): number {
    return this.steps.length;
  }

  /** Runs all steps newest first; returns the errors it met (also logged), never throws. */
  async run(): Promise<Error[]> {
    const failures: Error[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.undo();
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        failures.push(e);
        this.log?.warn({ err: e, step: step.what }, 'cleanup step failed');
      }
    }
    return failures;
  }
}
