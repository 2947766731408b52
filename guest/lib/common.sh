# shellcheck shell=bash
# Helpers shared by guest/build.sh and guest/smoke.sh (sourced, bash).

log() { printf '[guest] %s\n' "$*" >&2; }
die() { printf '[guest] ERROR: %s\n' "$*" >&2; exit 1; }

sha256_file() { sha256sum "$1" | cut -d' ' -f1; }
sha256_stdin() { sha256sum | cut -d' ' -f1; }

# ensure_packages PACKAGE...: apt-get install the Debian packages that are not installed.
ensure_packages() {
	local want=() p
	for p in "$@"; do
		[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" = "ii " ] || want+=("$p")
	done
	[ ${#want[@]} -eq 0 ] && return 0
	log "installing Debian packages: ${want[*]}"
	apt_update_once
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >&2 ||
		die "apt-get install ${want[*]} failed"
}

APT_UPDATED=
apt_update_once() {
	[ -n "$APT_UPDATED" ] && return 0
	apt-get update -qq >&2 || die "apt-get update failed"
	APT_UPDATED=1
}

# pkg_version PACKAGE: installed version, or empty.
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# elf_libs FILE...: absolute paths of every shared library ldd resolves (and the loader), sorted.
elf_libs() {
	local f
	for f in "$@"; do
		ldd "$f" 2>/dev/null | awk '
			$2 == "=>" && $3 ~ /^\// { print $3 }
			$1 ~ /^\// { print $1 }'
		if ldd "$f" 2>/dev/null | grep -q 'not found'; then
			die "ldd $f: a library is not found"
		fi
	done | sort -u
}
