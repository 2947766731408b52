#!/usr/bin/env bash
# Sets up everything kata-ts needs on a fresh Debian 12 machine, idempotently: Debian packages, npm packages,
# the build, the guest image (kernel, initrd, rootfs image), the default configuration and the binaries on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then echo "setup must run as root (it installs packages and guest assets)" >&2; exit 1; fi

apt_packages=(
  qemu-system-x86 qemu-utils containerd crun runc busybox-static protobuf-compiler cpio xz-utils zstd
  iproute2 e2fsprogs kmod containernetworking-plugins binutils libc6-dev gcc g++ make python3 util-linux
  procps psmisc file ca-certificates apache2-utils iperf3
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=node_modules/.kata-ts-install-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  log "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi

log "building"
npm run --silent build

log "building the guest image (cached by content hash)"
guest/build.sh --agent "$repo/dist/agent/agent.js" --out /usr/share/kata-containers >/dev/null

log "building the local OCI test images (cached by content hash)"
images/build.sh >/dev/null

install -d /usr/share/defaults/kata-containers
install -m 0644 config/configuration-qemu.toml /usr/share/defaults/kata-containers/configuration.toml
ln -sf "$repo/bin/kata-runtime" /usr/local/bin/kata-runtime
ln -sf "$repo/bin/containerd-shim-kata-v2" /usr/local/bin/containerd-shim-kata-v2
ln -sf "$repo/bin/kata-monitor" /usr/local/bin/kata-monitor
log "ready: $(command -v kata-runtime), $(command -v containerd-shim-kata-v2)"
