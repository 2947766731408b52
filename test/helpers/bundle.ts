import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { OciProcess, OciSpec } from '../../src/protocol/oci-spec.js';

const BUSYBOX = '/bin/busybox';
const APPLETS = [
  'sh', 'echo', 'cat', 'head', 'uname', 'nproc', 'sleep', 'true', 'false', 'ls', 'kill', 'wc', 'tty', 'stty', 'id',
  'hostname', 'touch', 'ps', 'grep', 'awk', 'sed', 'env', 'mkdir', 'rm', 'date', 'free', 'mount', 'dd', 'od', 'tr',
];

/** A busybox-static root filesystem, as small as a container image gets. */
export async function makeBusyboxRootfs(dir: string): Promise<void> {
  for (const d of ['bin', 'proc', 'sys', 'dev', 'etc', 'tmp', 'root', 'run']) await mkdir(join(dir, d), { recursive: true });
  await copyFile(BUSYBOX, join(dir, 'bin/busybox'));
  await chmod(join(dir, 'bin/busybox'), 0o755);
  for (const a of APPLETS) await symlink('busybox', join(dir, 'bin', a));
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\n');
}

export function defaultProcess(args: string[], terminal = false): OciProcess {
  return {
    terminal,
    user: { uid: 0, gid: 0 },
    args,
    env: ['PATH=/bin', 'TERM=xterm'],
    cwd: '/',
    noNewPrivileges: true,
  };
}

/** The spec `runc spec` would write, for busybox. */
export function defaultSpec(args: string[], opts: { terminal?: boolean } = {}): OciSpec {
  return {
    ociVersion: '1.0.2',
    process: defaultProcess(args, opts.terminal),
    root: { path: 'rootfs', readonly: false },
    hostname: 'kata-test',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    ],
    linux: {
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }],
      maskedPaths: ['/proc/kcore', '/proc/keys', '/proc/timer_list'],
      readonlyPaths: ['/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}

export interface Bundle {
  dir: string;
  rootfs: string;
  remove(): Promise<void>;
}

/** A temporary OCI bundle with a busybox rootfs and the given spec. */
export async function makeBundle(spec: OciSpec): Promise<Bundle> {
  const dir = await mkdtemp(join(tmpdir(), 'kata-ts-bundle-'));
  const rootfs = join(dir, 'rootfs');
  await makeBusyboxRootfs(rootfs);
  await writeFile(join(dir, 'config.json'), JSON.stringify(spec, null, 2));
  return { dir, rootfs, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** Writes a bundle into an existing directory (used by scripts/make-bundle.mjs and the benchmarks). */
export async function makeBundleAt(dir: string, args: string[], opts: { terminal?: boolean } = {}): Promise<void> {
  await makeBusyboxRootfs(join(dir, 'rootfs'));
  await writeFile(join(dir, 'config.json'), JSON.stringify(defaultSpec(args, opts), null, 2));
}
