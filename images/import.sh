#!/usr/bin/env bash
# Imports kata-ts's local test images (busybox, pause, nginx; see images/build.sh) into containerd with `ctr`.
#
# Idempotent: an image whose name already points at the tarball's manifest and whose layers are unpacked in the
# snapshotter is left alone; otherwise the tarball is imported again (`ctr images import` replaces the name).
#
# Usage: images/import.sh [--namespace NS] [--address SOCK] [--dir DIR] [--snapshotter NAME] [--only LIST]
#                         [--no-build] [--force]
#   --namespace NS      containerd namespace (default: $CONTAINERD_NAMESPACE or "default"; CRI uses "k8s.io");
#                       may be given several times
#   --address SOCK      containerd socket (default: $CONTAINERD_ADDRESS or /run/containerd/containerd.sock)
#   --dir DIR           where the tarballs are (default /var/cache/kata-ts/images)
#   --snapshotter NAME  snapshotter to unpack into (default: ctr's default, overlayfs)
#   --only LIST         only these images (comma separated: busybox,pause,nginx)
#   --no-build          do not run images/build.sh first (by default it runs, and does nothing when up to date)
#   --force             import even when the image is already there
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

die() {
  printf 'import.sh: error: %s\n' "$*" >&2
  exit 1
}
log() { printf 'import.sh: %s\n' "$*" >&2; }

NAMESPACES=()
ADDRESS=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}
DIR=/var/cache/kata-ts/images
SNAPSHOTTER=${CONTAINERD_SNAPSHOTTER:-}
ONLY="busybox pause nginx"
BUILD=1
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace | -n) [ $# -ge 2 ] || die "$1 needs a value"; NAMESPACES+=("$2"); shift 2 ;;
    --namespace=*) NAMESPACES+=("${1#*=}"); shift ;;
    --address | -a) [ $# -ge 2 ] || die "$1 needs a value"; ADDRESS=$2; shift 2 ;;
    --address=*) ADDRESS=${1#*=}; shift ;;
    --dir) [ $# -ge 2 ] || die "$1 needs a value"; DIR=$2; shift 2 ;;
    --dir=*) DIR=${1#*=}; shift ;;
    --snapshotter) [ $# -ge 2 ] || die "$1 needs a value"; SNAPSHOTTER=$2; shift 2 ;;
    --snapshotter=*) SNAPSHOTTER=${1#*=}; shift ;;
    --only) [ $# -ge 2 ] || die "$1 needs a value"; ONLY=${2//,/ }; shift 2 ;;
    --only=*) ONLY=${1#*=}; ONLY=${ONLY//,/ }; shift ;;
    --no-build) BUILD=0; shift ;;
    --force) FORCE=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ ${#NAMESPACES[@]} -gt 0 ] || NAMESPACES=("${CONTAINERD_NAMESPACE:-default}")
command -v ctr >/dev/null || die "ctr not found (Debian package containerd)"
[ -S "$ADDRESS" ] || die "no containerd socket at $ADDRESS"

if [ "$BUILD" = 1 ]; then
  "$HERE/build.sh" --out "$DIR" --only "${ONLY// /,}" >/dev/null
fi

SNAP_ARGS=()
[ -z "$SNAPSHOTTER" ] || SNAP_ARGS=(--snapshotter "$SNAPSHOTTER")

# Reads one member of a tarball.
member() { tar -xOf "$1" "$2"; }

# From our own compact JSON (see build.sh): the first value of a string field.
field() { sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$1" | head -n1; }

sha256_str() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

rc=0
for name in $ONLY; do
  tarball="$DIR/$name.tar"
  [ -f "$tarball" ] || die "$tarball not found (run images/build.sh)"
  index=$(member "$tarball" index.json)
  ref=$(field "$index" io.containerd.image.name)
  manifest_digest=$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$index")
  if [ -z "$ref" ] || [ -z "$manifest_digest" ]; then die "$tarball: no image name or manifest digest in index.json"; fi
  manifest=$(member "$tarball" "blobs/sha256/${manifest_digest#sha256:}")
  config_digest=$(sed -n 's/.*"config":{"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$manifest")
  config=$(member "$tarball" "blobs/sha256/${config_digest#sha256:}")
  # The chain ID of the top layer names the unpacked snapshot (identity.ChainID).
  chain=''
  for diff in $(sed -n 's/.*"diff_ids":\[\([^]]*\)\].*/\1/p' <<<"$config" | tr -d '"' | tr ',' ' '); do
    if [ -z "$chain" ]; then chain=$diff; else chain="sha256:$(sha256_str "$chain $diff")"; fi
  done
  [ -n "$chain" ] || die "$tarball: no diff_ids in the image config"

  for ns in "${NAMESPACES[@]}"; do
    ctr_ns=(ctr --address "$ADDRESS" --namespace "$ns")
    current=$("${ctr_ns[@]}" images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')
    if [ "$FORCE" = 0 ] && [ "$current" = "$manifest_digest" ] &&
      "${ctr_ns[@]}" snapshots "${SNAP_ARGS[@]}" info "$chain" >/dev/null 2>&1; then
      printf '%-8s %-36s ns=%-8s up to date (%s)\n' "$name" "$ref" "$ns" "$manifest_digest"
      continue
    fi
    if ! "${ctr_ns[@]}" images import "${SNAP_ARGS[@]}" "$tarball" >/dev/null; then
      log "importing $tarball into namespace $ns failed"
      rc=1
      continue
    fi
    current=$("${ctr_ns[@]}" images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')
    if [ "$current" != "$manifest_digest" ]; then
      log "$ref in namespace $ns points at '${current:-nothing}', expected $manifest_digest"
      rc=1
      continue
    fi
    printf '%-8s %-36s ns=%-8s imported  (%s)\n' "$name" "$ref" "$ns" "$manifest_digest"
  done
done
exit "$rc"
