import { readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import { dirname } from 'node:path';
import type { Command } from 'commander';
import { stringify } from 'smol-toml';
import { silentLogger, type Logger } from '../../base/logger.js';
import { detectAccel, type AccelVerdict } from '../../hypervisor/accel.js';
import { defaultConfigPaths } from '../../runtime/config/index.js';
import { defaultPaths } from '../../runtime/paths.js';
import { loadRuntimeConfig } from '../load-runtime-config.js';
import { findOnPath, isExecutable, manifestEntry, readGuestManifest, SHIM_BINARY, versionOf } from './check.js';
import type { CommandDeps } from '../command-deps.js';

export interface AssetInfo {
  path: string;
  exists: boolean;
  sizeBytes?: number;
  /** The manifest's entry for this file (sha256, package versions, ...), when kata-ts-guest.json describes it. */
  manifest?: Record<string, unknown>;
}

/** What `kata-runtime env` reports; `--json` prints it as is. */
export interface EnvReport {
  meta: { version: string; runtime: string };
  config: {
    path: string;
    searchOrder: string[];
    hypervisor: Record<string, unknown>;
    agent: Record<string, unknown>;
    runtime: Record<string, unknown>;
    factory: Record<string, unknown>;
    ignoredKeys: string[];
  };
  assets: { manifestPath?: string; manifestHash?: string; kernel: AssetInfo; initrd?: AssetInfo; image?: AssetInfo };
  versions: { kataTs: string; node: string; qemu?: string; virtiofsd?: string; containerd?: string };
  paths: { sandboxRoot: string; vmRoot: string; sharedRoot: string; shim?: string };
  host: {
    kernel: string;
    os?: string;
    arch: string;
    cpus: number;
    cpuModel?: string;
    memoryMiB: number;
    kvmDevice: boolean;
    accel: AccelVerdict;
  };
}

export function kataTsVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function asset(path: string, manifest: ReturnType<typeof readGuestManifest>): AssetInfo {
  try {
    return { path, exists: true, sizeBytes: statSync(path).size, manifest: manifestEntry(manifest, path) };
  } catch {
    return { path, exists: false };
  }
}

function osName(): string | undefined {
  try {
    return /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

export async function gatherEnv(configPath: string | undefined, log: Logger): Promise<EnvReport> {
  const config = await loadRuntimeConfig(configPath, log);
  const hv = config.hypervisor;
  const manifest = readGuestManifest(dirname(hv.kernel));
  const ctd = findOnPath('containerd');
  const [qemu, virtiofsd, containerd, accel] = await Promise.all([
    isExecutable(hv.path) ? versionOf(hv.path) : Promise.resolve(undefined),
    hv.sharedFs === 'virtio-fs' && isExecutable(hv.virtioFsDaemon) ? versionOf(hv.virtioFsDaemon) : Promise.resolve(undefined),
    ctd ? versionOf(ctd) : Promise.resolve(undefined),
    // The verdict is part of the report: its fallback warning would only repeat it on stderr.
    detectAccel(hv.accel, { qemuPath: hv.path, log: silentLogger }),
  ]);
  const version = kataTsVersion();
  const paths = defaultPaths();
  let kvmDevice = false;
  try {
    kvmDevice = statSync('/dev/kvm').isCharacterDevice();
  } catch {
    /* absent */
  }
  return {
    meta: { version, runtime: process.argv[1] ?? 'kata-runtime' },
    config: {
      path: config.sourcePath,
      searchOrder: ['runtime option ConfigPath / --config', 'KATA_CONF_FILE', ...defaultConfigPaths()],
      hypervisor: { ...hv },
      agent: { ...config.agent },
      runtime: { ...config.runtime },
      factory: { ...config.factory },
      ignoredKeys: config.ignoredKeys,
    },
    assets: {
      manifestPath: manifest?.path,
      manifestHash: typeof manifest?.manifest.hash === 'string' ? manifest.manifest.hash : undefined,
      kernel: asset(hv.kernel, manifest),
      initrd: hv.initrd ? asset(hv.initrd, manifest) : undefined,
      image: hv.image ? asset(hv.image, manifest) : undefined,
    },
    versions: { kataTs: version, node: process.version, qemu, virtiofsd, containerd },
    paths: { ...paths, shim: findOnPath(SHIM_BINARY) },
    host: {
      kernel: `${os.release()} ${os.version()}`,
      os: osName(),
      arch: os.arch(),
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      memoryMiB: Math.round(os.totalmem() / 1024 / 1024),
      kvmDevice,
      accel,
    },
  };
}

/** Drops undefined values (TOML has no null) so the report prints as TOML. */
function tomlSafe(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(tomlSafe);
  if (v && typeof v === 'object') {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => x !== undefined)
        .map(([k, x]) => [k, tomlSafe(x)]),
    );
  }
  return v;
}

export function registerEnvCommand(
  program: Command,
  deps: CommandDeps,
): void {
  program
    .command('env')
    .alias('kata-env')
    .description('show the resolved configuration, guest assets, versions and host (TOML, or --json)')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const report = await gatherEnv(deps.configPath(), deps.log());
      process.stdout.write(o.json ? JSON.stringify(report, null, 2) + '\n' : stringify(tomlSafe(report) as Record<string, unknown>) + '\n');
      deps.setResult(0);
    });
}
