// Bundles the two programs whose start-up time matters into single files:
// - the guest agent (CommonJS, what the guest image carries; node-pty stays external: a native addon shipped
//   beside the bundle);
// - the containerd shim (ESM; containerd starts it for every container).
import { build } from 'esbuild';

await build({
  entryPoints: ['src/agent/main.ts'],
  outfile: 'dist/agent/agent.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  minify: true,
  legalComments: 'none',
  external: ['node-pty'],
  define: { 'import.meta.url': 'importMetaUrl' },
  banner: { js: 'const importMetaUrl = require("url").pathToFileURL(__filename).href;' },
  logLevel: 'warning',
});

await build({
  entryPoints: ['src/shim/main.ts'],
  outfile: 'dist/shim/shim.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  minify: true,
  legalComments: 'none',
  banner: { js: 'import { createRequire as __kataCreateRequire } from "node:module"; const require = __kataCreateRequire(import.meta.url);' },
  logLevel: 'warning',
});
