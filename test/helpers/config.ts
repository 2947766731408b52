import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SHIPPED = new URL('../../../config/configuration-qemu.toml', import.meta.url);

/**
 * The shipped configuration with some keys replaced: `overrides` maps `key` (first match in the file) to a
 * raw TOML value, e.g. `{ shared_fs: '"virtio-9p"', default_vcpus: '2' }`.
 */
export function writeTestConfig(overrides: Record<string, string> = {}): { path: string; remove(): void } {
  let text = readFileSync(SHIPPED, 'utf8');
  for (const [key, value] of Object.entries(overrides)) {
    const re = new RegExp(`^${key} = .*$`, 'm');
    if (!re.test(text)) throw new Error(`test config: no key ${key} in the shipped configuration`);
    text = text.replace(re, `${key} = ${value}`);
  }
  const dir = mkdtempSync(join(tmpdir(), 'kata-ts-config-'));
  const path = join(dir, 'configuration.toml');
  writeFileSync(path, text);
  return { path, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
