#!/usr/bin/env bash
# Benchmarks: each prints its figures beside its baseline from the same run and writes bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
node dist/bench/sandbox-bench.js
node dist/bench/shim-bench.js
