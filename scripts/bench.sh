#!/usr/bin/env bash
# Benchmarks: each prints its figures beside its baseline from the same run and writes bench/results/.
# BENCH_RUNS sets the number of runs per figure (default 5; medians are reported).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
node dist/bench/sandbox-bench.js     # (a) raw QEMU floor, (b) kata-runtime run, (c) runc run
node dist/bench/shim-bench.js        # ctr run --rm: kata-ts vs runc vs floor; memory per idle pod
node dist/bench/template-bench.js    # cold vs template clone vs runc; PSS per pod
node dist/bench/cri-bench.js         # CRI pod start, ab against nginx, iperf3 (tc-filter, macvtap)
