# Shared helpers for Hangar's scripts. Source it; do not run it.
HANGAR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HANGAR_ROOT
export HANGAR_DATA_DIR="${HANGAR_DATA_DIR:-$HANGAR_ROOT/.data}"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

# ensure_apt_packages CMD:PACKAGE ... — installs the Debian packages whose command is missing.
ensure_apt_packages() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd="${pair%%:*}"; pkg="${pair#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -e "$cmd" ]; then missing+=("$pkg"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "Hangar needs these Debian packages: ${missing[*]}" >&2
    echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  log "installing ${missing[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  }
}

# What vmm-core and the guest image builder need on the host.
ensure_host_tools() {
  ensure_apt_packages \
    qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils /bin/busybox:busybox-static cpio:cpio \
    depmod:kmod /usr/lib/syslinux/mbr/mbr.bin:syslinux-common syslinux:syslinux extlinux:extlinux \
    mkfs.vfat:dosfstools mcopy:mtools mkfs.ext4:e2fsprogs sfdisk:fdisk ip:iproute2
}

ensure_node_deps() {
  local stamp="$HANGAR_ROOT/node_modules/.hangar-lock"
  if [ ! -f "$stamp" ] || ! cmp -s "$HANGAR_ROOT/package-lock.json" "$stamp"; then
    log "installing npm dependencies"
    # npm install (not ci): npm 11 reports lock files without other platforms' optional
    # packages as out of sync, although it installs from them exactly.
    (cd "$HANGAR_ROOT" && npm install --no-audit --no-fund --loglevel=error)
    cp "$HANGAR_ROOT/package-lock.json" "$stamp"
  fi
}

build_all() {
  log "generating gRPC code and building every workspace"
  (cd "$HANGAR_ROOT" && npm run --silent build)
}
