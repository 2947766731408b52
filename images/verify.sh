#!/usr/bin/env bash
# End-to-end check of kata-ts's local test images against a private containerd 1.6 with runc:
#   builds them (images/build.sh, cached), starts a private containerd (temporary root, state and sockets; CRI
#   disabled; nothing outside the temporary directory except ctr/shim's fixed /run/containerd/{fifo,s,runc}),
#   imports them into the "default" and "k8s.io" namespaces (images/import.sh, twice, to check idempotence), and
#   runs them:
#     busybox: uname -a, the /etc files, /tmp mode 1777, the applets
#     pause:   stays up, exits 0 on SIGTERM; reaps orphans as PID 1 (host-side check with unshare/nsenter)
#     nginx:   nginx -t; the image's own Cmd answers on port 80 inside the container's network namespace (lo is
#              brought up there via nsenter); test-8088.conf answers on 127.0.0.1:8088 with --net-host (only when
#              that host port is free); SIGQUIT stops it with exit status 0
#   then stops containerd and removes everything it made.
# Usage: images/verify.sh [--out DIR]   (DIR: the image directory, default /var/cache/kata-ts/images)
# Needs root, containerd, ctr, runc, busybox (or curl), unshare, nsenter, ip, ss, ps. Prints "N passed, N failed" last; exit 1 on a failure.
# shellcheck disable=SC2016 # the single-quoted scripts are expanded by the inner shell on purpose
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=/var/cache/kata-ts/images
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;/shellcheck/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "verify.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "verify.sh: needs root" >&2; exit 2; }
for t in containerd ctr runc unshare nsenter ip ss ps; do
  command -v "$t" >/dev/null || { echo "verify.sh: $t not found" >&2; exit 2; }
done

command -v curl >/dev/null || command -v busybox >/dev/null || { echo "verify.sh: neither curl nor busybox" >&2; exit 2; }

# Host-side HTTP (loopback only): curl when there, else busybox wget (Debian's busybox 1.35 wget crashes with -T).
http_get() {
  if command -v curl >/dev/null; then curl -s --max-time 2 "$1"; else timeout 3 busybox wget -q -O - "$1"; fi
}
http_code() {
  if command -v curl >/dev/null; then
    curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$1"
  else
    timeout 3 busybox wget -S -O /dev/null "$1" 2>&1 | awk '$1 ~ /^HTTP\// { print $2; exit }'
  fi
}

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); printf 'ok   %s\n' "$*"; }
bad() { FAIL=$((FAIL + 1)); printf 'FAIL %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

T0=$EPOCHREALTIME
"$HERE/build.sh" --out "$OUT"
awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "build.sh: %.1f s\n", b - a }'

TMP=$(mktemp -d /tmp/kata-ts-images-verify.XXXXXX)
SOCK="$TMP/containerd.sock"
RUN_EXISTED=0
[ -d /run/containerd ] && RUN_EXISTED=1
CTRD_PID=''
PAUSE_HOST=''
CONTAINERS=()

cleanup() {
  set +e
  local c ns
  for c in "${CONTAINERS[@]}"; do
    ns=${c%%/*}
    c=${c#*/}
    ctr -a "$SOCK" -n "$ns" task kill -s SIGKILL "$c" >/dev/null 2>&1
    ctr -a "$SOCK" -n "$ns" task delete -f "$c" >/dev/null 2>&1
    ctr -a "$SOCK" -n "$ns" containers rm "$c" >/dev/null 2>&1
  done
  [ -z "$PAUSE_HOST" ] || kill -KILL "$PAUSE_HOST" 2>/dev/null
  if [ -n "$CTRD_PID" ]; then
    kill -TERM "$CTRD_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$CTRD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CTRD_PID" 2>/dev/null
    wait "$CTRD_PID" 2>/dev/null
  fi
  # Mounts left under our directory (should be none), deepest first.
  grep -F " $TMP/" /proc/self/mounts | awk '{ print $2 }' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$TMP"
  # The fixed directories ctr and the shims use: remove only what is empty (others may use them).
  rmdir /run/containerd/runc/default /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd/fifo \
    /run/containerd/s 2>/dev/null
  [ "$RUN_EXISTED" = 1 ] || rmdir /run/containerd 2>/dev/null
  return 0
}
trap cleanup EXIT

cat >"$TMP/config.toml" <<EOF
version = 2
root = "$TMP/root"
state = "$TMP/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$TMP/opt"
EOF
containerd --config "$TMP/config.toml" >"$TMP/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do
  ctr -a "$SOCK" version >/dev/null 2>&1 && break
  kill -0 "$CTRD_PID" 2>/dev/null || { tail -20 "$TMP/containerd.log"; exit 1; }
  sleep 0.1
done
check "private containerd is up ($(ctr -a "$SOCK" version 2>/dev/null | awk '/Version:/ { v=$2 } END { print v }'))" \
  ctr -a "$SOCK" version

C=(ctr -a "$SOCK")

# --- import, twice: the second run must find everything up to date.
imp1=$("$HERE/import.sh" --no-build --dir "$OUT" --address "$SOCK" --namespace default --namespace k8s.io 2>&1) || true
printf '%s\n' "$imp1"
check "import into default and k8s.io: 6 images imported" test "$(grep -c ' imported ' <<<"$imp1")" = 6
imp2=$("$HERE/import.sh" --no-build --dir "$OUT" --address "$SOCK" --namespace default --namespace k8s.io 2>&1) || true
check "second import is a no-op (6 up to date)" test "$(grep -c ' up to date ' <<<"$imp2")" = 6
for ns in default k8s.io; do
  ls_out=$("${C[@]}" -n "$ns" images ls)
  for ref in docker.io/library/busybox:kata-ts registry.k8s.io/pause:kata-ts docker.io/library/nginx:kata-ts; do
    check "ctr -n $ns images ls shows $ref" grep -q "^$ref " <<<"$ls_out"
  done
done
"${C[@]}" images ls

# --- busybox
out=$("${C[@]}" run --rm docker.io/library/busybox:kata-ts t1 uname -a 2>&1) || true
echo "busybox uname -a: $out"
check "busybox: uname -a prints Linux" grep -q '^Linux ' <<<"$out"
out=$("${C[@]}" run --rm docker.io/library/busybox:kata-ts t2 sh -c \
  'stat -c "%a %n" /tmp /root; cat /etc/passwd /etc/group /etc/hosts; ls /bin | wc -l; id; echo "PATH=$PATH"; pwd' 2>&1) || true
printf '%s\n' "$out" | sed 's/^/  | /'
check "busybox: /tmp is 1777" grep -q '^1777 /tmp$' <<<"$out"
check "busybox: passwd has root and nobody" bash -c 'grep -q "^root:x:0:0:" <<<"$1" && grep -q "^nobody:x:65534:" <<<"$1"' _ "$out"
check "busybox: /bin has busybox and its applets (> 250 entries)" test "$(sed -n '/^[0-9][0-9]*$/p' <<<"$out" | tail -n1)" -gt 250
check "busybox: runs as root in /" bash -c 'grep -q "^uid=0(root) gid=0(root)" <<<"$1" && grep -qx / <<<"$1"' _ "$out"
# The default Cmd (sh) detached stays up (ctr gives it no stdin that ends); ctr task exec works in it.
"${C[@]}" run -d docker.io/library/busybox:kata-ts t3 >/dev/null 2>&1 || true
CONTAINERS+=(default/t3)
sleep 0.5
check "busybox: the default Cmd (sh) runs detached" bash -c '"$@" task ls | grep -q "^t3 .*RUNNING"' _ "${C[@]}"
out=$("${C[@]}" task exec --exec-id e1 t3 sh -c 'echo exec-ok' 2>&1) || true
check "busybox: ctr task exec in it" grep -qx exec-ok <<<"$out"
"${C[@]}" task kill -s SIGKILL t3 >/dev/null 2>&1 || true
for _ in $(seq 50); do "${C[@]}" task ls | grep -q '^t3 .*STOPPED' && break; sleep 0.1; done
"${C[@]}" task delete t3 >/dev/null 2>&1 || true
"${C[@]}" containers rm t3 >/dev/null 2>&1 || true

# --- pause in a container: stays up, SIGTERM -> exit 0
"${C[@]}" run --rm registry.k8s.io/pause:kata-ts p1 >"$TMP/p1.log" 2>&1 &
p1=$!
CONTAINERS+=(default/p1)
sleep 1
check "pause: running after 1 s" bash -c '"$@" task ls | grep -q "^p1 .*RUNNING"' _ "${C[@]}"
"${C[@]}" task kill -s SIGTERM p1 >/dev/null 2>&1 || true
rc=0
wait "$p1" || rc=$?
check "pause: exits 0 on SIGTERM (ctr run exit status $rc; $(tr '\n' ' ' <"$TMP/p1.log"))" test "$rc" = 0

# --- pause as PID 1 of a fresh PID namespace on the host: orphans are reaped.
mkdir -p "$TMP/pause-img"
tar -xOf "$OUT/pause.tar" index.json >"$TMP/pause-index.json"
pm=$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$TMP/pause-index.json")
pl=$(tar -xOf "$OUT/pause.tar" "blobs/sha256/$pm" | sed -n 's/.*"layers":\[{"digest":"sha256:\([0-9a-f]*\)".*/\1/p')
tar -xOf "$OUT/pause.tar" "blobs/sha256/$pl" | tar -x -C "$TMP/pause-img" pause
unshare --fork --pid --mount-proc "$TMP/pause-img/pause" 2>"$TMP/pause-host.log" &
ushare=$!
for _ in $(seq 50); do PAUSE_HOST=$(pgrep -P "$ushare" || true); [ -z "$PAUSE_HOST" ] || break; sleep 0.1; done
if [ -n "$PAUSE_HOST" ]; then
  # sh exits at once; its background sleep is re-parented to pause (PID 1 there) and must be reaped when it ends.
  nsenter -t "$PAUSE_HOST" -p -m -- /bin/sh -c 'sleep 1 & exit 0'
  sleep 0.3
  kids=$(ps -o pid=,stat=,comm= --ppid "$PAUSE_HOST" || true)
  check "pause: adopted the orphan (${kids:-none})" grep -q sleep <<<"$kids"
  sleep 1.5
  kids=$(ps -o pid=,stat=,comm= --ppid "$PAUSE_HOST" || true)
  check "pause: reaped it, no zombie left (${kids:-none})" test -z "$kids"
  kill -TERM "$PAUSE_HOST"
  rc=0
  wait "$ushare" || rc=$?
  PAUSE_HOST=''
  check "pause: PID 1 exits 0 on SIGTERM (status $rc)" test "$rc" = 0
else
  bad "pause: did not start under unshare"
fi

# --- nginx
out=$("${C[@]}" run --rm docker.io/library/nginx:kata-ts n0 nginx -t 2>&1) || true
printf '%s\n' "$out" | sed 's/^/  | /'
check "nginx: nginx -t passes" grep -q 'test is successful' <<<"$out"
out=$("${C[@]}" run --rm docker.io/library/nginx:kata-ts n0b nginx -t -c /etc/nginx/test-8088.conf 2>&1) || true
check "nginx: nginx -t -c /etc/nginx/test-8088.conf passes" grep -q 'test is successful' <<<"$out"

# The image's own Cmd (port 80) in the container's private network namespace.
"${C[@]}" run -d docker.io/library/nginx:kata-ts n1 >/dev/null
CONTAINERS+=(default/n1)
n1pid=$("${C[@]}" task ls | awk '$1 == "n1" { print $2 }')
# runc leaves lo down in the new network namespace (ctr grants no CAP_NET_ADMIN): bring it up from the host, then
# fetch with the image's own busybox wget.
nsenter -t "$n1pid" -n -- ip link set lo up || true
body=''
for i in $(seq 30); do
  body=$("${C[@]}" task exec --exec-id "w$i" n1 wget -q -O - http://127.0.0.1:80/ 2>/dev/null || true)
  [ -z "$body" ] || break
  sleep 0.1
done
check "nginx: the image's Cmd answers on port 80 in its own netns with 'kata-ts nginx' (busybox wget inside)" \
  grep -q 'kata-ts nginx' <<<"$body"
"${C[@]}" task kill -s SIGQUIT n1 >/dev/null 2>&1 || true
for _ in $(seq 50); do "${C[@]}" task ls | grep -q '^n1 .*STOPPED' && break; sleep 0.1; done
check "nginx: SIGQUIT (the image's StopSignal) stops it" bash -c '"$@" task ls | grep -q "^n1 .*STOPPED"' _ "${C[@]}"
"${C[@]}" task delete n1 >/dev/null 2>&1 || true
"${C[@]}" containers rm n1 >/dev/null 2>&1 || true

# test-8088.conf with the host network, loopback only.
if ss -Hltn 'sport = :8088' | grep -q .; then
  echo "skip nginx --net-host check: 127.0.0.1:8088 is in use on this host"
else
  "${C[@]}" run --rm --net-host docker.io/library/nginx:kata-ts n2 nginx -g 'daemon off;' -c /etc/nginx/test-8088.conf \
    >"$TMP/n2.log" 2>&1 &
  n2=$!
  CONTAINERS+=(default/n2)
  body=''
  for _ in $(seq 50); do
    body=$(http_get http://127.0.0.1:8088/ || true)
    [ -z "$body" ] || break
    sleep 0.1
  done
  check "nginx: --net-host test-8088.conf answers on 127.0.0.1:8088" grep -q 'kata-ts nginx' <<<"$body"
  check "nginx: 404 for a missing page" test "$(http_code http://127.0.0.1:8088/nope)" = 404
  "${C[@]}" task kill -s SIGQUIT n2 >/dev/null 2>&1 || true
  rc=0
  wait "$n2" || rc=$?
  check "nginx: exits 0 after SIGQUIT (status $rc)" test "$rc" = 0
  check "nginx: access log went to stdout" grep -q '"GET / HTTP/1.1" 200' "$TMP/n2.log"
fi

# --- the k8s.io namespace: the images run there too.
out=$("${C[@]}" -n k8s.io run --rm docker.io/library/busybox:kata-ts k1 echo k8s-ok 2>&1) || true
check "k8s.io namespace: busybox runs" grep -qx k8s-ok <<<"$out"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
