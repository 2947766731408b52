import { errors } from '../base/errors.js';

/** The shim's command line as containerd passes it (Go flag syntax: `-name value`, `-name=value`, `-debug`). */
export interface ShimFlags {
  namespace: string;
  address: string;
  publishBinary: string;
  id: string;
  bundle?: string;
  debug: boolean;
  socket?: string;
  action: string;
}

const VALUE_FLAGS: Record<string, keyof ShimFlags> = {
  namespace: 'namespace',
  address: 'address',
  'publish-binary': 'publishBinary',
  id: 'id',
  bundle: 'bundle',
  socket: 'socket',
};
const BOOL_FLAGS = new Set(['debug', 'v', 'version', 'info']);

export function parseShimFlags(argv: string[]): ShimFlags & { bools: Set<string> } {
  const out: Partial<ShimFlags> = { debug: false };
  const bools = new Set<string>();
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('-') || arg === '-' ) {
      rest.push(arg);
      continue;
    }
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (BOOL_FLAGS.has(name)) {
      const on = eq < 0 || body.slice(eq + 1) === 'true';
      if (on) bools.add(name);
      if (name === 'debug') out.debug = on;
      continue;
    }
    const key = VALUE_FLAGS[name];
    if (!key) throw errors.invalid('KATA_SHIM_FLAGS', `unknown flag -${name}`);
    const value = eq >= 0 ? body.slice(eq + 1) : argv[++i];
    if (value === undefined) throw errors.invalid('KATA_SHIM_FLAGS', `flag -${name} needs a value`);
    (out as Record<string, unknown>)[key] = value;
  }
  return { ...(out as ShimFlags), namespace: out.namespace ?? '', address: out.address ?? '', publishBinary: out.publishBinary ?? '', id: out.id ?? '', action: rest[0] ?? '', bools };
}
