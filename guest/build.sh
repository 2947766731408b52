#!/usr/bin/env bash
# Build the kata-ts guest assets from Debian packages, reproducibly, cached by content hash:
#   vmlinux.container            uncompressed PVH ELF vmlinux from linux-image-amd64
#   kata-containers-initrd.img   small uncompressed initramfs: busybox, virtio/fs modules, /init
#   kata-containers.img          read-only ext4 root: busybox, crun, node, node-pty, agent, /sbin/init
#   kata-ts-guest.json           hashes and versions of the above
# Usage: guest/build.sh [--agent PATH_TO_agent.js] [--out DIR] [--force]
# Contract and figures: guest/README.md.
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$GUEST_DIR")
# shellcheck source=lib/common.sh
. "$GUEST_DIR/lib/common.sh"

OUT=/usr/share/kata-containers
AGENT=$REPO_DIR/dist/agent/agent.js
FORCE=0
CACHE=${KATA_TS_GUEST_CACHE:-/var/cache/kata-ts/guest}
NODE_PTY_DIR=${KATA_TS_NODE_PTY_DIR:-$REPO_DIR/node_modules/node-pty}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	--agent) AGENT=${2:?--agent needs a path}; shift 2 ;;
	--out) OUT=${2:?--out needs a directory}; shift 2 ;;
	--force) FORCE=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done

# Modules loaded by the initramfs /init; dependencies are resolved with modprobe --show-depends.
MODULES=(
	virtio_ring virtio
	virtio_mmio
	virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_console virtio_blk
	crc32c_generic jbd2 mbcache crc16 ext4
	9pnet 9pnet_virtio netfs fscache 9p
	fuse virtiofs
	failover net_failover virtio_net
	overlay
	virtio_rng
	vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
)
# Soft dependencies that only load on some CPUs (SSE4.2); crc32c_generic always works.
SKIP_MODULES=" crc32c_intel "

[ "$(id -u)" = 0 ] || die "run as root (apt-get, mknod, ${CACHE})"
[ -f "$AGENT" ] || die "agent bundle not found: $AGENT (build it first with 'npm run build', or pass --agent PATH)"
AGENT=$(readlink -f "$AGENT")
NODE_BIN=$(command -v node) || die "node not found on PATH"
NODE_BIN=$(readlink -f "$NODE_BIN")
[ -f "$NODE_PTY_DIR/build/Release/pty.node" ] ||
	die "node-pty is not built: $NODE_PTY_DIR/build/Release/pty.node missing"

# Debian packages the build reads or runs (the kernel package itself is downloaded, not installed).
ensure_packages xz-utils cpio e2fsprogs gcc libc6-dev binutils kmod crun busybox-static dpkg apt
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing"
CRUN_BIN=$(readlink -f "$(command -v crun)")

WORK=$(mktemp -d /tmp/kata-ts-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE/debs" "$OUT"
# One build at a time per cache (concurrent builds would race on the same keys).
exec 9>"$CACHE/.lock"
flock 9

# ---------------------------------------------------------------- inputs and keys

# The kernel package the metapackage currently depends on, e.g. linux-image-6.1.0-56-amd64.
resolve_kernel_package() {
	apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
		sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*\).*/\1/p' | head -1
}
KPKG=$(resolve_kernel_package)
[ -n "$KPKG" ] || { apt_update_once; KPKG=$(resolve_kernel_package); }
[ -n "$KPKG" ] || die "cannot resolve the package linux-image-amd64 depends on (apt-cache)"
KREL=${KPKG#linux-image-}
KINFO=$(apt-cache show --no-all-versions "$KPKG")
KVER=$(awk '$1 == "Version:" { print $2; exit }' <<<"$KINFO")
KSHA=$(awk '$1 == "SHA256:" { print $2; exit }' <<<"$KINFO")
if [ -z "$KVER" ] || [ -z "$KSHA" ]; then die "apt-cache show $KPKG gave no version/SHA256"; fi

# Every builder file that shapes an output; a change to any of them changes every key.
BUILDER_HASH=$(cd "$GUEST_DIR" && for f in build.sh lib/common.sh initrd/init init/kata-init.c init/kata-settime.c; do
	printf '%s %s\n' "$f" "$(sha256_file "$f")"
done | sha256_stdin)

BUSYBOX_VER=$(pkg_version busybox-static)
CRUN_VER=$(pkg_version crun)
NODE_VER=$("$NODE_BIN" --version)
NODE_SHA=$(sha256_file "$NODE_BIN")
AGENT_SHA=$(sha256_file "$AGENT")
NODE_PTY_VER=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NODE_PTY_DIR/package.json" | head -1)
ROOT_LIBS=$(elf_libs "$CRUN_BIN" "$NODE_BIN" "$NODE_PTY_DIR/build/Release/pty.node")

# node-pty files shipped in the guest: package.json, lib/ without tests and maps, pty.node.
node_pty_files() {
	(cd "$NODE_PTY_DIR" && {
		echo package.json
		find lib -type f -name '*.js' ! -name '*.test.js'
		echo build/Release/pty.node
	} | LC_ALL=C sort)
}

common_manifest() {
	echo "builder $BUILDER_HASH"
	echo "source-date-epoch $SOURCE_DATE_EPOCH"
	echo "kernel-package $KPKG $KVER $KSHA"
}
KERNEL_KEY=$( { common_manifest; echo "xz $(pkg_version xz-utils)"; } | sha256_stdin)
INITRD_KEY=$( {
	common_manifest
	echo "busybox $BUSYBOX_VER $(sha256_file "$BUSYBOX")"
	echo "cpio $(pkg_version cpio) kmod $(pkg_version kmod)"
	echo "modules ${MODULES[*]}"
} | sha256_stdin)
IMAGE_KEY=$( {
	echo "builder $BUILDER_HASH"
	echo "source-date-epoch $SOURCE_DATE_EPOCH"
	echo "busybox $BUSYBOX_VER $(sha256_file "$BUSYBOX")"
	echo "crun $CRUN_VER $(sha256_file "$CRUN_BIN")"
	echo "node $NODE_VER $NODE_SHA"
	for l in $ROOT_LIBS; do echo "lib $l $(sha256_file "$l")"; done
	node_pty_files | while read -r f; do echo "node-pty $f $(sha256_file "$NODE_PTY_DIR/$f")"; done
	echo "agent $AGENT_SHA"
	echo "gcc $(pkg_version gcc-12) libc6-dev $(pkg_version libc6-dev) e2fsprogs $(pkg_version e2fsprogs)"
} | sha256_stdin)
GUEST_HASH=$(printf '%s\n' "$KERNEL_KEY" "$INITRD_KEY" "$IMAGE_KEY" | sha256_stdin)

log "kernel package $KPKG $KVER"
log "keys: kernel ${KERNEL_KEY:0:16} initrd ${INITRD_KEY:0:16} image ${IMAGE_KEY:0:16}"

# ---------------------------------------------------------------- kernel package

KROOT=$WORK/kernel-root
kernel_root() {
	[ -d "$KROOT" ] && return 0
	local deb=$CACHE/debs/${KPKG}_${KVER}_amd64.deb
	if [ ! -f "$deb" ] || [ "$(sha256_file "$deb")" != "$KSHA" ]; then
		log "downloading $KPKG=$KVER"
		(cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER" >&2) ||
			die "apt-get download $KPKG=$KVER failed"
		local got
		got=$(ls "$WORK/${KPKG}_"*.deb)
		[ "$(sha256_file "$got")" = "$KSHA" ] || die "$got: SHA256 does not match the archive's"
		mv -f "$got" "$deb"
		# Only the current kernel package is worth keeping.
		find "$CACHE/debs" -name '*.deb' ! -name "$(basename "$deb")" -delete
	fi
	mkdir -p "$KROOT"
	dpkg-deb -x "$deb" "$KROOT"
	depmod -b "$KROOT" "$KREL"
}

# ---------------------------------------------------------------- vmlinux.container

build_kernel() { # DEST_DIR
	local dest=$1 vmlinuz off out=$1/vmlinux.container
	kernel_root
	vmlinuz=$KROOT/boot/vmlinuz-$KREL
	[ -f "$vmlinuz" ] || die "$vmlinuz not in the package"
	# The bzImage carries an xz stream; the first offset that yields a PVH ELF is the kernel.
	# shellcheck disable=SC2013 # one offset per line, digits only
	for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1); do
		# xz complains about the bytes after the stream; the ELF check below is what counts.
		tail -c +$((off + 1)) "$vmlinuz" | xz -dc >"$out" 2>/dev/null || true
		if readelf -h "$out" 2>/dev/null | grep -q 'Type: *EXEC' &&
			readelf -n "$out" 2>/dev/null | grep -q 'Xen .*(0x00000012)'; then
			log "vmlinux: xz stream at offset $off, PVH note present"
			printf '"package": "%s", "packageVersion": "%s", "packageSha256": "%s", "release": "%s"' \
				"$KPKG" "$KVER" "$KSHA" "$KREL" >"$dest/meta"
			return 0
		fi
	done
	die "no xz stream in $vmlinuz decompresses to an ELF with the Xen PVH note (0x12)"
}

# ---------------------------------------------------------------- kata-containers-initrd.img

# The .ko paths to load, in order, each once.
module_paths() {
	local m
	for m in "${MODULES[@]}"; do
		modprobe -S "$KREL" -d "$KROOT" --show-depends "$m" || die "module $m not found in $KREL"
	done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}

module_name() { # PATH -> name as the kernel spells it
	local n
	n=$(basename "$1")
	n=${n%%.ko*}
	echo "${n//-/_}"
}

build_initrd() { # DEST_DIR
	local dest=$1 stage=$WORK/initrd p name names=()
	kernel_root
	rm -rf "$stage"
	mkdir -p "$stage"/{bin,dev,proc,sys,newroot,lib/modules}
	cp "$BUSYBOX" "$stage/bin/busybox"
	for p in sh mount insmod switch_root poweroff reboot sleep mkdir cat echo ls; do
		ln -s busybox "$stage/bin/$p"
	done
	install -m 0755 "$GUEST_DIR/initrd/init" "$stage/init"
	mknod -m 0600 "$stage/dev/console" c 5 1
	for p in $(module_paths); do
		name=$(module_name "$p")
		case "$SKIP_MODULES" in *" $name "*) continue ;; esac
		# busybox insmod takes plain .ko files: decompress here, once.
		case "$p" in
		*.ko) cp "$p" "$stage/lib/modules/$name.ko" ;;
		*.ko.xz) xz -dc "$p" >"$stage/lib/modules/$name.ko" ;;
		*.ko.zst) zstd -qdc "$p" >"$stage/lib/modules/$name.ko" ;;
		*.ko.gz) gzip -dc "$p" >"$stage/lib/modules/$name.ko" ;;
		*) die "unexpected module file $p" ;;
		esac
		names+=("$name")
	done
	printf '%s\n' "${names[@]}" >"$stage/lib/modules/load-order"
	log "initrd modules (${#names[@]}): ${names[*]}"
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc --reproducible -R 0:0 --quiet) >"$dest/kata-containers-initrd.img"
	local json
	json=$(printf '"%s", ' "${names[@]}")
	printf '"modules": [%s], "busybox": "%s", "kernelRelease": "%s"' "${json%, }" "$BUSYBOX_VER" "$KREL" >"$dest/meta"
}

# ---------------------------------------------------------------- kata-containers.img

# root_path PATH: where a host file goes in the guest root (/lib, /lib64, /bin, /sbin folded into /usr).
root_path() {
	case "$1" in
	/lib/* | /lib64/* | /bin/* | /sbin/*) echo "/usr$1" ;;
	*) echo "$1" ;;
	esac
}

build_image() { # DEST_DIR
	local dest=$1 R=$WORK/rootfs img=$1/kata-containers.img f a
	rm -rf "$R"
	mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/lib64,etc,proc,sys,dev,run,tmp,var,mnt,root}
	mkdir -p "$R/usr/lib/kata-agent/node_modules/node-pty"
	ln -s usr/lib "$R/lib"
	ln -s usr/lib64 "$R/lib64"
	ln -s ../run "$R/var/run"
	ln -s ../tmp "$R/var/tmp"

	# busybox with its applets in /bin; /sbin/init is ours.
	cp "$BUSYBOX" "$R/bin/busybox"
	for a in $("$BUSYBOX" --list | LC_ALL=C sort); do
		case "$a" in busybox | init | linuxrc) continue ;; esac
		ln -s busybox "$R/bin/$a"
	done

	cp "$CRUN_BIN" "$R/usr/bin/crun"
	cp "$NODE_BIN" "$R/usr/bin/node"
	for f in $ROOT_LIBS; do
		install -D -m 0755 "$(readlink -f "$f")" "$R$(root_path "$f")"
	done

	gcc -static -Os -s -Wall -Wl,--build-id=none -o "$R/sbin/init" "$GUEST_DIR/init/kata-init.c"
	gcc -static -Os -s -Wall -Wl,--build-id=none -o "$R/usr/bin/kata-settime" "$GUEST_DIR/init/kata-settime.c"

	node_pty_files | while read -r f; do
		install -D -m 0644 "$NODE_PTY_DIR/$f" "$R/usr/lib/kata-agent/node_modules/node-pty/$f"
	done
	chmod 0755 "$R/usr/lib/kata-agent/node_modules/node-pty/build/Release/pty.node"
	install -m 0644 "$AGENT" "$R/usr/lib/kata-agent/agent.js"
	# A read-only container root filesystem for the VM template's warm-up container (busybox, hard-linked).
	mkdir -p "$R/usr/lib/kata-agent/warmup-rootfs"/{bin,dev,proc,sys,tmp,etc}
	ln "$R/bin/busybox" "$R/usr/lib/kata-agent/warmup-rootfs/bin/busybox"
	ln -s busybox "$R/usr/lib/kata-agent/warmup-rootfs/bin/sh"

	echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
	echo 'root:x:0:' >"$R/etc/group"
	echo 'kata' >"$R/etc/hostname"
	: >"$R/etc/resolv.conf"
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$R/etc/hosts"

	chmod 1777 "$R/tmp"
	chmod 0700 "$R/root"
	chown -R 0:0 "$R"
	find "$R" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

	# Size: the files in 4 KiB blocks, plus 5% and 4 MiB for ext4 metadata, rounded to a MiB.
	local used_kib nfiles size_mib uuid
	used_kib=$(du -s --block-size=1K "$R" | cut -f1)
	nfiles=$(find "$R" | wc -l)
	size_mib=$(((used_kib + used_kib / 20 + 4096 + 1023) / 1024))
	uuid=$(echo "$IMAGE_KEY" | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
	E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -t ext4 -T default -b 4096 -I 256 -m 0 \
		-O ^has_journal,^metadata_csum,^resize_inode \
		-N $((nfiles + 64)) -U "$uuid" -L kata-root \
		-E "hash_seed=$uuid,root_owner=0:0,lazy_itable_init=0" \
		-d "$R" "$img" "${size_mib}M" >/dev/null || die "mkfs.ext4 failed"
	# mkfs -d copies each source file's ctime (touch cannot set it) and atime (reading the
	# staging tree updates it under relatime): pin both on every inode.
	(cd "$R" && find . | LC_ALL=C sort | sed -e 's|^\.||' -e 's|^$|/|' |
		awk -v t="$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime @%s\nsif \"%s\" atime @%s\n", $0, t, $0, t }') >"$WORK/ctime.debugfs"
	E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$WORK/ctime.debugfs" "$img" >/dev/null 2>"$WORK/debugfs.err" ||
		die "debugfs: $(cat "$WORK/debugfs.err")"
	E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH e2fsck -fn "$img" >/dev/null 2>&1 || die "e2fsck: $img is not clean"
	log "image: ${size_mib} MiB, $nfiles files, uuid $uuid"
	printf '"rootfsType": "ext4", "uuid": "%s", "busybox": "%s", "crun": "%s", "node": "%s", "nodeSha256": "%s", "nodePty": "%s", "agentSha256": "%s"' \
		"$uuid" "$BUSYBOX_VER" "$CRUN_VER" "$NODE_VER" "$NODE_SHA" "$NODE_PTY_VER" "$AGENT_SHA" >"$dest/meta"
}

# ---------------------------------------------------------------- cache and install

# cached KIND KEY FILE BUILDER: the cache dir holding FILE for KEY, building it if needed.
cached() {
	local kind=$1 key=$2 file=$3 builder=$4 dir=$CACHE/$1/$2 tmp
	if [ "$FORCE" = 1 ] || [ ! -f "$dir/$file" ] || [ ! -f "$dir/meta" ]; then
		log "building $file"
		tmp=$WORK/cache-$kind
		mkdir -p "$tmp"
		local t0=$SECONDS
		"$builder" "$tmp"
		sha256_file "$tmp/$file" >"$tmp/sha256"
		rm -rf "$dir.new" && mkdir -p "$CACHE/$kind" && mv "$tmp" "$dir.new"
		rm -rf "$dir" && mv "$dir.new" "$dir"
		log "built $file in $((SECONDS - t0)) s"
	else
		log "cached $file ($kind ${key:0:16})"
		touch "$dir"
	fi
	prune "$CACHE/$kind"
	echo "$dir"
}

# prune DIR: keep the KATA_TS_GUEST_CACHE_KEEP (default 3) most recently used entries.
prune() {
	local old
	# Entries are named by 64-hex keys; newest first by mtime (touched on every use).
	find "$1" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{64}' -printf '%T@ %p\n' |
		sort -rn | tail -n +$((${KATA_TS_GUEST_CACHE_KEEP:-3} + 1)) | while read -r _ old; do
		rm -rf "$old"
	done
}

KDIR=$(cached kernel "$KERNEL_KEY" vmlinux.container build_kernel)
IDIR=$(cached initrd "$INITRD_KEY" kata-containers-initrd.img build_initrd)
RDIR=$(cached image "$IMAGE_KEY" kata-containers.img build_image)

install_atomic() { # SRC DEST
	cp "$1" "$2.tmp.$$"
	mv -f "$2.tmp.$$" "$2"
}

entry() { # NAME DIR FILE KEY
	printf '  "%s": { "file": "%s", "sha256": "%s", "size": %s, "key": "%s", %s }' \
		"$1" "$3" "$(cat "$2/sha256")" "$(stat -c %s "$2/$3")" "$4" "$(cat "$2/meta")"
}

install_atomic "$KDIR/vmlinux.container" "$OUT/vmlinux.container"
install_atomic "$IDIR/kata-containers-initrd.img" "$OUT/kata-containers-initrd.img"
install_atomic "$RDIR/kata-containers.img" "$OUT/kata-containers.img"
{
	echo '{'
	printf '  "schema": 1,\n  "hash": "%s",\n  "sourceDateEpoch": %s,\n' "$GUEST_HASH" "$SOURCE_DATE_EPOCH"
	entry kernel "$KDIR" vmlinux.container "$KERNEL_KEY"; echo ,
	entry initrd "$IDIR" kata-containers-initrd.img "$INITRD_KEY"; echo ,
	entry image "$RDIR" kata-containers.img "$IMAGE_KEY"; echo
	echo '}'
} >"$WORK/kata-ts-guest.json"
install_atomic "$WORK/kata-ts-guest.json" "$OUT/kata-ts-guest.json"

log "installed into $OUT:"
for f in vmlinux.container kata-containers-initrd.img kata-containers.img; do
	printf '[guest]   %-28s %10s bytes\n' "$f" "$(stat -c %s "$OUT/$f")" >&2
done
log "guest hash $GUEST_HASH"
echo "$GUEST_HASH"
