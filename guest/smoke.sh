#!/usr/bin/env bash
# Boot the guest assets under QEMU TCG and check the boot contract (guest/README.md).
# Usage: guest/smoke.sh [--assets DIR] [--runs N]
#   Without --assets, builds assets with the test agent guest/test/smoke-agent.js into a temp dir
#   (guest/build.sh's cache makes that quick). Needs root. Exit status 0 when every check passes.
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/common.sh
. "$GUEST_DIR/lib/common.sh"

ASSETS=
RUNS=1
while [ $# -gt 0 ]; do
	case "$1" in
	--assets) ASSETS=${2:?}; shift 2 ;;
	--runs) RUNS=${2:?}; shift 2 ;;
	*) die "usage: $0 [--assets DIR] [--runs N]" ;;
	esac
done

T=$(mktemp -d /tmp/kata-ts-smoke.XXXXXX)
QEMU_PID=
VFSD_PID=
cleanup() {
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then kill "$QEMU_PID" 2>/dev/null || true; fi
	if [ -n "$VFSD_PID" ] && kill -0 "$VFSD_PID" 2>/dev/null; then kill "$VFSD_PID" 2>/dev/null || true; fi
	rm -rf "$T"
}
trap cleanup EXIT

if [ -z "$ASSETS" ]; then
	ASSETS=$T/assets
	"$GUEST_DIR/build.sh" --agent "$GUEST_DIR/test/smoke-agent.js" --out "$ASSETS" >/dev/null
fi
for f in vmlinux.container kata-containers-initrd.img kata-containers.img; do
	[ -f "$ASSETS/$f" ] || die "$ASSETS/$f missing"
done

# The guest needs the host TSC frequency on microvm (PLATFORM.md: without it 1 boot in 5 hangs).
tsc_khz() {
	local mhz
	mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' | head -1)
	[ -n "$mhz" ] || mhz=$(awk -F': ' '/^cpu MHz/ { print $2; exit }' /proc/cpuinfo)
	awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 }'
}
CMDLINE="console=ttyS0 quiet nokaslr tsc=reliable no_timer_check mitigations=off cryptomgr.notests \
random.trust_cpu=on i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd rcupdate.rcu_expedited=1 audit=0 \
tsc_early_khz=$(tsc_khz) panic=-1"

FAILS=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }

# boot NAME MACHINE TIMEOUT_S EXTRA_CMDLINE: run one VM to power-off; console in $T/NAME.log,
# wall time (s) in $T/NAME.wall, QEMU exit status in $T/NAME.rc.
boot() {
	local name=$1 machine=$2 timeout_s=$3 extra=$4 args=()
	# shellcheck disable=SC2054 # commas are QEMU option syntax
	case "$machine" in
	microvm)
		args=(-M microvm,memory-backend=mem -global virtio-mmio.force-legacy=false
			-device vhost-user-fs-device,chardev=vfs,tag=smokefs
			-device virtio-blk-device,drive=root
			-device virtio-serial-device
			-device virtio-rng-device
			-device virtio-9p-device,fsdev=fs9,mount_tag=smoke9p) ;;
	q35)
		args=(-M q35,memory-backend=mem
			-device vhost-user-fs-pci,chardev=vfs,tag=smokefs
			-device virtio-blk-pci,drive=root
			-device virtio-serial-pci
			-device virtio-rng-pci
			-device virtio-9p-pci,fsdev=fs9,mount_tag=smoke9p) ;;
	esac
	local t0 t1 rc=0 i
	# virtio-fs: virtiofsd serves $T/share; it exits when QEMU disconnects.
	/usr/lib/qemu/virtiofsd --socket-path="$T/$name.vfs" -o source="$T/share" -o cache=always \
		>"$T/$name.virtiofsd" 2>&1 &
	VFSD_PID=$!
	for i in $(seq 1 100); do [ -S "$T/$name.vfs" ] && break; sleep 0.05; done
	t0=$(date +%s.%N)
	timeout -s KILL "$timeout_s" qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
		-nodefaults -no-user-config -display none -no-reboot \
		-kernel "$ASSETS/vmlinux.container" -initrd "$ASSETS/kata-containers-initrd.img" \
		-append "$CMDLINE $extra" \
		-serial "file:$T/$name.log" \
		-object memory-backend-memfd,id=mem,size=512M,share=on \
		-chardev "socket,id=vfs,path=$T/$name.vfs" \
		-fsdev "local,id=fs9,path=$T/share,security_model=none,readonly=on" \
		-drive "file=$ASSETS/kata-containers.img,if=none,id=root,format=raw,readonly=on" \
		"${args[@]}" \
		-chardev "socket,id=agent,path=$T/$name.sock,server=on,wait=off" \
		-device virtserialport,chardev=agent,name=agent \
		</dev/null >"$T/$name.qemu" 2>&1 &
	QEMU_PID=$!
	wait "$QEMU_PID" || rc=$?
	QEMU_PID=
	t1=$(date +%s.%N)
	kill "$VFSD_PID" 2>/dev/null || true
	wait "$VFSD_PID" 2>/dev/null || true
	VFSD_PID=
	echo "$rc" >"$T/$name.rc"
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }' >"$T/$name.wall"
}

has() { grep -q -- "$2" "$T/$1.log"; }
up() { sed -n "s/.*$2 uptime=\([0-9.]*\).*/\1/p" "$T/$1.log" | head -1; }
uptime_at_init() { sed -n 's/.*KATA_INIT_REACHED uptime=\([0-9.]*\).*/\1/p' "$T/$1.log" | head -1; }
show_log() { echo "---- $1 console"; tr -d '\r' <"$T/$1.log" | tail -40; cat "$T/$1.qemu"; echo "----"; }

check_full() { # NAME
	local n=$1 ok=1
	has "$n" 'KATA_INIT_REACHED' || { fail "$n: no KATA_INIT_REACHED"; ok=0; }
	has "$n" 'SMOKE node ok' || { fail "$n: node did not run"; ok=0; }
	has "$n" 'SMOKE crun crun version' || { fail "$n: crun --version"; ok=0; }
	has "$n" 'SMOKE ports .*=agent' || { fail "$n: virtio port 'agent' not visible"; ok=0; }
	has "$n" 'SMOKE pty exit=0 out="/dev/pts/0' || { fail "$n: node-pty spawn"; ok=0; }
	has "$n" 'SMOKE pty .*30 100' || { fail "$n: pty size"; ok=0; }
	has "$n" 'SMOKE rootfs-ro EROFS' || { fail "$n: root not read-only"; ok=0; }
	has "$n" 'SMOKE cgroup .*memory' || { fail "$n: cgroup2 controllers"; ok=0; }
	has "$n" 'SMOKE 9p hello from the host' || { fail "$n: 9p share"; ok=0; }
	has "$n" 'SMOKE virtiofs hello from the host' || { fail "$n: virtio-fs share"; ok=0; }
	has "$n" 'SMOKE container container ok pid=1' || { fail "$n: crun run in overlay rootfs"; ok=0; }
	has "$n" 'KATA_AGENT_EXITED status=0' || { fail "$n: no KATA_AGENT_EXITED status=0"; ok=0; }
	! has "$n" 'SMOKE FAIL' || { fail "$n: $(grep -m1 'SMOKE FAIL' "$T/$n.log")"; ok=0; }
	! has "$n" '/init: ' || { fail "$n: $(grep -m1 '/init: ' "$T/$n.log")"; ok=0; }
	! has "$n" 'KATA_INIT_ERROR' || { fail "$n: $(grep -m1 KATA_INIT_ERROR "$T/$n.log")"; ok=0; }
	[ "$(cat "$T/$n.rc")" = 0 ] || { fail "$n: QEMU did not power off (rc $(cat "$T/$n.rc"))"; ok=0; }
	if [ "$ok" = 1 ]; then
		pass "$n: /init at $(uptime_at_init "$n") s, modules $(up "$n" KATA_INIT_MODULES) s," \
			"node $(sed -n 's/.*SMOKE node ok .* uptime=\([0-9.]*\).*/\1/p' "$T/$n.log") s, agent done at" \
			"$(sed -n 's/.*SMOKE done uptime=\([0-9.]*\).*/\1/p' "$T/$n.log") s, wall $(cat "$T/$n.wall") s"
	else
		show_log "$n"
	fi
}

check_floor() { # NAME
	local n=$1
	if has "$n" 'KATA_INIT_REACHED' && [ "$(cat "$T/$n.rc")" = 0 ] && ! has "$n" 'SMOKE'; then
		pass "$n: /init at $(uptime_at_init "$n") s guest uptime, powered off, wall $(cat "$T/$n.wall") s"
	else
		fail "$n: floor boot did not reach /init and power off"
		show_log "$n"
	fi
}

check_error() { # NAME
	local n=$1
	if has "$n" 'KATA_INIT_ERROR root device /dev/vdz not found' && [ "$(cat "$T/$n.rc")" = 0 ]; then
		pass "$n: missing root device reported and powered off, wall $(cat "$T/$n.wall") s"
	else
		fail "$n: missing root device not handled"
		show_log "$n"
	fi
}

mkdir -p "$T/share"
echo "hello from the host" >"$T/share/hello.txt"
echo "assets: $ASSETS"
find "$ASSETS" -maxdepth 1 -type f -printf '  %-28f %10s bytes\n' | sort
echo "cmdline: $CMDLINE"
for i in $(seq 1 "$RUNS"); do
	boot "floor-$i" microvm 30 kata.floor=1
	check_floor "floor-$i"
done
for i in $(seq 1 "$RUNS"); do
	boot "microvm-$i" microvm 90 ""
	check_full "microvm-$i"
done
boot q35 q35 120 ""
check_full q35
boot sigterm microvm 90 smoke.sigterm=1
if has sigterm 'kata-init: signal 15, powering off' && [ "$(cat "$T/sigterm.rc")" = 0 ]; then
	pass "sigterm: PID 1 powered off on SIGTERM"
else
	fail "sigterm: PID 1 did not power off on SIGTERM"
	show_log sigterm
fi
boot bad-root microvm 30 kata.rootdev=/dev/vdz
check_error bad-root

if [ "$FAILS" = 0 ]; then echo "smoke: all checks passed"; else echo "smoke: $FAILS check(s) failed"; fi
[ "$FAILS" = 0 ]
