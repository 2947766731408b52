// Bundles the guest agent into one CommonJS file (what the guest image carries). node-pty stays external:
// it is a native addon shipped beside the bundle.
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
