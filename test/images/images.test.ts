/**
 * The local OCI test images (images/build.sh: busybox, pause, nginx built from Debian packages) load into the real
 * containerd 1.6.20 and run with runc. images/verify.sh does the work: it builds them (cached), starts a private
 * containerd (temporary root, state and sockets), imports them into the "default" and "k8s.io" namespaces, runs
 * them and removes everything. Also checks that a second build from the same inputs is byte-identical and that a
 * rebuild with an existing output is skipped.
 * Needs root, containerd, ctr, runc, gcc and apt-get (Debian's archive for the first build); skipped otherwise, or
 * with KATA_TS_SKIP_IMAGE_TESTS=1.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { describe, it } from 'node:test';

const IMAGES_DIR = new URL('../../../images/', import.meta.url).pathname;
const DEFAULT_OUT = '/var/cache/kata-ts/images';
const NAMES = ['busybox', 'pause', 'nginx'];

function onPath(bin: string): boolean {
  return (process.env['PATH'] ?? '').split(delimiter).some((d) => d !== '' && existsSync(join(d, bin)));
}

const missing = ['containerd', 'ctr', 'runc', 'gcc', 'apt-get', 'dpkg-deb', 'readelf', 'unshare', 'nsenter'].filter(
  (b) => !onPath(b),
);
const skip =
  process.getuid?.() !== 0
    ? 'needs root'
    : missing.length > 0
      ? `not on PATH: ${missing.join(' ')}`
      : process.env['KATA_TS_SKIP_IMAGE_TESTS'] === '1'
        ? 'KATA_TS_SKIP_IMAGE_TESTS=1'
        : false;

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

describe('local OCI test images', { skip }, () => {
  it('import into containerd (default and k8s.io) and run busybox, pause and nginx with runc', { timeout: 15 * 60_000 }, async () => {
    const { code, out } = await run(join(IMAGES_DIR, 'verify.sh'), ['--out', DEFAULT_OUT]);
    const failed = out.split('\n').filter((l) => l.startsWith('FAIL '));
    assert.deepEqual(failed, [], out);
    assert.equal(code, 0, out);
    assert.match(out, /^\d+ passed, 0 failed$/m);
  });

  it('a second build from the same inputs is byte-identical, and a rebuild is skipped', { timeout: 10 * 60_000 }, async () => {
    const first = await run(join(IMAGES_DIR, 'build.sh'), ['--out', DEFAULT_OUT]);
    assert.equal(first.code, 0, first.out);
    const dir = await mkdtemp(join(tmpdir(), 'kata-ts-images-repro-'));
    try {
      const env = { ...process.env, KATA_TS_DEB_CACHE: join(DEFAULT_OUT, '.debs') };
      const second = await run(join(IMAGES_DIR, 'build.sh'), ['--out', dir], env);
      assert.equal(second.code, 0, second.out);
      for (const n of NAMES) {
        assert.equal(await sha256(join(dir, `${n}.tar`)), await sha256(join(DEFAULT_OUT, `${n}.tar`)), `${n}.tar differs`);
      }
      const started = Date.now();
      const third = await run(join(IMAGES_DIR, 'build.sh'), ['--out', dir], env);
      assert.equal(third.code, 0, third.out);
      for (const n of NAMES) assert.match(third.out, new RegExp(`^${n} .* cached `, 'm'));
      assert.ok(Date.now() - started < 20_000, `cached build took ${Date.now() - started} ms`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
