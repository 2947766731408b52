// Writes an OCI bundle with a busybox-static rootfs: node scripts/make-bundle.mjs DIR [--tty] CMD ARGS...
import { makeBundleAt } from '../dist/test/helpers/bundle.js';

const [dir, ...rest] = process.argv.slice(2);
const terminal = rest[0] === '--tty';
const args = terminal ? rest.slice(1) : rest;
if (!dir || args.length === 0) {
  console.error('usage: make-bundle.mjs DIR [--tty] CMD [ARGS...]');
  process.exit(2);
}
await makeBundleAt(dir, args, { terminal });
