#!/usr/bin/env bash
# The main job: set up (idempotent), then run a busybox container in a VM and show it runs on the guest kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bundle=$(mktemp -d /tmp/kata-ts-demo.XXXXXX)
trap 'rm -rf "$bundle"' EXIT
node scripts/make-bundle.mjs "$bundle" sh -c 'echo "host says: '"$(uname -r)"'"; echo "container in VM says: $(uname -r)"; nproc; head -n1 /proc/meminfo'
kata-runtime run --bundle "$bundle" "demo-$$"
