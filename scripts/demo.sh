#!/usr/bin/env bash
# The main job: set up (idempotent), then run a container in a VM through containerd: a private containerd is
# started, the local busybox image imported, and `ctr run --runtime io.containerd.kata.v2` prints the guest's
# kernel next to the host's. Everything the demo starts is stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dir=$(mktemp -d /tmp/kata-ts-demo.XXXXXX)
cat > "$dir/config.toml" <<CONF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
CONF
PATH=/usr/local/bin:$PATH containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
ctd=$!
cleanup() { kill "$ctd" 2>/dev/null; wait "$ctd" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$dir/containerd.sock" ] && break; sleep 0.1; done
images/import.sh --namespace demo --address "$dir/containerd.sock" --only busybox >/dev/null
echo "host kernel: $(uname -r)"
ctr --address "$dir/containerd.sock" -n demo run --rm --runtime io.containerd.kata.v2 \
  docker.io/library/busybox:kata-ts "demo-$$" \
  sh -c 'echo "container kernel: $(uname -r) (a VM: $(nproc) vCPU, $(head -n1 /proc/meminfo | tr -s " "))"'
