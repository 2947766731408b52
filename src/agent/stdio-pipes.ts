import { closeSync, constants, openSync, rmSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { commandShell } from './command-shell.js';

/**
 * Real pipes for a container's stdio. Node's `stdio: 'pipe'` gives a child UNIX sockets, and a process cannot
 * reopen a socket through /proc/self/fd: nginx's `error_log /dev/stderr` fails with ENXIO. Node has no pipe(2),
 * so each stream is a FIFO opened at both ends (nothing blocks: the other end is always open first), the FIFO
 * names removed at once, and the child's ends left in blocking mode.
 */
export interface StdioPipes {
  /** stdin (read end), stdout and stderr (write ends), for the child; close them after spawning. */
  childFds: [number, number, number];
  stdin: Socket;
  stdout: Socket;
  stderr: Socket;
  closeChildFds(): void;
}

/** `tag` (the exec id) keeps concurrent starts in one directory apart. */
export async function makeStdioPipes(dir: string, tag: string): Promise<StdioPipes> {
  const names = ['stdin', 'stdout', 'stderr'].map((n) => join(dir, `${tag}.${n}.fifo`));
  rmSync(names[0]!, { force: true });
  rmSync(names[1]!, { force: true });
  rmSync(names[2]!, { force: true });
  await commandShell.run('mkfifo', ['-m', '0600', ...names]);
  try {
    // stdin: a temporary holder makes the child's blocking read end open at once; our write end is non-blocking.
    const holder = openSync(names[0]!, constants.O_RDWR);
    const childIn = openSync(names[0]!, constants.O_RDONLY);
    const ourIn = openSync(names[0]!, constants.O_WRONLY | constants.O_NONBLOCK);
    closeSync(holder);
    // stdout/stderr: our non-blocking read end first, then the child's blocking write end.
    const ourOut = openSync(names[1]!, constants.O_RDONLY | constants.O_NONBLOCK);
    const childOut = openSync(names[1]!, constants.O_WRONLY);
    const ourErr = openSync(names[2]!, constants.O_RDONLY | constants.O_NONBLOCK);
    const childErr = openSync(names[2]!, constants.O_WRONLY);
    const childFds: [number, number, number] = [childIn, childOut, childErr];
    return {
      childFds,
      stdin: new Socket({ fd: ourIn, readable: false, writable: true }),
      stdout: new Socket({ fd: ourOut, readable: true, writable: false }),
      stderr: new Socket({ fd: ourErr, readable: true, writable: false }),
      closeChildFds: () => {
        for (const fd of childFds) closeSync(fd);
      },
    };
  } finally {
    for (const n of names) rmSync(n, { force: true });
  }
}
