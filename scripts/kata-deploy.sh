#!/usr/bin/env bash
# kata-deploy for one node: installs kata-ts (binaries, guest assets, default configuration) and its containerd
# runtime handler "kata", takes them out again, or reports what is installed.
#
# Usage: scripts/kata-deploy.sh install|uninstall|status [options]
#   --root DIR                install under DIR instead of / (like DESTDIR: paths written into configs stay the
#                             real ones, /usr/local/bin, /usr/share/...); default /
#   --containerd-config FILE  containerd's config to merge the handler into; default <root>/etc/containerd/config.toml
#                             (created when missing)
#   --assets-dir DIR          where the built guest assets are; default /usr/share/kata-containers (where
#                             scripts/setup.sh builds them)
#   --no-restart              do not restart containerd (the default: the command prints what to do)
#   --restart                 after install/uninstall, restart containerd with systemctl (only with --root /,
#                             only on a systemd host)
#   --force                   uninstall: also remove or restore files that were changed after install
#   -h, --help                this text
#
# It needs the project built (dist/ and the guest assets exist): run scripts/setup.sh first; this command
# does not run it (setup.sh installs into the real / by itself). It never restarts anything unless --restart.
#
# install puts, under <root>:
#   usr/local/bin/{kata-runtime,containerd-shim-kata-v2}   symlinks to this repository's bin/ (they load dist/
#                                                           from the repository: keep it in place)
#   usr/share/kata-containers/{vmlinux.container,kata-containers-initrd.img,kata-containers.img,kata-ts-guest.json}
#   usr/share/defaults/kata-containers/configuration.toml  copy of config/configuration-qemu.toml
# and merges deploy/containerd-kata.toml into the containerd config (deploy/containerd-config.mjs: text-preserving,
# each addition between marker comments). A file that is already there with the same content is left alone and
# not recorded; a different one is backed up and replaced. What install added, the backups and the config as it
# was are kept in <root>/var/lib/kata-ts/deploy/, and uninstall puts everything back: the containerd config byte
# for byte, files it replaced, and it removes the files and directories it created and nothing else.
# Installing twice changes nothing the second time. Exit status: 0 done (status: installed and matching the
# repository), 1 failure (status: something missing or different), 2 usage.
set -euo pipefail
export LC_ALL=C
umask 022

REPO=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/scripts/kata-deploy.sh
TAB=$'\t'

die() {
  printf 'kata-deploy: error: %s\n' "$*" >&2
  exit 1
}
usage_error() {
  printf 'kata-deploy: %s (see --help)\n' "$*" >&2
  exit 2
}
say() { printf 'kata-deploy: %s\n' "$*"; }
warn() { printf 'kata-deploy: warning: %s\n' "$*" >&2; }

CMD=
ROOT=/
CONTAINERD_CONFIG=
ASSETS_SRC=/usr/share/kata-containers
RESTART=0
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    install | uninstall | status)
      [ -z "$CMD" ] || usage_error "one command only"
      CMD=$1
      shift
      ;;
    --root) [ $# -ge 2 ] || usage_error "$1 needs a value"; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#*=}; shift ;;
    --containerd-config) [ $# -ge 2 ] || usage_error "$1 needs a value"; CONTAINERD_CONFIG=$2; shift 2 ;;
    --containerd-config=*) CONTAINERD_CONFIG=${1#*=}; shift ;;
    --assets-dir) [ $# -ge 2 ] || usage_error "$1 needs a value"; ASSETS_SRC=$2; shift 2 ;;
    --assets-dir=*) ASSETS_SRC=${1#*=}; shift ;;
    --no-restart) RESTART=0; shift ;;
    --restart) RESTART=1; shift ;;
    --force) FORCE=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
[ -n "$CMD" ] || usage_error "missing command: install, uninstall or status"

abspath() {
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf '%s/%s' "$(pwd)" "$1" ;;
  esac
}
ROOT=$(abspath "$ROOT")
[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd -P "$ROOT" && pwd)
if [ "$ROOT" = / ]; then P=; else P=$ROOT; fi
[ -n "$CONTAINERD_CONFIG" ] || CONTAINERD_CONFIG=$P/etc/containerd/config.toml
CONTAINERD_CONFIG=$(abspath "$CONTAINERD_CONFIG")
# A config that is a symlink is edited where it points (the link stays a link).
if [ -L "$CONTAINERD_CONFIG" ]; then CONTAINERD_CONFIG=$(readlink -f -- "$CONTAINERD_CONFIG"); fi
ASSETS_SRC=$(abspath "$ASSETS_SRC")
if [ "$RESTART" = 1 ] && [ -n "$P" ]; then usage_error "--restart restarts the host's containerd: only with --root /"; fi
case "$ROOT$CONTAINERD_CONFIG" in *"$TAB"* | *$'\n'*) die "paths with tabs or newlines are not supported" ;; esac

BIN_DIR=$P/usr/local/bin
ASSET_DIR=$P/usr/share/kata-containers
DEFAULTS_DIR=$P/usr/share/defaults/kata-containers
STATE=$P/var/lib/kata-ts/deploy
MANIFEST=$STATE/manifest
BACKUPS=$STATE/backup
SNIPPET=$REPO/deploy/containerd-kata.toml
MERGER=$REPO/deploy/containerd-config.mjs
BINARIES=(kata-runtime containerd-shim-kata-v2)
ASSETS=(vmlinux.container kata-containers-initrd.img kata-containers.img kata-ts-guest.json)

# What install places: "link DST TARGET" or "file DST SRC", one per line.
plan() {
  local b a
  for b in "${BINARIES[@]}"; do printf 'link\t%s\t%s\n' "$BIN_DIR/$b" "$REPO/bin/$b"; done
  for a in "${ASSETS[@]}"; do printf 'file\t%s\t%s\n' "$ASSET_DIR/$a" "$ASSETS_SRC/$a"; done
  printf 'file\t%s\t%s\n' "$DEFAULTS_DIR/configuration.toml" "$REPO/config/configuration-qemu.toml"
}

require_built() {
  local missing=() f
  command -v node >/dev/null || die "node is not on PATH (scripts/setup.sh installs everything kata-ts needs)"
  for f in "$REPO/dist/src/cli/main.js" "$REPO/node_modules/smol-toml/package.json" "$SNIPPET" "$MERGER"; do
    [ -e "$f" ] || missing+=("$f")
  done
  [ -e "$REPO/dist/shim/shim.js" ] || [ -e "$REPO/dist/src/shim/main.js" ] || missing+=("$REPO/dist/shim/shim.js")
  for f in "${ASSETS[@]}"; do [ -f "$ASSETS_SRC/$f" ] || missing+=("$ASSETS_SRC/$f"); done
  [ ${#missing[@]} -eq 0 ] || die "the project is not built (missing: ${missing[*]}): run scripts/setup.sh first, or pass --assets-dir"
}

# Paths here are absolute and normalized: the directory part is what precedes the last slash.
parent() {
  local d=${1%/*}
  printf '%s' "${d:-/}"
}
sha() {
  local h _
  read -r h _ < <(sha256sum -- "$1")
  printf '%s' "$h"
}
# Size, inode and mtime: while they are what install recorded, the file was not rewritten (saves hashing 190 MB).
sig() { stat -c '%s:%i:%.9Y' -- "$1"; }

# ---------------------------------------------------------------------------------------------------------------
# The manifest: what install added, one tab-separated record per line.
#   dir      PATH                           a directory install created
#   link     PATH TARGET                    a symlink install created
#   file     PATH SHA256 SIG                a file install created (SIG: size, inode and mtime it had)
#   replaced PATH KIND VALUE BACKUP SIG     install replaced PATH (backed up to BACKUP) with a link (KIND=link,
#                                           VALUE=target, SIG=-) or a file (KIND=file, VALUE=sha256)
#   config   PATH EXISTED SHA256 BACKUP     the containerd config install merged into: EXISTED yes/no before
#                                           the first install, SHA256 of what install wrote, BACKUP the config
#                                           as it was without the handler ("-" when it did not exist)
declare -a OLD=() NEW=()
declare -A OWNED=()
OLD_CONFIG=
load_manifest() {
  [ -f "$MANIFEST" ] || return 0
  local line kind path
  while IFS= read -r line; do
    case "$line" in '#'* | '') continue ;; esac
    OLD+=("$line")
    IFS=$TAB read -r kind path _ <<<"$line"
    case "$kind" in
      link | file | replaced) OWNED[$path]=$line ;;
      config) OLD_CONFIG=$line ;;
    esac
  done <"$MANIFEST"
}

write_manifest() {
  local tmp
  ensure_dir "$STATE"
  tmp=$(mktemp "$STATE/.manifest.XXXXXX")
  {
    printf '# kata-ts deploy manifest: what scripts/kata-deploy.sh install added under %s (uninstall reads it)\n' "$ROOT"
    printf '# repository %s\n' "$REPO"
    # Directories first (in the order they were created), then the rest: the same install writes the same record.
    local line
    for line in "${NEW[@]}"; do case "$line" in dir"$TAB"*) printf '%s\n' "$line" ;; esac; done
    for line in "${NEW[@]}"; do case "$line" in dir"$TAB"*) ;; *) printf '%s\n' "$line" ;; esac; done
  } >"$tmp"
  if cmp -s -- "$tmp" "$MANIFEST"; then
    rm -f -- "$tmp"
  else
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$MANIFEST"
  fi
}

# Creates DIR and its missing parents, recording each one created (parents first).
ensure_dir() {
  local d=$1 missing=() i
  while [ ! -e "$d" ] && [ ! -L "$d" ]; do
    missing+=("$d")
    d=$(parent "$d")
  done
  for ((i = ${#missing[@]} - 1; i >= 0; i--)); do
    mkdir -- "${missing[$i]}"
    NEW+=("dir$TAB${missing[$i]}")
  done
  [ -d "$1" ] || die "$1 exists and is not a directory"
}

# The backup path of DST (under the state directory, mirroring DST's path).
backup_path() { printf '%s/files%s' "$BACKUPS" "${1#"$P"}"; }

# Atomically puts a symlink DST -> TARGET, or a copy of SRC (mode 0644) at DST.
put_link() {
  local tmp
  tmp="$(parent "$1")/.kata-deploy.$$.${1##*/}"
  rm -f -- "$tmp"
  ln -s -- "$2" "$tmp"
  mv -fT -- "$tmp" "$1"
}
put_file() {
  local tmp
  tmp="$(parent "$1")/.kata-deploy.$$.${1##*/}"
  rm -f -- "$tmp"
  cp --reflink=auto -- "$2" "$tmp"
  chmod 0644 "$tmp"
  mv -fT -- "$tmp" "$1"
}

# Does DST hold exactly what plan entry (KIND VALUE) puts there?
same_as_plan() {
  local dst=$1 kind=$2 value=$3
  if [ "$kind" = link ]; then
    [ -L "$dst" ] && [ "$(readlink -- "$dst")" = "$value" ]
  else
    [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s -- "$dst" "$value"
  fi
}

# Does DST still hold what install put there (a manifest record: link TARGET, or file SHA256 and SIG)?
same_as_recorded() {
  local dst=$1 kind=$2 value=$3 recorded_sig=${4:-}
  if [ "$kind" = link ]; then
    [ -L "$dst" ] && [ "$(readlink -- "$dst")" = "$value" ]
  else
    [ -f "$dst" ] && [ ! -L "$dst" ] || return 1
    [ -n "$recorded_sig" ] && [ "$(sig "$dst")" = "$recorded_sig" ] && return 0
    [ "$(sha "$dst")" = "$value" ]
  fi
}

# The manifest record of what install just put at DST.
record_of() {
  local kind=$1 dst=$2 value=$3 backup=${4:-} s=-
  [ "$kind" = link ] || s=$(sig "$dst")
  if [ -n "$backup" ]; then
    printf 'replaced\t%s\t%s\t%s\t%s\t%s' "$dst" "$kind" "$value" "$backup" "$s"
  elif [ "$kind" = link ]; then
    printf 'link\t%s\t%s' "$dst" "$value"
  else
    printf 'file\t%s\t%s\t%s' "$dst" "$value" "$s"
  fi
}

install_entry() {
  local kind=$1 dst=$2 src=$3 record value backup='' rkind rvalue rsig=''
  ensure_dir "$(parent "$dst")"
  record=${OWNED[$dst]:-}
  if [ -n "$record" ]; then
    # Installed by an earlier install: bring it up to date, keep the record (and its backup).
    IFS=$TAB read -r rkind _ rvalue rsig <<<"$record"
    if [ "$rkind" = replaced ]; then IFS=$TAB read -r _ _ _ rvalue backup rsig <<<"$record"; fi
    if same_as_recorded "$dst" "$kind" "$rvalue" "$rsig" && same_as_plan "$dst" "$kind" "$src"; then
      value=$rvalue
      say "ok        $dst (installed earlier, up to date)"
    else
      put_"$kind" "$dst" "$src"
      if [ "$kind" = link ]; then value=$src; else value=$(sha "$dst"); fi
      say "updated   $dst"
    fi
    NEW+=("$(record_of "$kind" "$dst" "$value" "$backup")")
    return
  fi
  if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then
    put_"$kind" "$dst" "$src"
    if [ "$kind" = link ]; then value=$src; else value=$(sha "$dst"); fi
    NEW+=("$(record_of "$kind" "$dst" "$value")")
    say "added     $dst"
  elif same_as_plan "$dst" "$kind" "$src" || { [ "$kind" = file ] && [ "$(readlink -f -- "$dst")" = "$(readlink -f -- "$src")" ]; }; then
    say "present   $dst (already the same: left alone, not recorded)"
  else
    [ ! -d "$dst" ] || [ -L "$dst" ] || die "$dst is a directory"
    backup=$(backup_path "$dst")
    ensure_dir "$(parent "$backup")"
    mv -fT -- "$dst" "$backup"
    put_"$kind" "$dst" "$src"
    if [ "$kind" = link ]; then value=$src; else value=$(sha "$dst"); fi
    NEW+=("$(record_of "$kind" "$dst" "$value" "$backup")")
    say "replaced  $dst (the previous one is kept in $backup)"
  fi
}

# Writes the content of file SRC to DST atomically, keeping DST's mode and owner when it exists.
write_config() {
  local src=$1 dst=$2 tmp
  tmp=$(mktemp "$(parent "$dst")/.kata-deploy.XXXXXX")
  cat -- "$src" >"$tmp"
  if [ -e "$dst" ]; then
    chmod --reference="$dst" -- "$tmp"
    chown --reference="$dst" -- "$tmp" 2>/dev/null || true
  else
    chmod 0644 "$tmp"
  fi
  mv -fT -- "$tmp" "$dst"
}

merger() { node "$MERGER" "$@"; }

WORK=$(mktemp -d /tmp/kata-deploy.XXXXXX)
trap 'record_partial; rm -rf "$WORK"' EXIT

# Computes the containerd config install writes ($WORK/merged.toml) from the config as it was before install
# ($WORK/base.toml), without changing anything yet: a config that cannot be merged stops install before it
# places any file.
CFG_EXISTED=
CFG_ADDED=
prepare_config() {
  local cfg=$CONTAINERD_CONFIG work=$WORK base=$WORK/base.toml merged=$WORK/merged.toml existed
  if [ -n "$OLD_CONFIG" ]; then
    local _k opath oexisted osha obackup
    IFS=$TAB read -r _k opath oexisted osha obackup <<<"$OLD_CONFIG"
    [ "$opath" = "$cfg" ] || die "the last install merged into $opath, not $cfg: uninstall first"
    existed=$oexisted
    if [ -f "$cfg" ] && [ "$(sha "$cfg")" = "$osha" ]; then
      # Unchanged since the last install: start again from the config as it was.
      if [ "$oexisted" = yes ]; then cp -- "$obackup" "$base"; else : >"$base"; fi
    else
      warn "$cfg changed since the last install: merging into it again (without the blocks install had added)"
      merger strip "$cfg" "$base" >/dev/null
    fi
  elif [ -f "$cfg" ]; then
    existed=yes
    cp -- "$cfg" "$base"
    if grep -q '^# >>> kata-ts' "$cfg" && [ "$(merger strip "$cfg" "$work/stripped.toml")" != 0 ]; then
      warn "$cfg has kata-deploy blocks but there is no record of them: taking them as this install's"
      cp -- "$work/stripped.toml" "$base"
    fi
  else
    [ ! -e "$cfg" ] || die "$cfg is not a regular file"
    existed=no
    : >"$base"
  fi
  CFG_ADDED=$(merger merge "$SNIPPET" "$base" "$merged") ||
    die "could not merge deploy/containerd-kata.toml into $cfg: nothing was installed"
  CFG_EXISTED=$existed
}

# Writes the config prepare_config computed, keeping the config as it was in the backup.
install_config() {
  local cfg=$CONTAINERD_CONFIG base=$WORK/base.toml merged=$WORK/merged.toml existed=$CFG_EXISTED
  local backup=$BACKUPS/containerd-config.toml
  if cmp -s -- "$merged" "$base"; then
    if [ "$existed" = yes ] && [ -f "$cfg" ] && ! cmp -s -- "$cfg" "$base"; then write_config "$base" "$cfg"; fi
    say "present   $cfg (the kata handler is already configured as in deploy/containerd-kata.toml: not recorded)"
    rm -f -- "$backup"
    return
  fi
  ensure_dir "$(parent "$cfg")"
  if [ "$existed" = yes ] && ! cmp -s -- "$base" "$backup"; then
    # Only root reads the copy (a containerd config may hold registry credentials).
    ensure_dir "$BACKUPS"
    [ -e "$backup" ] || install -m 0600 /dev/null "$backup"
    write_config "$base" "$backup"
  fi
  if [ -f "$cfg" ] && cmp -s -- "$cfg" "$merged"; then
    say "ok        $cfg (merged earlier, up to date)"
  else
    say "containerd config gets: $CFG_ADDED"
    write_config "$merged" "$cfg"
    if [ "$existed" = yes ]; then say "merged    $cfg (the original is kept in $backup)"; else say "created   $cfg"; fi
  fi
  NEW+=("config$TAB$cfg$TAB$existed$TAB$(sha "$cfg")$TAB$([ "$existed" = yes ] && printf '%s' "$backup" || printf -- -)")
}

restart_note() {
  if [ "$RESTART" = 1 ]; then
    if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null; then
      die "--restart: this host does not run systemd; restart containerd by hand (stop it, start it again with --config $CONTAINERD_CONFIG)"
    fi
    say "restarting containerd (systemctl restart containerd)"
    systemctl restart containerd
  else
    say "containerd was not restarted: restart it to $1 (systemctl restart containerd, or stop it and start it again with --config $CONTAINERD_CONFIG)"
  fi
}

# If install fails half-way, what it did so far (and what earlier installs did) is still recorded.
INSTALLING=0
record_partial() {
  [ "$INSTALLING" = 1 ] || return 0
  INSTALLING=0
  local line kind path have=" "
  for line in "${NEW[@]}"; do IFS=$TAB read -r kind path _ <<<"$line"; have+="$kind:$path "; done
  for line in "${OLD[@]}"; do
    IFS=$TAB read -r kind path _ <<<"$line"
    case "$have" in *" $kind:$path "*) ;; *) NEW+=("$line") ;; esac
  done
  [ ${#NEW[@]} -eq 0 ] || write_manifest || true
  warn "install did not finish: what it added so far is recorded in $MANIFEST (uninstall removes it)"
}

cmd_install() {
  require_built
  load_manifest
  prepare_config
  INSTALLING=1
  # Directories created by earlier installs stay recorded while they exist.
  local line kind dst src
  for line in "${OLD[@]}"; do
    IFS=$TAB read -r kind dst _ <<<"$line"
    if [ "$kind" = dir ] && [ -d "$dst" ]; then NEW+=("$line"); fi
  done
  declare -A planned=()
  while IFS=$TAB read -r kind dst src; do
    planned[$dst]=1
    install_entry "$kind" "$dst" "$src"
  done < <(plan)
  # Records of files an earlier install placed that this one does not (the repository changed): keep them,
  # uninstall still removes them.
  for dst in "${!OWNED[@]}"; do [ -n "${planned[$dst]:-}" ] || NEW+=("${OWNED[$dst]}"); done
  install_config
  local recorded=0
  for line in "${NEW[@]}"; do case "$line" in dir"$TAB"*) ;; *) recorded=1 ;; esac; done
  if [ "$recorded" = 1 ] || [ -f "$MANIFEST" ]; then
    write_manifest
  fi
  INSTALLING=0
  say "installed under $ROOT (record: $MANIFEST)"
  restart_note "load the kata runtime handler"
}

cmd_uninstall() {
  load_manifest
  if [ ${#OLD[@]} -eq 0 ]; then
    say "nothing to uninstall: no record of an install under $ROOT ($MANIFEST)"
    return 0
  fi
  local line kind dst a b c d remain=() dirs=() changed=0
  for line in "${OLD[@]}"; do
    IFS=$TAB read -r kind dst a b c d <<<"$line"
    case "$kind" in
      dir) dirs+=("$dst") ;;
      config)
        # a=EXISTED b=SHA256 c=BACKUP
        if [ ! -e "$dst" ]; then
          if [ "$a" = yes ]; then
            ensure_dir "$(parent "$dst")"
            write_config "$c" "$dst"
            rm -f -- "$c"
            warn "$dst was gone: put back the config as it was before install"
          fi
        elif [ "$(sha "$dst")" = "$b" ]; then
          if [ "$a" = yes ]; then
            write_config "$c" "$dst"
            rm -f -- "$c"
            say "restored  $dst (as it was before install)"
          else
            rm -f -- "$dst"
            say "removed   $dst"
          fi
          changed=1
        else
          local tmp
          tmp=$WORK/stripped.toml
          if node "$MERGER" strip "$dst" "$tmp" >/dev/null; then
            if [ "$a" = no ] && [ ! -s "$tmp" ]; then
              rm -f -- "$dst"
              say "removed   $dst"
            else
              write_config "$tmp" "$dst"
              say "restored  $dst (it changed after install: removed only the blocks install had added)"
            fi
            [ "$c" = - ] || rm -f -- "$c"
            changed=1
          else
            warn "could not take the kata-deploy blocks out of $dst: left as it is"
            remain+=("$line")
          fi
        fi
        ;;
      link | file)
        if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then
          say "gone      $dst"
        elif same_as_recorded "$dst" "$kind" "$a" "$b" || [ "$FORCE" = 1 ]; then
          rm -f -- "$dst"
          say "removed   $dst"
        else
          warn "$dst changed after install: left as it is (--force removes it)"
          remain+=("$line")
        fi
        ;;
      replaced)
        # a=KIND b=VALUE c=BACKUP d=SIG
        if [ ! -e "$c" ] && [ ! -L "$c" ]; then
          warn "the backup of $dst ($c) is gone: $dst left as it is"
        elif [ ! -e "$dst" ] && [ ! -L "$dst" ] || same_as_recorded "$dst" "$a" "$b" "$d" || [ "$FORCE" = 1 ]; then
          mv -fT -- "$c" "$dst"
          say "restored  $dst (as it was before install)"
        else
          warn "$dst changed after install: left as it is, its original stays in $c (--force restores it)"
          remain+=("$line")
        fi
        ;;
      *) warn "unknown manifest record: $line" ;;
    esac
  done
  if [ ${#remain[@]} -gt 0 ]; then
    NEW=("${remain[@]}")
    for dst in "${dirs[@]}"; do NEW+=("dir$TAB$dst"); done
    write_manifest
    die "some files changed after install were left in place (see the warnings); the record of them is kept in $MANIFEST"
  fi
  rm -f -- "$MANIFEST"
  [ ! -d "$BACKUPS" ] || find "$BACKUPS" -depth -type d -empty -delete
  local i
  for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
    dst=${dirs[$i]}
    [ -d "$dst" ] || continue
    if rmdir -- "$dst" 2>/dev/null; then say "removed   $dst/"; else warn "$dst/ is not empty: left in place"; fi
  done
  # Nothing else may be left in the state directory (it was created by install or holds only our files).
  say "uninstalled from $ROOT"
  if [ "$changed" = 1 ]; then restart_note "drop the kata runtime handler"; fi
}

cmd_status() {
  load_manifest
  local ok=0 kind dst src how state
  printf 'kata-ts under %s (repository %s)\n' "$ROOT" "$REPO"
  if [ ${#OLD[@]} -gt 0 ]; then
    printf '  record of what install added: %s\n' "$MANIFEST"
  else
    printf '  record of what install added: none (kata-deploy installed nothing under %s)\n' "$ROOT"
  fi
  while IFS=$TAB read -r kind dst src; do
    if [ -n "${OWNED[$dst]:-}" ]; then how="installed by kata-deploy"; else how="not installed by kata-deploy"; fi
    if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then
      state=MISSING
      how=
      ok=1
    elif same_as_plan "$dst" "$kind" "$src"; then
      state=ok
    elif [ "$kind" = file ] && [ "$(readlink -f -- "$dst")" = "$(readlink -f -- "$src")" ]; then
      state=ok
      how="$how; it is the build output"
    else
      state=DIFFERENT
      if [ -L "$dst" ]; then how="$how; links to $(readlink -- "$dst"), not $src"; else how="$how; differs from $src"; fi
      ok=1
    fi
    printf '  %-9s %s%s\n' "$state" "$dst" "${how:+ ($how)}"
  done < <(plan)
  if [ ! -e "$CONTAINERD_CONFIG" ]; then
    printf '  %-9s %s\n' MISSING "$CONTAINERD_CONFIG"
    return 1
  fi
  merger status "$SNIPPET" "$CONTAINERD_CONFIG" "$([ -n "$OLD_CONFIG" ] && echo recorded || echo -)" || ok=1
  return $ok
}

case "$CMD" in
  install) cmd_install ;;
  uninstall) cmd_uninstall ;;
  status) cmd_status ;;
esac
