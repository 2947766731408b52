#!/usr/bin/env bash
# The project's test command: sets up what it needs (scripts/setup.sh), checks generated code and lint, then runs
# unit and integration tests (real QEMU under TCG, the real guest) with node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/gen-proto.sh --check
npx eslint --max-warnings=0 src test bench scripts
# Unit tests beside the code, then VM and containerd tests (one file at a time: they boot VMs on 2 cores).
mapfile -t files < <(find dist/src -name '*.test.js' | sort; find dist/test -name '*.test.js' | sort)
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
