import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'smol-toml';
import { CriClient } from '../helpers/cri-client.js';

/**
 * scripts/kata-deploy.sh (kata-deploy on one node) against temporary roots, never the host's own /etc or /usr:
 * install into a root whose containerd config has other settings, install again (nothing changes), status,
 * uninstall (the config byte for byte, nothing left); that a private containerd 1.6 started with the merged
 * config has the CRI runtime handler "kata"; and the edge cases: no config yet, files that were already there,
 * a config edited after install, a config with a different "kata" handler.
 */

type Toml = Record<string, unknown>;

/** A parsed TOML document as plain objects (smol-toml makes null-prototype tables), for deepEqual. */
const tomlOf = (text: string): Toml => JSON.parse(JSON.stringify(parse(text))) as Toml;

const REPO = realpathSync(fileURLToPath(new URL('../../../', import.meta.url)));
const DEPLOY = join(REPO, 'scripts/kata-deploy.sh');
const ASSETS = ['vmlinux.container', 'kata-containers-initrd.img', 'kata-containers.img', 'kata-ts-guest.json'];
const REAL_ASSETS = '/usr/share/kata-containers';
const CRI = 'io.containerd.grpc.v1.cri';
const SNIPPET = tomlOf(readFileSync(join(REPO, 'deploy/containerd-kata.toml'), 'utf8'));
const SNIPPET_KATA = (((SNIPPET.plugins as Toml)[CRI] as Toml).containerd as Toml).runtimes as Toml;


interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function deploy(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(DEPLOY, args, { cwd: REPO, timeout: 120_000, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

async function deployOk(args: string[]): Promise<Run> {
  const r = await deploy(args);
  assert.equal(r.code, 0, `kata-deploy.sh ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return r;
}

/**
 * Every entry under `root`: directories, symlinks with their targets, files with size, mode, inode and mtime
 * (so a rewrite shows) and, for small files, a hash of the content.
 */
function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string, rel: string) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      const r = `${rel}/${name}`;
      const st = lstatSync(p);
      if (st.isSymbolicLink()) out[r] = `link -> ${readlinkSync(p)}`;
      else if (st.isDirectory()) {
        out[r] = `dir ${(st.mode & 0o7777).toString(8)}`;
        walk(p, r);
      } else {
        const hash = st.size < 1 << 20 ? createHash('sha256').update(readFileSync(p)).digest('hex') : 'big';
        out[r] = `file ${(st.mode & 0o7777).toString(8)} size=${st.size} ino=${st.ino} mtime=${st.mtimeMs} ${hash}`;
      }
    }
  };
  walk(root, '');
  return out;
}

/** Files are equal byte for byte (cmp: the guest image is 120 MB). */
function sameFile(a: string, b: string): boolean {
  return spawnSync('cmp', ['-s', a, b]).status === 0;
}

/** A containerd config with settings of its own, runnable as a private containerd (its dirs under `ctdDir`). */
function fixtureConfig(ctdDir: string): string {
  return [
    '# containerd config of the kata-deploy test: everything here must survive install and uninstall.',
    'version = 2',
    `root = "${ctdDir}/root"`,
    `state = "${ctdDir}/state"`,
    'oom_score = 0',
    '',
    '[grpc]',
    `  address = "${ctdDir}/containerd.sock"`,
    '',
    '[ttrpc]',
    `  address = "${ctdDir}/containerd.sock.ttrpc"`,
    '',
    '[debug]',
    '  level = "info"',
    '',
    '[plugins]',
    `  [plugins."${CRI}"]`,
    '    sandbox_image = "registry.k8s.io/pause:kata-ts"',
    '    # a random port: the default 10010 would collide with other containerds',
    '    stream_server_address = "127.0.0.1"',
    '    stream_server_port = "0"',
    `    [plugins."${CRI}".cni]`,
    '      bin_dir = "/usr/lib/cni"',
    `      conf_dir = "${ctdDir}/cni"`,
    `    [plugins."${CRI}".containerd]`,
    '      default_runtime_name = "runc"',
    '      snapshotter = "overlayfs"',
    `      [plugins."${CRI}".containerd.runtimes.runc]`,
    '        runtime_type = "io.containerd.runc.v2"',
    '  [plugins."io.containerd.internal.v1.opt"]',
    `    path = "${ctdDir}/opt"`,
    // No final newline: install must add one and uninstall take it away again.
  ].join('\n');
}

/** Adds `extra` into `base` (tables merged, other values set). */
function deepMerge(base: Toml, extra: Toml): Toml {
  const out: Toml = { ...base };
  for (const [k, v] of Object.entries(extra)) {
    const isTable = (x: unknown) => x !== null && typeof x === 'object' && !Array.isArray(x);
    out[k] = isTable(v) && isTable(out[k]) ? deepMerge(out[k] as Toml, v as Toml) : v;
  }
  return out;
}

describe('scripts/kata-deploy.sh', () => {
  let dir: string;
  const cleanups: (() => Promise<void> | void)[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kata-ts-deploy-'));
    for (const a of ASSETS) assert.ok(existsSync(join(REAL_ASSETS, a)), `${REAL_ASSETS}/${a} missing: run scripts/setup.sh`);
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await rm(dir, { recursive: true, force: true });
  });

  test('install into a root with a containerd config, install again, status, uninstall: byte for byte', async (t) => {
    const root = join(dir, 'root1');
    const ctdDir = join(dir, 'ctd1');
    mkdirSync(join(root, 'etc/containerd'), { recursive: true });
    mkdirSync(join(ctdDir, 'cni'), { recursive: true });
    const cfgPath = join(root, 'etc/containerd/config.toml');
    const original = fixtureConfig(ctdDir);
    writeFileSync(cfgPath, original);
    chmodSync(cfgPath, 0o640);
    const before = tree(root);

    const first = await deployOk(['install', '--root', root]);
    assert.match(first.stdout, /containerd was not restarted/);

    // Binaries: links to the repository's entry points.
    for (const b of ['kata-runtime', 'containerd-shim-kata-v2']) {
      assert.equal(readlinkSync(join(root, 'usr/local/bin', b)), join(REPO, 'bin', b));
    }
    // Guest assets and the default configuration: copies.
    for (const a of ASSETS) {
      const p = join(root, 'usr/share/kata-containers', a);
      assert.ok(!lstatSync(p).isSymbolicLink());
      assert.ok(sameFile(p, join(REAL_ASSETS, a)), `${a} differs from the build`);
    }
    assert.equal(
      readFileSync(join(root, 'usr/share/defaults/kata-containers/configuration.toml'), 'utf8'),
      readFileSync(join(REPO, 'config/configuration-qemu.toml'), 'utf8'),
    );

    // The merged config: the original plus exactly the snippet's keys; its own text kept line for line.
    const mergedText = readFileSync(cfgPath, 'utf8');
    const merged = tomlOf(mergedText);
    const expected = deepMerge(tomlOf(original), { plugins: { [CRI]: { restrict_oom_score_adj: true, containerd: { runtimes: SNIPPET_KATA } } } });
    assert.deepEqual(merged, expected);
    const kata = ((((merged.plugins as Toml)[CRI] as Toml).containerd as Toml).runtimes as Toml).kata as Toml;
    assert.equal(kata.runtime_type, 'io.containerd.kata.v2');
    assert.deepEqual(kata.pod_annotations, ['io.katacontainers.*']);
    assert.deepEqual(kata.options, { ConfigPath: '/usr/share/defaults/kata-containers/configuration.toml' });
    // Every addition is a block of whole lines between marker comments; outside them the text is the original
    // (plus the final newline it lacked).
    const outside: string[] = [];
    let inBlock = false;
    for (const line of mergedText.split('\n')) {
      if (line.startsWith('# >>> kata-ts')) inBlock = true;
      else if (line === '# <<< kata-ts') inBlock = false;
      else if (!inBlock) outside.push(line);
    }
    assert.equal(outside.join('\n'), `${original}\n`);
    assert.equal((mergedText.match(/^# >>> kata-ts/gm) ?? []).length, 2, 'one block in [plugins."io.containerd.grpc.v1.cri"], one at the end');
    assert.equal(lstatSync(cfgPath).mode & 0o777, 0o640, 'the config keeps its mode');

    // Install again: nothing is rewritten.
    const installed = tree(root);
    await deployOk(['install', '--root', root]);
    assert.deepEqual(tree(root), installed);
    assert.equal(readFileSync(cfgPath, 'utf8'), mergedText);

    const status = await deployOk(['status', '--root', root]);
    assert.doesNotMatch(status.stdout, /MISSING|DIFFERENT/);
    assert.match(status.stdout, /kata handler as in deploy\/containerd-kata\.toml \(merged by kata-deploy\)/);

    await t.test('a private containerd 1.6 started with the merged config has the CRI runtime handler "kata"', async () => {
      await checkContainerd(cfgPath, ctdDir, cleanups);
    });

    const un = await deployOk(['uninstall', '--root', root]);
    assert.match(un.stdout, /restored .*config\.toml \(as it was before install\)/);
    assert.equal(readFileSync(cfgPath, 'utf8'), original, 'the containerd config is restored byte for byte');
    assert.equal(lstatSync(cfgPath).mode & 0o777, 0o640);
    // Nothing is left, nothing else changed (the config was rewritten: a new inode, the same bytes).
    const withoutConfig = (t: Record<string, string>) =>
      Object.fromEntries(Object.entries(t).filter(([p]) => p !== '/etc/containerd/config.toml'));
    assert.deepEqual(withoutConfig(tree(root)), withoutConfig(before), 'nothing is left');

    const again = await deployOk(['uninstall', '--root', root]);
    assert.match(again.stdout, /nothing to uninstall/);
    const st = await deploy(['status', '--root', root]);
    assert.equal(st.code, 1, 'status fails when nothing is installed');
    assert.match(st.stdout, /MISSING/);
  });

  test('no containerd config yet; files already there are left alone; a config edited after install', async () => {
    const root = join(dir, 'root2');
    const assets = join(dir, 'assets2');
    mkdirSync(assets);
    for (const a of ASSETS) writeFileSync(join(assets, a), `fake ${a}\n`);
    // Already there before install: the same binary link (not recorded, so uninstall keeps it) and a different
    // default configuration (backed up, replaced, then put back).
    mkdirSync(join(root, 'usr/local/bin'), { recursive: true });
    symlinkSync(join(REPO, 'bin/kata-runtime'), join(root, 'usr/local/bin/kata-runtime'));
    mkdirSync(join(root, 'usr/share/defaults/kata-containers'), { recursive: true });
    writeFileSync(join(root, 'usr/share/defaults/kata-containers/configuration.toml'), '# the admin\'s own\n');
    const before = tree(root);

    const cfg = join(dir, 'elsewhere/containerd.toml');
    const common = ['--root', root, '--assets-dir', assets, '--containerd-config', cfg, '--no-restart'];
    const r = await deployOk(['install', ...common]);
    assert.match(r.stdout, /present +\S+\/usr\/local\/bin\/kata-runtime/);
    assert.match(r.stdout, /replaced +\S+configuration\.toml/);
    assert.match(r.stdout, /created +\S+containerd\.toml/);
    const created = tomlOf(readFileSync(cfg, 'utf8'));
    assert.equal(created.version, 2);
    assert.equal(((((created.plugins as Toml)[CRI] as Toml).containerd as Toml).runtimes as Toml).kata !== undefined, true);
    assert.equal(readFileSync(join(root, 'usr/share/kata-containers/kata-ts-guest.json'), 'utf8'), 'fake kata-ts-guest.json\n');

    // The admin appends a setting after install: uninstall takes out only what install added.
    writeFileSync(cfg, `${readFileSync(cfg, 'utf8')}[metrics]\n  address = "127.0.0.1:1338"\n`);
    const un = await deployOk(['uninstall', ...common]);
    assert.match(un.stdout, /it changed after install: removed only the blocks install had added/);
    assert.equal(readFileSync(cfg, 'utf8'), '[metrics]\n  address = "127.0.0.1:1338"\n');
    assert.deepEqual(tree(root), before, 'the root is as it was: the link kept, the admin\'s configuration back');
  });

  test('a config with a different "kata" handler is refused and nothing is installed', async () => {
    const root = join(dir, 'root3');
    mkdirSync(join(root, 'etc/containerd'), { recursive: true });
    const text = `version = 2\n[plugins."${CRI}".containerd.runtimes.kata]\n  runtime_type = "io.containerd.kata.v2"\n  runtime_path = "/opt/kata/bin/containerd-shim-kata-v2"\n`;
    writeFileSync(join(root, 'etc/containerd/config.toml'), text);
    const before = tree(root);
    const r = await deploy(['install', '--root', root]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /already has a runtime handler .* that differs/);
    assert.match(r.stderr, /nothing was installed/);
    assert.deepEqual(tree(root), before);
  });
});

/** Starts containerd with `configPath` and checks, through CRI Status and `ctr plugins ls`, the kata handler. */
async function checkContainerd(configPath: string, ctdDir: string, cleanups: (() => Promise<void> | void)[]): Promise<void> {
  const address = join(ctdDir, 'containerd.sock');
  const proc: ChildProcess = spawn('containerd', ['--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => (log += d));
  proc.on('error', (err) => (log += `\nspawn containerd: ${err.message}`));
  const exited = new Promise((r) => proc.once('exit', r));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await exited;
    }
  };
  cleanups.push(stop);
  const client = new CriClient(address, { defaultTimeoutMs: 10_000 });
  try {
    let status;
    for (let i = 0; ; i++) {
      try {
        status = await client.status({ verbose: true }, { timeoutMs: 2000 });
        break;
      } catch (err) {
        if (i > 100 || proc.exitCode !== null || proc.pid === undefined) throw new Error(`containerd did not answer CRI Status: ${String(err)}\n${log.slice(-3000)}`, { cause: err });
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const config = JSON.parse(status.info.config ?? '{}') as {
      containerd: { defaultRuntimeName: string; runtimes: Record<string, Record<string, unknown>> };
      restrictOOMScoreAdj: boolean;
      sandboxImage: string;
    };
    const kata = config.containerd.runtimes.kata;
    assert.ok(kata, `no kata runtime in the CRI config: ${status.info.config}`);
    assert.equal(kata.runtimeType, 'io.containerd.kata.v2');
    assert.deepEqual(kata.options, { ConfigPath: '/usr/share/defaults/kata-containers/configuration.toml' });
    assert.deepEqual(kata.PodAnnotations, ['io.katacontainers.*']);
    assert.equal(kata.privileged_without_host_devices, true);
    assert.equal(config.restrictOOMScoreAdj, true);
    // The config's other settings are in effect too.
    assert.equal(config.containerd.defaultRuntimeName, 'runc');
    assert.equal(config.containerd.runtimes.runc?.runtimeType, 'io.containerd.runc.v2');
    assert.equal(config.sandboxImage, 'registry.k8s.io/pause:kata-ts');
    const plugins = await new Promise<string>((resolve, reject) =>
      execFile('ctr', ['--address', address, 'plugins', 'ls'], (err, out) => (err ? reject(err) : resolve(out))),
    );
    assert.match(plugins, new RegExp(`io\\.containerd\\.grpc\\.v1\\s+cri\\s+\\S+\\s+ok`));
  } finally {
    client.close();
    await stop();
  }
}
