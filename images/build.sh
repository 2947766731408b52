#!/usr/bin/env bash
# Builds kata-ts's local OCI test images from Debian packages, without any container registry:
#   busybox.tar  docker.io/library/busybox:kata-ts   busybox-static, its applets in /bin, /etc basics
#   pause.tar    registry.k8s.io/pause:kata-ts       /pause from images/pause.c (gcc -static)
#   nginx.tar    docker.io/library/nginx:kata-ts     busybox layer + Debian's nginx with the libraries it needs
# Each tarball is an OCI image layout (oci-layout, index.json, blobs/sha256) plus a docker-style manifest.json,
# loadable by `ctr images import` (containerd 1.6; checked by images/verify.sh); `podman load` takes the same
# format (not checked here: podman is not installed on this machine).
#
# Reproducible: fixed mtimes, entries sorted by name, owner 0:0 (numeric), JSON written in one fixed form; the
# same package versions and the same scripts give byte-identical tarballs.
# Idempotent: each tarball has a key (sha256 over this script, pause.c, the toolchain and the exact Debian
# package versions); an existing tarball with the same key is kept, so a second run does no work and no download.
#
# Usage: images/build.sh [--out DIR] [--only busybox,pause,nginx] [--force]
#   --out DIR   output directory (default /var/cache/kata-ts/images)
#   --only L    build only these images (comma separated)
#   --force     rebuild even when the key matches
# Environment: KATA_TS_DEB_CACHE (downloaded .deb files; default DIR/.debs), KATA_TS_NO_APT_UPDATE=1 (never run
# `apt-get update`, which is otherwise tried once when a package has no candidate or cannot be downloaded).
# Needs: root (or write access to DIR), bash, GNU tar, apt-get/apt-cache, dpkg-deb, gcc + libc6-dev (static
# libc), binutils (readelf), flock, sha256sum.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

# Bump when the image layout or contents change in a way the inputs below do not capture.
readonly FORMAT=1
readonly EPOCH=0
readonly CREATED=1970-01-01T00:00:00Z
readonly ENV_PATH=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
readonly ALL_IMAGES="busybox pause nginx"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

declare -A REF=(
  [busybox]=docker.io/library/busybox:kata-ts
  [pause]=registry.k8s.io/pause:kata-ts
  [nginx]=docker.io/library/nginx:kata-ts
)

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
  printf 'build.sh: error: %s\n' "$*" >&2
  exit 1
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

OUT=/var/cache/kata-ts/images
FORCE=0
ONLY=$ALL_IMAGES
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --only) [ $# -ge 2 ] || die "--only needs a list"; ONLY=${2//,/ }; shift 2 ;;
    --only=*) ONLY=${1#--only=}; ONLY=${ONLY//,/ }; shift ;;
    --force) FORCE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
for n in $ONLY; do [ -n "${REF[$n]:-}" ] || die "unknown image '$n' (known: $ALL_IMAGES)"; done

for tool in tar apt-get apt-cache dpkg-deb gcc readelf flock sha256sum find sort; do
  command -v "$tool" >/dev/null || die "'$tool' not found (Debian packages: tar apt dpkg gcc libc6-dev binutils util-linux coreutils findutils)"
done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is needed (--sort, --mtime)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEB_CACHE=${KATA_TS_DEB_CACHE:-$OUT/.debs}
mkdir -p "$DEB_CACHE"

# One build at a time per output directory.
exec 9>"$OUT/.lock"
flock 9

# Work directories of builds that were killed (we hold the lock, so none is in use).
rm -rf "$OUT"/.work.*
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# ---------------------------------------------------------------------------------------------------------------
# JSON, always compact, keys in a fixed (sorted) order.
jstr() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
jarr() {
  local out='' sep='' x
  for x in "$@"; do
    out+="$sep$(jstr "$x")"
    sep=,
  done
  printf '[%s]' "$out"
}

# ---------------------------------------------------------------------------------------------------------------
# Deterministic tar of the contents of a directory: every path listed explicitly in byte order (a parent always
# sorts before its children), GNU format (no pax atime/ctime records), mtime EPOCH, numeric owner 0:0.
make_tar() {
  local src=$1 out=$2
  (cd "$src" && find . -mindepth 1 -printf '%P\0' | sort -z) >"$WORK/tar-list"
  tar --create --file "$out" --directory "$src" --format=gnu --no-recursion --null --verbatim-files-from \
    --files-from "$WORK/tar-list" --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner
}

# ---------------------------------------------------------------------------------------------------------------
# Debian packages: versions from the local package lists (no network), .deb files from the cache or apt-get download.
APT_UPDATED=0
apt_update_once() {
  [ "$APT_UPDATED" = 0 ] || return 1
  [ "${KATA_TS_NO_APT_UPDATE:-0}" != 1 ] || return 1
  APT_UPDATED=1
  log "running apt-get update (package lists missing or stale)"
  apt-get update -qq >&2 || return 1
}

# Candidate records of packages, one `apt-cache show` call (apt-cache parses every package list on each call, which
# costs about a second here): "package<TAB>version<TAB>section<TAB>dependencies" per line.
apt_candidates() {
  apt-cache show --no-all-versions "$@" 2>/dev/null | awk -F': ' '
    function flush() { if (pkg != "") printf "%s\t%s\t%s\t%s\n", pkg, ver, sec, deps; pkg = ver = sec = deps = "" }
    /^$/ { flush(); next }
    $1 == "Package" { pkg = $2 }
    $1 == "Version" { ver = $2 }
    $1 == "Section" { sec = $2 }
    $1 == "Depends" || $1 == "Pre-Depends" { deps = deps (deps == "" ? "" : ", ") substr($0, length($1) + 3) }
    END { flush() }' || true
}

# Dependency names of a Depends field: first alternative of each, no version or architecture qualifier.
dep_names() {
  printf '%s\n' "$1" | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:[a-z0-9]*//' -e 's/[[:space:]]//g' | grep -v '^$' || true
}

# Identifies the state of the package lists, so that the resolution below is redone only when they change.
apt_state_id() {
  {
    sha256 "$SELF"
    stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* /var/lib/apt/lists/*Release 2>/dev/null || true
    cat /etc/apt/sources.list /etc/apt/sources.list.d/* /etc/apt/preferences /etc/apt/preferences.d/* 2>/dev/null || true
  } | sha256sum | cut -d' ' -f1
}

# Resolves VER (package -> candidate version) and NGINX_PKGS: nginx, nginx-common and the transitive closure of
# nginx's shared-library dependencies (section "libs" or a lib* name; iproute2, debconf etc. are not followed).
# Returns 1 when a package has no candidate. The result is cached in OUT/.resolved per package-list state.
declare -A VER=()
BUSYBOX_PKGS=(busybox-static)
NGINX_PKGS=()
resolve_packages() {
  local id line p v sec deps d
  id=$(apt_state_id)
  VER=()
  NGINX_PKGS=()
  if [ -f "$OUT/.resolved" ] && [ "$(head -n1 "$OUT/.resolved")" = "id $id" ]; then
    while read -r line p v; do
      case "$line" in
        ver) VER[$p]=$v ;;
        nginx) NGINX_PKGS+=("$p") ;;
      esac
    done <"$OUT/.resolved"
    return 0
  fi
  local -A seen=() keep=([nginx]=1 [nginx-common]=1) follow=([nginx]=1) depsof=() secof=()
  local level=(busybox-static nginx nginx-common) next
  while [ ${#level[@]} -gt 0 ]; do
    for p in "${level[@]}"; do seen[$p]=1; done
    while IFS=$'\t' read -r p v sec deps; do
      VER[$p]=$v
      secof[$p]=$sec
      depsof[$p]=$deps
    done < <(apt_candidates "${level[@]}")
    next=()
    for p in "${level[@]}"; do
      if [ -z "${VER[$p]:-}" ]; then
        log "Debian package '$p' has no candidate version"
        return 1
      fi
      if [ -z "${keep[$p]:-}" ] && { [ "${secof[$p]}" = libs ] || [[ "$p" == lib* ]]; }; then
        keep[$p]=1
        follow[$p]=1
      fi
      [ -n "${follow[$p]:-}" ] || continue
      for d in $(dep_names "${depsof[$p]}"); do
        [ -n "${seen[$d]:-}" ] || { seen[$d]=1; next+=("$d"); }
      done
    done
    level=("${next[@]}")
  done
  mapfile -t NGINX_PKGS < <(printf '%s\n' "${!keep[@]}" | sort)
  {
    printf 'id %s\n' "$id"
    for p in $(printf '%s\n' "${BUSYBOX_PKGS[@]}" "${NGINX_PKGS[@]}" | sort -u); do printf 'ver %s %s\n' "$p" "${VER[$p]}"; done
    for p in "${NGINX_PKGS[@]}"; do printf 'nginx %s\n' "$p"; done
  } >"$WORK/resolved"
  mv -f "$WORK/resolved" "$OUT/.resolved"
}

resolve_all() {
  resolve_packages && return 0
  apt_update_once || die "run apt-get update: Debian package lists are missing or stale"
  resolve_packages || die "Debian packages missing from the package lists even after apt-get update"
}

# Prints the path of PKG_VERSION's .deb, downloading it into DEB_CACHE when no local copy exists.
fetch_deb() {
  local pkg=$1 ver=$2 enc f dir
  enc=${ver//:/%3a}
  for dir in "$DEB_CACHE" /var/cache/apt/archives; do
    for f in "$dir/${pkg}_${enc}_"*.deb; do
      [ -f "$f" ] || continue
      if [ "$(dpkg-deb -f "$f" Package 2>/dev/null)" = "$pkg" ] && [ "$(dpkg-deb -f "$f" Version 2>/dev/null)" = "$ver" ]; then
        printf '%s\n' "$f"
        return 0
      fi
    done
  done
  log "downloading $pkg=$ver"
  (cd "$DEB_CACHE" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) || return 1
  for f in "$DEB_CACHE/${pkg}_${enc}_"*.deb; do
    [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
  done
  return 1
}

# ---------------------------------------------------------------------------------------------------------------
# Inputs and keys.
toolchain_id() {
  printf 'gcc %s\n' "$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)"
  dpkg-query -W -f='${Package} ${Version}\n' libc6-dev binutils 2>/dev/null || echo "dpkg-query unavailable"
}

# The human-readable inputs of one image; its sha256 is the image's key.
inputs_of() {
  local name=$1 p
  printf 'kata-ts images format %s\nimage %s %s\nbuild.sh %s\n' "$FORMAT" "$name" "${REF[$name]}" "$(sha256 "$SELF")"
  case "$name" in
    busybox) for p in "${BUSYBOX_PKGS[@]}"; do printf 'deb %s %s\n' "$p" "${VER[$p]}"; done ;;
    pause)
      printf 'pause.c %s\n' "$(sha256 "$HERE/pause.c")"
      toolchain_id
      ;;
    nginx) for p in "${BUSYBOX_PKGS[@]}" "${NGINX_PKGS[@]}"; do printf 'deb %s %s\n' "$p" "${VER[$p]}"; done ;;
  esac
}

up_to_date() {
  local name=$1 key=$2
  [ "$FORCE" = 0 ] && [ -f "$OUT/$name.tar" ] && [ -f "$OUT/$name.tar.key" ] && [ "$(cat "$OUT/$name.tar.key")" = "$key" ]
}

# ---------------------------------------------------------------------------------------------------------------
# Image assembly: NAME CONFIG_JSON(the "config" object) HISTORY_TEXT LAYER_TAR...
assemble_image() {
  local name=$1 config=$2 history=$3
  shift 3
  local dir="$WORK/oci-$name" layer d s diff_ids=() layer_descs=() layer_paths=() hist=() i
  mkdir -p "$dir/blobs/sha256"
  i=0
  for layer in "$@"; do
    d=$(sha256 "$layer")
    s=$(size_of "$layer")
    cp "$layer" "$dir/blobs/sha256/$d"
    diff_ids+=("\"sha256:$d\"")
    layer_descs+=("{\"digest\":\"sha256:$d\",\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"size\":$s}")
    layer_paths+=("\"blobs/sha256/$d\"")
    i=$((i + 1))
    hist+=("{\"created\":\"$CREATED\",\"created_by\":$(jstr "kata-ts images/build.sh: $history (layer $i)")}")
  done
  local IFS=,
  printf '{"architecture":"amd64","config":%s,"created":"%s","history":[%s],"os":"linux","rootfs":{"diff_ids":[%s],"type":"layers"}}' \
    "$config" "$CREATED" "${hist[*]}" "${diff_ids[*]}" >"$WORK/config.json"
  local cd cs
  cd=$(sha256 "$WORK/config.json")
  cs=$(size_of "$WORK/config.json")
  mv "$WORK/config.json" "$dir/blobs/sha256/$cd"
  printf '{"config":{"digest":"sha256:%s","mediaType":"application/vnd.oci.image.config.v1+json","size":%s},"layers":[%s],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}' \
    "$cd" "$cs" "${layer_descs[*]}" >"$WORK/manifest.json"
  local md ms
  md=$(sha256 "$WORK/manifest.json")
  ms=$(size_of "$WORK/manifest.json")
  mv "$WORK/manifest.json" "$dir/blobs/sha256/$md"
  local ref=${REF[$name]}
  printf '{"manifests":[{"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s},"digest":"sha256:%s","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"amd64","os":"linux"},"size":%s}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}' \
    "$(jstr "$ref")" "$(jstr "${ref##*:}")" "$md" "$ms" >"$dir/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  printf '[{"Config":"blobs/sha256/%s","Layers":[%s],"RepoTags":[%s]}]' "$cd" "${layer_paths[*]}" "$(jstr "$ref")" >"$dir/manifest.json"
  unset IFS
  make_tar "$dir" "$WORK/$name.tar"
  rm -rf "$dir"
}

# Moves a finished tarball into OUT, then its key (the key last: a tarball without a matching key is rebuilt).
publish() {
  local name=$1 key=$2 inputs=$3
  rm -f "$OUT/$name.tar.key"
  mv -f "$WORK/$name.tar" "$OUT/$name.tar"
  { printf '%s' "$inputs"; printf 'output %s sha256:%s\n' "$name.tar" "$(sha256 "$OUT/$name.tar")"; } >"$OUT/$name.tar.inputs"
  printf '%s\n' "$key" >"$WORK/$name.key"
  mv -f "$WORK/$name.key" "$OUT/$name.tar.key"
}

# ---------------------------------------------------------------------------------------------------------------
# Root filesystems.
declare -A DEB=()
POOL="$WORK/pool"

extract() {
  local pkg=$1
  [ ! -d "$POOL/$pkg" ] || return 0
  mkdir -p "$POOL/$pkg"
  dpkg-deb -x "${DEB[$pkg]}" "$POOL/$pkg"
}

add_copyright() {
  local pkg=$1 root=$2
  if [ -f "$POOL/$pkg/usr/share/doc/$pkg/copyright" ]; then
    install -D -m 0644 "$POOL/$pkg/usr/share/doc/$pkg/copyright" "$root/usr/share/doc/$pkg/copyright"
  fi
}

BUSYBOX_LAYER=''
busybox_layer() {
  [ -z "$BUSYBOX_LAYER" ] || return 0
  extract busybox-static
  local root="$WORK/root-busybox" a n=0
  mkdir -p "$root"/{bin,dev,etc,proc,root,sys,tmp,var/www}
  chmod 0700 "$root/root"
  chmod 1777 "$root/tmp"
  install -m 0755 "$POOL/busybox-static/bin/busybox" "$root/bin/busybox"
  local applets=()
  mapfile -t applets < <("$root/bin/busybox" --list)
  for a in "${applets[@]}"; do
    case "$a" in busybox | */* | '') continue ;; esac
    ln -s busybox "$root/bin/$a"
    n=$((n + 1))
  done
  [ "$n" -gt 100 ] || die "busybox --list gave only $n applets"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  printf '<!DOCTYPE html>\n<html><head><title>kata-ts busybox httpd</title></head><body>kata-ts busybox httpd</body></html>\n' \
    >"$root/var/www/index.html"
  add_copyright busybox-static "$root"
  make_tar "$root" "$WORK/layer-busybox.tar"
  rm -rf "$root"
  BUSYBOX_LAYER="$WORK/layer-busybox.tar"
}

build_busybox() {
  busybox_layer
  assemble_image busybox \
    "{\"Cmd\":$(jarr sh),\"Env\":$(jarr "$ENV_PATH"),\"WorkingDir\":\"/\"}" \
    "busybox-static ${VER[busybox-static]}" "$BUSYBOX_LAYER"
}

build_pause() {
  local root="$WORK/root-pause"
  mkdir -p "$root" "$WORK/cc"
  cp "$HERE/pause.c" "$WORK/cc/pause.c"
  (cd "$WORK/cc" && gcc -static -Os -s -Wall -Wextra -Werror -ffile-prefix-map="$WORK/cc"=. -o pause pause.c) ||
    die "compiling pause.c failed (needs Debian packages gcc and libc6-dev)"
  install -m 0755 "$WORK/cc/pause" "$root/pause"
  make_tar "$root" "$WORK/layer-pause.tar"
  rm -rf "$root"
  assemble_image pause \
    "{\"Entrypoint\":$(jarr /pause),\"Env\":$(jarr "$ENV_PATH"),\"WorkingDir\":\"/\"}" \
    "pause from images/pause.c" "$WORK/layer-pause.tar"
}

# Copies POOL-relative path REL (a file or a symlink chain) from the merged package tree into ROOT; sets COPIED to
# the path of the final regular file. Symlinks are followed inside the package tree, never on the host.
COPIED=''
copy_from_pool() {
  local rel=$1 root=$2 link target hops=0
  while :; do
    [ -e "$POOLALL/$rel" ] || [ -L "$POOLALL/$rel" ] || die "nginx: $rel not found in the extracted packages"
    mkdir -p "$root/$(dirname "$rel")"
    cp -a "$POOLALL/$rel" "$root/$rel"
    if [ ! -L "$POOLALL/$rel" ]; then
      COPIED=$rel
      return 0
    fi
    link=$(readlink "$POOLALL/$rel")
    case "$link" in
      /*) target=${link#/} ;;
      *) target=$(dirname "$rel")/$link ;;
    esac
    rel=$(realpath -m -s --relative-to=/ "/$target")
    hops=$((hops + 1))
    [ "$hops" -lt 10 ] || die "nginx: symlink loop at $rel"
  done
}

LIBDIRS=(lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 usr/lib64 lib usr/lib)

# Finds a shared library by soname in the merged package tree; prints its POOL-relative path.
find_lib() {
  local so=$1 d
  for d in "${LIBDIRS[@]}"; do
    if [ -e "$POOLALL/$d/$so" ]; then
      printf '%s\n' "$d/$so"
      return 0
    fi
  done
  return 1
}

nginx_conf() {
  local listen=$1 pidfile=$2
  cat <<EOF
# kata-ts test image: nginx in the foreground (the image's Cmd adds -g 'daemon off;'), logs to stdout/stderr,
# every writable path under /tmp.
user root;
worker_processes 1;
pid $pidfile;
error_log /dev/stderr notice;

events {
    worker_connections 256;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile off;
    keepalive_timeout 30;
    client_body_temp_path /tmp/nginx-client-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;

    server {
        listen $listen default_server;
        server_name _;
        root /usr/share/nginx/html;
        index index.html;
        location / {
            try_files \$uri \$uri/ =404;
        }
    }
}
EOF
}

build_nginx() {
  busybox_layer
  local p
  POOLALL="$WORK/pool-all"
  mkdir -p "$POOLALL"
  for p in "${NGINX_PKGS[@]}"; do
    extract "$p"
    cp -a "$POOL/$p/." "$POOLALL/"
  done
  local root="$WORK/root-nginx"
  mkdir -p "$root"
  copy_from_pool usr/sbin/nginx "$root"

  # Dynamic loader plus the NEEDED closure of nginx, resolved inside the extracted packages (not the host).
  local interp
  interp=$(readelf -lW "$POOLALL/usr/sbin/nginx" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
  [ -n "$interp" ] || die "nginx: no ELF interpreter found"
  copy_from_pool "${interp#/}" "$root"
  local -A done_so=()
  local queue=("$POOLALL/usr/sbin/nginx") f so rel
  # libgcc_s is dlopen()ed by glibc (thread cancellation, backtraces) and never NEEDED.
  local extra=(libgcc_s.so.1)
  for so in "${extra[@]}"; do
    rel=$(find_lib "$so") || die "nginx: $so not found"
    copy_from_pool "$rel" "$root"
  done
  while [ ${#queue[@]} -gt 0 ]; do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    for so in $(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      [ -z "${done_so[$so]:-}" ] || continue
      done_so[$so]=1
      rel=$(find_lib "$so") || die "nginx: shared library $so (needed by ${f#"$POOLALL"/}) is in none of: ${NGINX_PKGS[*]}"
      copy_from_pool "$rel" "$root"
      queue+=("$POOLALL/$COPIED")
    done
  done

  mkdir -p "$root/etc/nginx" "$root/usr/share/nginx/html" "$root/var/lib/nginx" "$root/var/log/nginx"
  install -m 0644 "$POOLALL/etc/nginx/mime.types" "$root/etc/nginx/mime.types"
  nginx_conf 80 /tmp/nginx.pid >"$root/etc/nginx/nginx.conf"
  nginx_conf 127.0.0.1:8088 /tmp/nginx-8088.pid >"$root/etc/nginx/test-8088.conf"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
    >"$root/etc/nsswitch.conf"
  printf '<!DOCTYPE html>\n<html><head><title>kata-ts nginx</title></head><body><h1>kata-ts nginx</h1></body></html>\n' \
    >"$root/usr/share/nginx/html/index.html"
  for p in "${NGINX_PKGS[@]}"; do add_copyright "$p" "$root"; done
  chmod -R u+w,go-w "$root"
  make_tar "$root" "$WORK/layer-nginx.tar"
  rm -rf "$root"

  local ports='{"80/tcp":{}}'
  assemble_image nginx \
    "{\"Cmd\":$(jarr nginx -g 'daemon off;'),\"Env\":$(jarr "$ENV_PATH"),\"ExposedPorts\":$ports,\"StopSignal\":\"SIGQUIT\",\"WorkingDir\":\"/\"}" \
    "nginx ${VER[nginx]}" "$BUSYBOX_LAYER" "$WORK/layer-nginx.tar"
}

# Removes .deb files of versions no longer used from our own cache (never from apt's).
prune_debs() {
  local f keep p
  for f in "$DEB_CACHE"/*.deb; do
    [ -f "$f" ] || continue
    keep=0
    for p in "${!VER[@]}"; do
      case "$(basename "$f")" in "${p}_${VER[$p]//:/%3a}_"*.deb) keep=1; break ;; esac
    done
    [ "$keep" = 1 ] || { log "removing unused $(basename "$f")"; rm -f "$f"; }
  done
}

# ---------------------------------------------------------------------------------------------------------------
main() {
  local name todo=() attempt p ok
  declare -A KEY=() INPUTS=() STATUS=()
  for attempt in 1 2; do
    resolve_all
    todo=()
    for name in $ONLY; do
      INPUTS[$name]=$(inputs_of "$name")$'\n'
      KEY[$name]=$(printf '%s' "${INPUTS[$name]}" | sha256sum | cut -d' ' -f1)
      if up_to_date "$name" "${KEY[$name]}"; then STATUS[$name]=cached; else todo+=("$name"); fi
    done
    [ ${#todo[@]} -gt 0 ] || break
    # The packages the images to build need.
    local need=()
    for name in "${todo[@]}"; do
      case "$name" in
        busybox) need+=("${BUSYBOX_PKGS[@]}") ;;
        nginx) need+=("${BUSYBOX_PKGS[@]}" "${NGINX_PKGS[@]}") ;;
      esac
    done
    ok=1
    DEB=()
    for p in $(printf '%s\n' "${need[@]}" | sort -u); do
      DEB[$p]=$(fetch_deb "$p" "${VER[$p]}") || { ok=0; break; }
    done
    [ "$ok" = 0 ] || break
    if [ "$attempt" = 2 ] || ! apt_update_once; then die "could not download the Debian packages $(printf '%s ' "${need[@]}")"; fi
  done

  for name in "${todo[@]}"; do
    log "building $name.tar (${REF[$name]})"
    "build_$name"
    publish "$name" "${KEY[$name]}" "${INPUTS[$name]}"
    STATUS[$name]=built
  done
  [ ${#todo[@]} -eq 0 ] || prune_debs
  for name in $ONLY; do
    printf '%-8s %-36s %-7s %9s bytes  %s\n' "$name" "${REF[$name]}" "${STATUS[$name]}" "$(size_of "$OUT/$name.tar")" "$OUT/$name.tar"
  done
}

main
