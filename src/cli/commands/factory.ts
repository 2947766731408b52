import { Command } from 'commander';
import type { Logger } from '../../base/logger.js';
import { detectAccel } from '../../hypervisor/accel.js';
import { qemuFactory } from '../../hypervisor/qemu/qemu.js';
import type { RuntimeConfig } from '../../runtime/config/types.js';
import { destroyTemplates, initTemplates, templateStatus, type TemplateStatus } from '../../runtime/factory/index.js';
import { loadRuntimeConfig } from '../load-runtime-config.js';
import type { CommandDeps } from '../command-deps.js';

/** Where the command's results go (stdout in the CLI; tests capture it). */
export type Print = (line: string) => void;

const MIB = 1024 * 1024;
const fmtMiB = (bytes: number | undefined) => (bytes === undefined ? '-' : `${(bytes / MIB).toFixed(1)} MiB`);

async function accelFor(config: RuntimeConfig, log: Logger) {
  return (await detectAccel(config.hypervisor.accel, { qemuPath: config.hypervisor.path, log })).accel;
}

/** `kata-runtime factory init`: builds the VM templates for the configuration (or finds them up to date). */
export async function factoryInit(configPath: string | undefined, log: Logger, print: Print): Promise<number> {
  const config = await loadRuntimeConfig(configPath, log);
  const accel = await accelFor(config, log);
  const t0 = performance.now();
  for (const r of await initTemplates(config, accel, qemuFactory, {}, log)) {
    const ms = Math.round(performance.now() - t0);
    print(`${r.variant}: ${r.built ? `template built in ${ms} ms` : 'template already up to date'}: ${r.dir}`);
    print(`  key ${r.meta.key}`);
  }
  return 0;
}

/** `kata-runtime factory status`: the template dir, its tmpfs, each template, and whether it fits the config. */
export async function factoryStatus(configPath: string | undefined, opts: { json?: boolean }, log: Logger, print: Print): Promise<number> {
  const config = await loadRuntimeConfig(configPath, log);
  const accel = await accelFor(config, log);
  const s = await templateStatus(config, accel, log);
  if (opts.json) {
    print(JSON.stringify(s, null, 2));
    return 0;
  }
  for (const line of formatStatus(s)) print(line);
  return 0;
}

export function formatStatus(s: TemplateStatus): string[] {
  const out: string[] = [];
  out.push(`vm templates: ${s.enabled ? 'enabled' : 'disabled'} ([factory] enable_template)`);
  const m = s.mount;
  const where = !m.exists ? 'does not exist' : m.mounted ? `${m.fsType} mounted, ${fmtMiB(m.usedBytes)} used of ${fmtMiB(m.sizeBytes)}` : 'a directory (not mounted)';
  out.push(`template path: ${s.templatePath} (${where})`);
  if (s.currentKeyProblem !== undefined) out.push(`current config keys: none: ${s.currentKeyProblem}`);
  for (const k of s.currentKeys) out.push(`current config key (${k.variant}): ${k.key} ${s.matches[k.variant] ? '(template ready)' : '(no template yet)'}`);
  if (s.templates.length === 0) out.push('templates: none');
  for (const t of s.templates) {
    if (t.building) {
      out.push(`- ${t.dir}: build in progress (or abandoned), memory ${fmtMiB(t.memoryAllocatedBytes)}`);
      continue;
    }
    if (!t.meta && t.dir.includes('/.failed-')) {
      out.push(`- last build failed: ${t.problem}`);
      continue;
    }
    const meta = t.meta;
    const variant = s.currentKeys.find((k) => k.key === meta?.key)?.variant;
    const fits = variant && !t.problem ? `matches the current configuration (${variant})` : 'does NOT match the current configuration';
    out.push(`- ${t.dir}: ${t.problem ? `unusable (${t.problem})` : fits}`);
    if (meta) {
      out.push(`    key ${meta.key}`);
      out.push(`    guest memory ${meta.memoryMiB} MiB (file ${fmtMiB(meta.memory.size)}, ${fmtMiB(t.memoryAllocatedBytes)} in tmpfs), state ${t.stateBytes ?? '-'} bytes`);
      out.push(`    built ${meta.createdAt} in ${meta.buildMs} ms with ${meta.qemuVersion}`);
    }
    for (const d of s.differences[t.dir] ?? []) out.push(`    differs: ${d}`);
  }
  return out;
}

/** `kata-runtime factory destroy`: removes the templates and unmounts the tmpfs. */
export async function factoryDestroy(configPath: string | undefined, log: Logger, print: Print): Promise<number> {
  const config = await loadRuntimeConfig(configPath, log);
  const r = await destroyTemplates(config, {}, log);
  for (const d of r.removed) print(`removed ${d}`);
  if (r.unmounted) print(`unmounted ${config.factory.templatePath}`);
  if (r.detached) print(`detached ${config.factory.templatePath}: running clones still map it; freed when they exit`);
  if (r.removed.length === 0 && !r.unmounted && !r.detached) print('no template');
  return 0;
}

/** Registers `factory init|status|destroy` on the program; `configPath()` reads the global --config. */
export function registerFactoryCommand(
  program: Command,
  deps: CommandDeps,
): void {
  const print: Print = (line) => process.stdout.write(line + '\n');
  const factory = program.command('factory').description('manage the VM factory (templates): init | status | destroy');
  factory
    .command('init')
    .description('build the VM template for the configuration (no-op when it is up to date)')
    .action(async () => deps.setResult(await factoryInit(deps.configPath(), deps.log(), print)));
  factory
    .command('status')
    .description('show the template directory, its templates, and whether they match the configuration')
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean }) => deps.setResult(await factoryStatus(deps.configPath(), o, deps.log(), print)));
  factory
    .command('destroy')
    .description('remove the templates and unmount the template tmpfs')
    .action(async () => deps.setResult(await factoryDestroy(deps.configPath(), deps.log(), print)));
}
