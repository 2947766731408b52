#!/usr/bin/env bash
# Measures the host-side memory and CPU of one idle kata-ts pod: the shim (containerd-shim-kata-v2), QEMU and
# virtiofsd of a running sandbox, as the PodOverhead in deploy/runtimeclass.yaml should cover them.
#
# It starts a private containerd (its own root, state and sockets in a temp dir; the CRI plugin disabled), imports
# the local busybox image (images/import.sh), runs `ctr run -d --runtime io.containerd.kata.v2 ... sleep`, lets the
# pod settle, then samples RSS and PSS (/proc/PID/smaps_rollup) and CPU time (/proc/PID/stat) of every process of
# the sandbox. Everything it starts is stopped and removed at the end, also on failure.
#
# Usage: deploy/measure-overhead.sh [--settle SECONDS] [--samples N] [--interval SECONDS] [--pods N] [--busy SECONDS]
#   --settle    seconds to wait after the container runs before sampling (default 20)
#   --samples   number of samples (default 5), --interval seconds between them (default 2)
#   --pods      pods running at the same time (default 1; PSS shares QEMU's and node's file pages between them)
#   --busy      before settling, keep the container busy this many seconds (find, ls -R /proc, dd to /tmp, ps in a
#               loop: new code for TCG to translate, guest page cache, dentries), then measure it idle again
# Needs root, a built project (scripts/setup.sh) and containerd-shim-kata-v2 on PATH (/usr/local/bin).
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETTLE=20
SAMPLES=5
INTERVAL=2
PODS=1
BUSY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --settle) SETTLE=${2:?}; shift 2 ;;
    --samples) SAMPLES=${2:?}; shift 2 ;;
    --interval) INTERVAL=${2:?}; shift 2 ;;
    --pods) PODS=${2:?}; shift 2 ;;
    --busy) BUSY=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "measure-overhead.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

NS=kata-overhead
IMAGE=docker.io/library/busybox:kata-ts
DIR=$(mktemp -d /tmp/kata-ts-overhead.XXXXXX)
SOCK=$DIR/containerd.sock
CTD_PID=
IDS=()

ctr_() { ctr --address "$SOCK" --namespace "$NS" "$@"; }

cleanup() {
  set +e
  for id in "${IDS[@]}"; do
    ctr_ task kill -a -s SIGKILL "$id" >/dev/null 2>&1
    for _ in $(seq 50); do ctr_ task ls -q 2>/dev/null | grep -qx "$id" || break; ctr_ task rm -f "$id" >/dev/null 2>&1; sleep 0.2; done
    ctr_ container rm "$id" >/dev/null 2>&1
  done
  if [ -n "$CTD_PID" ]; then kill "$CTD_PID" 2>/dev/null; wait "$CTD_PID" 2>/dev/null; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

cat >"$DIR/config.toml" <<TOML
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
TOML
PATH=/usr/local/bin:$PATH containerd --config "$DIR/config.toml" 2>"$DIR/containerd.log" &
CTD_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && ctr --address "$SOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
"$REPO/images/import.sh" --namespace "$NS" --address "$SOCK" --only busybox --no-build >/dev/null

for i in $(seq "$PODS"); do
  id=overhead-$$-$i
  IDS+=("$id")
  t0=$(date +%s.%N)
  ctr_ run -d --runtime io.containerd.kata.v2 "$IMAGE" "$id" sleep 1000000 >/dev/null
  printf 'pod %s running after %.1f s\n' "$id" "$(echo "$(date +%s.%N) - $t0" | bc)"
done
if [ "$BUSY" -gt 0 ]; then
  echo "keeping the pods busy for ${BUSY}s"
  busy_pids=()
  for id in "${IDS[@]}"; do
    ctr_ task exec --exec-id busy "$id" sh -c "end=\$((\$(date +%s) + $BUSY)); while [ \$(date +%s) -lt \$end ]; do
      find / -xdev >/dev/null 2>&1; ls -lR /proc/self /sys/class >/dev/null 2>&1; ps >/dev/null;
      dd if=/dev/zero of=/tmp/f bs=1M count=32 2>/dev/null; md5sum /tmp/f >/dev/null; rm -f /tmp/f; done" &
    busy_pids+=($!)
  done
  wait "${busy_pids[@]}"
fi
echo "settling ${SETTLE}s"
sleep "$SETTLE"

# The shim serving $1 (its long-running instance: the one without a "start"/"delete" action), QEMU and virtiofsd
# whose command lines name the sandbox's VM directory, and all their descendants.
pids_of() {
  ps -eo pid=,ppid=,args= | awk -v id="$1" -v sock="$SOCK" '
    {
      pid = $1; ppid[pid] = $2; args = $0; sub(/^ *[0-9]+ +[0-9]+ +/, "", args)
      # the long-running shim instance ("... -id ID -socket S serve"), not a "start" or "delete" invocation
      if (args ~ /containerd-shim-kata-v2/ && index(args, "-address " sock " ") && index(args " ", "-id " id " ") &&
          args !~ / (start|delete)$/) seed[pid] = 1
      if (index(args, "/run/vc/vm/" id "/")) seed[pid] = 1
    }
    END {
      do { changed = 0; for (p in ppid) if (!(p in seed) && (ppid[p] in seed)) { seed[p] = 1; changed = 1 } } while (changed)
      for (p in seed) print p
    }' | sort -n
}

kind_of() {
  local args
  args=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline")
  case "$args" in
    *qemu-system*) echo qemu ;;
    *virtiofsd*) echo virtiofsd ;;
    *containerd-shim-kata-v2*) echo shim ;;
    *) echo "other:$(basename "${args%% *}")" ;;
  esac
}

memkb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
cputicks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)

echo
echo "processes of pod ${IDS[0]}:"
for p in $(pids_of "${IDS[0]}"); do printf '  %-6s %-10s %s\n' "$p" "$(kind_of "$p")" "$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-150)"; done
echo
printf '%-7s %-10s %10s %10s %10s %10s %8s\n' sample process RSS_kB PSS_kB Anon_kB Shmem_kB cpu_%
for s in $(seq "$SAMPLES"); do
  declare -A t0=() 
  for id in "${IDS[@]}"; do for p in $(pids_of "$id"); do t0[$p]=$(cputicks "$p"); done; done
  sleep "$INTERVAL"
  declare -A rss=() pss=() anon=() shm=() cpu=()
  for id in "${IDS[@]}"; do
    for p in $(pids_of "$id"); do
      k=$(kind_of "$p")
      rss[$k]=$(( ${rss[$k]:-0} + $(memkb "$p" Rss) ))
      pss[$k]=$(( ${pss[$k]:-0} + $(memkb "$p" Pss) ))
      anon[$k]=$(( ${anon[$k]:-0} + $(memkb "$p" Anonymous) ))
      shm[$k]=$(( ${shm[$k]:-0} + $(memkb "$p" Pss_Shmem) ))
      cpu[$k]=$(( ${cpu[$k]:-0} + $(cputicks "$p") - ${t0[$p]:-$(cputicks "$p")} ))
    done
  done
  tr=0 tp=0 ta=0 ts=0 tc=0
  for k in $(printf '%s\n' "${!rss[@]}" | sort); do
    pct=$(echo "scale=1; ${cpu[$k]} * 100 / $HZ / $INTERVAL / $PODS" | bc)
    printf '%-7s %-10s %10d %10d %10d %10d %8s\n' "$s" "$k" $(( rss[$k] / PODS )) $(( pss[$k] / PODS )) $(( anon[$k] / PODS )) $(( shm[$k] / PODS )) "$pct"
    tr=$(( tr + rss[$k] )) tp=$(( tp + pss[$k] )) ta=$(( ta + anon[$k] )) ts=$(( ts + shm[$k] )) tc=$(( tc + cpu[$k] ))
  done
  printf '%-7s %-10s %10d %10d %10d %10d %8s\n' "$s" "TOTAL/pod" $(( tr / PODS )) $(( tp / PODS )) $(( ta / PODS )) $(( ts / PODS )) "$(echo "scale=1; $tc * 100 / $HZ / $INTERVAL / $PODS" | bc)"
  unset t0 rss pss anon shm cpu
done
echo
echo "(per pod, averaged over $PODS pod(s); cpu_% = percent of one core over ${INTERVAL}s)"
