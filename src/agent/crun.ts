import { execFile } from 'node:child_process';
import { errors } from '../base/errors.js';

/** The crun command line: the guest's OCI runtime. Short commands only; long-running ones are spawned by GuestProcess. */
export class Crun {
  constructor(
    readonly binary = '/usr/bin/crun',
    readonly root = '/run/crun',
  ) {}

  runArgs(bundle: string, containerId: string, pidFile: string): string[] {
    return ['--root', this.root, 'run', '--bundle', bundle, '--pid-file', pidFile, containerId];
  }

  execArgs(containerId: string, processFile: string, pidFile: string): string[] {
    return ['--root', this.root, 'exec', '--process', processFile, '--pid-file', pidFile, containerId];
  }

  kill(containerId: string, signal: number, all = false): Promise<string> {
    return this.run(['kill', ...(all ? ['--all'] : []), containerId, String(signal)]);
  }

  delete(containerId: string): Promise<string> {
    return this.run(['delete', '--force', containerId]);
  }

  pause(containerId: string): Promise<string> {
    return this.run(['pause', containerId]);
  }

  resume(containerId: string): Promise<string> {
    return this.run(['resume', containerId]);
  }

  update(containerId: string, resourcesFile: string): Promise<string> {
    return this.run(['update', '--resources', resourcesFile, containerId]);
  }

  private run(args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(this.binary, ['--root', this.root, ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
        if (err) {
          reject(errors.internal('KATA_CRUN_FAILED', `crun ${args[0]}: ${stderr.trim() || err.message}`, err));
        } else {
          resolve(stdout);
        }
      });
    });
  }
}
