#!/usr/bin/env bash
# Build Hangar's default small guest image "hangar-tiny", offline, from Debian packages only.
#
#   bash scripts/build-guest-image.sh          # prints the image folder as its last stdout line
#
# Output: ${HANGAR_DATA_DIR:-<repo>/.data}/images/hangar-tiny/
#   vmlinuz      Debian linux-image-<ver>-cloud-amd64 kernel (resolved from linux-image-cloud-amd64)
#   initrd.img   gzip'd newc cpio: busybox-static, the guest's /init and the kernel modules it needs
#   base.qcow2   64 MiB qcow2, ext4 label "hangar-data" holding /hello ("hangar-base")
#   boot.qcow2   64 MiB BIOS-bootable qcow2 (MBR + FAT16 partition, syslinux) with the same kernel,
#                initrd and command line, for booting like a stock cloud image (no -kernel)
#   image.json   manifest (file names relative to the folder)
#   .stamp       hash of this script + packages/vmm-core/guest/* (not *.md) + package versions
#
# The guest contract lives in packages/vmm-core/guest/README.md.
# Nothing is mounted (no loop devices): ext4 via mkfs.ext4 -d, FAT via mtools, syslinux --offset.
# Everything but the final path goes to stderr.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin" # depmod, mkfs.*, debugfs live there (not on a user's PATH)
SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)
GUEST_DIR="$REPO_ROOT/packages/vmm-core/guest"
DATA_DIR="${HANGAR_DATA_DIR:-$REPO_ROOT/.data}"
IMAGES_DIR="$DATA_DIR/images"
NAME=hangar-tiny
OUT="$IMAGES_DIR/$NAME"
CACHE="$DATA_DIR/cache/apt"
KERNEL_META=linux-image-cloud-amd64
BUSYBOX_PKG=busybox-static
DISK_MIB=64
PART_START=2048 # sectors (1 MiB) before the boot partition
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
# Fixed identifiers so identical inputs give identical disks.
DATA_UUID=5f1c2a7e-4b1d-4c8e-9a43-68616e676172
FAT_VOLID=48414e47
FIXED_EPOCH=1700000000

log() { printf 'build-guest-image: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- tools -------------------------------------------------------------------------------------------
# command (or file) -> Debian package providing it
declare -A TOOL_PKG=(
  [apt-get]=apt [apt-cache]=apt [dpkg]=dpkg [depmod]=kmod [modprobe]=kmod [cpio]=cpio [gzip]=gzip
  [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs [qemu-img]=qemu-utils [mkfs.fat]=dosfstools [mcopy]=mtools [mdir]=mtools
  [syslinux]=syslinux [sha256sum]=coreutils [truncate]=coreutils [flock]=util-linux
  ["$SYSLINUX_MBR"]=syslinux-common [/usr/lib/syslinux/modules/bios/ldlinux.c32]=syslinux-common
)
missing_pkgs() {
  local t missing=()
  for t in "${!TOOL_PKG[@]}"; do
    if [[ $t == /* ]]; then [[ -e $t ]] && continue; else command -v "$t" >/dev/null 2>&1 && continue; fi
    [[ " ${missing[*]-} " == *" ${TOOL_PKG[$t]} "* ]] || missing+=("${TOOL_PKG[$t]}")
  done
  printf '%s\n' "${missing[@]-}" | sed '/^$/d' | sort -u | tr '\n' ' '
}
ensure_tools() {
  local pkgs
  pkgs=$(missing_pkgs)
  [[ -z ${pkgs// /} ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "missing tools; install these Debian packages (as root): apt-get install -y $pkgs"
    exit 1
  fi
  log "installing missing tools: $pkgs"
  # shellcheck disable=SC2086
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs >&2; then
    apt-get update >&2
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs >&2
  fi
  pkgs=$(missing_pkgs)
  [[ -z ${pkgs// /} ]] || die "still missing after install: $pkgs"
}

# --- apt helpers ----------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
  [[ $APT_UPDATED -eq 1 ]] && return 1
  APT_UPDATED=1
  if [[ $(id -u) -ne 0 ]]; then
    log "apt lists look missing or old and we are not root: run 'apt-get update' as root"
    return 1
  fi
  log "running apt-get update"
  apt-get update >&2
}
# Resolve, in one apt-cache call (about 0.6 s here: the image's apt config disables pkgcache.bin),
# the kernel package the metapackage depends on and the candidate versions. Prints
# "<kernel pkg> <kernel version> <busybox version>", or nothing.
resolve_packages_uncached() {
  apt-cache show --no-all-versions "$KERNEL_META" "$BUSYBOX_PKG" 2>/dev/null | awk -v meta="$KERNEL_META" -v bb="$BUSYBOX_PKG" '
    /^Package:/ { p = $2 }
    /^Version:/ { ver[p] = $2 }
    /^Depends:/ && p == meta {
      n = split(substr($0, 10), deps, ",")
      for (i = 1; i <= n; i++) if (match(deps[i], /linux-image-[0-9][^ ]*-cloud-amd64 \(= [^)]+\)/)) {
        split(substr(deps[i], RSTART, RLENGTH), f, /[ ()=]+/); kp = f[1]; kv = f[2]
      }
    }
    END { if (kp != "" && kv != "" && ver[bb] != "") print kp, kv, ver[bb] }'
}
# The answer only changes when the apt lists do: remember it keyed by the lists' names/mtimes/sizes.
resolve_packages() {
  local key cache="$CACHE/resolved" line
  key=$(stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* 2>/dev/null | sha256sum | cut -c1-16)
  if [[ -f $cache ]] && read -r line <"$cache" && [[ ${line%% *} == "$key" ]]; then
    echo "${line#* }"
    return 0
  fi
  line=$(resolve_packages_uncached)
  if [[ -n $line ]]; then
    mkdir -p "$CACHE"
    echo "$key $line" >"$cache"
    echo "$line"
  fi
}
# Print the cached .deb of pkg=version, if any.
cached_deb() {
  local f
  for f in "$CACHE/$1"_*.deb; do
    [[ -f $f ]] || continue
    if [[ $(dpkg-deb -f "$f" Version 2>/dev/null) == "$2" ]]; then
      echo "$f"
      return 0
    fi
  done
  return 0
}
# Download pkg=version into the cache (once) and print the .deb path.
fetch_deb() {
  local pkg=$1 ver=$2 deb
  mkdir -p "$CACHE"
  deb=$(cached_deb "$pkg" "$ver")
  if [[ -z $deb ]]; then
    log "downloading $pkg=$ver"
    if ! (cd "$CACHE" && apt-get download "$pkg=$ver" >&2 2>/dev/null); then
      apt_update_once || die "apt-get download $pkg=$ver failed"
      (cd "$CACHE" && apt-get download "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
    fi
    deb=$(cached_deb "$pkg" "$ver")
    [[ -n $deb ]] || die "downloaded $pkg but cannot find its .deb in $CACHE"
  fi
  # keep only this version of the package in the cache
  find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" ! -path "$deb" -delete
  echo "$deb"
}

# --- start ----------------------------------------------------------------------------------------
ensure_tools
mkdir -p "$IMAGES_DIR"
# One build at a time per data dir (parallel test workers may all call this script).
exec 9>"$IMAGES_DIR/.$NAME.lock"
flock 9

RESOLVED=$(resolve_packages)
if [[ -z $RESOLVED ]] && apt_update_once; then RESOLVED=$(resolve_packages); fi
if [[ -z $RESOLVED ]]; then
  if [[ -f $OUT/.stamp && -f $OUT/image.json ]]; then
    log "warning: cannot resolve $KERNEL_META/$BUSYBOX_PKG with apt-cache; keeping the existing image"
    echo "$OUT"
    exit 0
  fi
  die "cannot resolve $KERNEL_META and $BUSYBOX_PKG with apt-cache (no apt lists? run apt-get update)"
fi
read -r KPKG KPKG_VER BB_VER <<<"$RESOLVED"
KVER=${KPKG#linux-image-} # e.g. 6.1.0-56-cloud-amd64 (= uname -r of the guest)

# Stamp: this script, the guest files (docs excluded), and the exact package versions.
STAMP=$(
  {
    echo "script $(sha256sum <"$SCRIPT_PATH" | cut -d' ' -f1)"
    (cd "$GUEST_DIR" && find . -type f ! -name '*.md' -print | LC_ALL=C sort | while read -r f; do
      echo "guest $f $(stat -c %a "$f") $(sha256sum <"$f" | cut -d' ' -f1)"
    done)
    echo "kernel $KPKG $KPKG_VER"
    echo "busybox $BUSYBOX_PKG $BB_VER"
  } | sha256sum | cut -c1-16
)
if [[ -f $OUT/.stamp && $(cat "$OUT/.stamp") == "$STAMP" ]]; then
  for f in vmlinuz initrd.img base.qcow2 boot.qcow2 image.json; do [[ -s $OUT/$f ]] || STAMP_OK=no; done
  if [[ ${STAMP_OK:-yes} == yes ]]; then
    log "up to date ($STAMP, kernel $KVER)"
    echo "$OUT"
    exit 0
  fi
fi
log "building $NAME $STAMP (kernel $KPKG $KPKG_VER, busybox $BB_VER)"

WORK=$(mktemp -d "$IMAGES_DIR/.$NAME.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

KDEB=$(fetch_deb "$KPKG" "$KPKG_VER")
BBDEB=$(fetch_deb "$BUSYBOX_PKG" "$BB_VER")

# --- kernel + modules -----------------------------------------------------------------------------
KROOT="$WORK/kernel"
dpkg -x "$KDEB" "$KROOT"
[[ -f $KROOT/boot/vmlinuz-$KVER ]] || die "no boot/vmlinuz-$KVER in $KDEB"
[[ -d $KROOT/lib/modules/$KVER ]] || die "no lib/modules/$KVER in $KDEB"
depmod -b "$KROOT" "$KVER"
KCONFIG="$KROOT/boot/config-$KVER"

# --- initramfs tree -------------------------------------------------------------------------------
ROOT="$WORK/initramfs"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/hangar,etc/acpi/PWRF,dev,proc,sys,run,tmp,root,mnt/data,mnt/seed,var/log}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
BBROOT="$WORK/busybox"
dpkg -x "$BBDEB" "$BBROOT"
install -m 0755 "$BBROOT/bin/busybox" "$ROOT/bin/busybox"
"$ROOT/bin/busybox" --list-full | while read -r applet; do
  [[ $applet == bin/busybox || $applet == linuxrc ]] && continue
  [[ -e $ROOT/$applet || -L $ROOT/$applet ]] || ln -s /bin/busybox "$ROOT/$applet"
done
[[ -L $ROOT/bin/sh ]] || die "busybox has no sh applet"

install -m 0755 "$GUEST_DIR/init" "$ROOT/init"
install -m 0755 "$GUEST_DIR/acpi-power" "$ROOT/etc/acpi/PWRF/00000080"
grep -v '^#' "$GUEST_DIR/modules.boot" | sed '/^$/d' >"$ROOT/etc/hangar/modules.boot"
grep -v '^#' "$GUEST_DIR/modules.cdrom" | sed '/^$/d' >"$ROOT/etc/hangar/modules.cdrom"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$ROOT/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"
echo "$NAME $STAMP $KVER" >"$ROOT/etc/hangar/version"
# The kernel opens /dev/console before /init mounts devtmpfs; without the node /init starts with
# no stdio (it reopens ttyS0 itself, so this is only nice to have; mknod needs root).
mknod -m 0600 "$ROOT/dev/console" c 5 1 2>/dev/null || log "note: cannot mknod /dev/console (not root?)"
mknod -m 0666 "$ROOT/dev/null" c 1 3 2>/dev/null || true

# Modules: each listed name that is modular in this kernel, plus its dependencies.
MODLIST="$WORK/modules.list"
: >"$MODLIST"
for m in $(grep -hv '^#' "$GUEST_DIR/modules.boot" "$GUEST_DIR/modules.cdrom"); do
  deps=$(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null) || die "module $m not in $KPKG"
  # "builtin X" lines need nothing; "insmod /path/x.ko [opts]" lines name a file to copy
  awk '$1 == "insmod" { print $2 }' <<<"$deps" >>"$MODLIST"
done
sort -u "$MODLIST" | while read -r ko; do
  rel=${ko#"$KROOT"/}
  mkdir -p "$ROOT/$(dirname "$rel")"
  cp "$ko" "$ROOT/$rel"
done
cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$KVER/"
depmod -b "$ROOT" "$KVER"
log "modules: $(sort -u "$MODLIST" | xargs -n1 basename | sed 's/\.ko$//' | tr '\n' ' ')"
# Record which of the brief's optional pieces are builtin rather than modular (for the README/logs).
for opt in EXT4_FS ACPI_BUTTON HOTPLUG_PCI_ACPI; do
  log "kernel config: $(grep -E "^CONFIG_$opt=" "$KCONFIG" || echo "CONFIG_$opt unset")"
done

find "$ROOT" -exec touch -h -d "@$FIXED_EPOCH" {} +
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$WORK/initrd.img"
install -m 0644 "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

CMDLINE=$(grep -v '^#' "$GUEST_DIR/cmdline" | sed '/^$/d' | head -n1)
[[ -n $CMDLINE ]] || die "empty $GUEST_DIR/cmdline"

# --- base.qcow2: ext4 "hangar-data" with /hello --------------------------------------------------
mkdir -p "$WORK/data"
printf 'hangar-base\n' >"$WORK/data/hello"
touch -d "@$FIXED_EPOCH" "$WORK/data/hello" "$WORK/data"
truncate -s "${DISK_MIB}M" "$WORK/data.raw"
E2FSPROGS_FAKE_TIME=$FIXED_EPOCH mkfs.ext4 -q -F -L hangar-data -U "$DATA_UUID" -b 4096 -I 256 \
  -E "hash_seed=$DATA_UUID,root_owner=0:0" -d "$WORK/data" "$WORK/data.raw" >&2
# mkfs -d copies each file's ctime (which touch cannot set) and owner (the builder's): pin them so
# base.qcow2 is byte-identical from build to build, whoever builds it (overlays made over an
# earlier build stay valid after a rebuild).
printf '%s\n' "set_inode_field /hello ctime @$FIXED_EPOCH" 'set_inode_field /hello uid 0' \
  'set_inode_field /hello gid 0' | E2FSPROGS_FAKE_TIME=$FIXED_EPOCH debugfs -w -f - "$WORK/data.raw" >/dev/null 2>&1 ||
  die "debugfs could not pin /hello's ctime/owner"
qemu-img convert -f raw -O qcow2 "$WORK/data.raw" "$WORK/base.qcow2"
rm -f "$WORK/data.raw"

# --- boot.qcow2: MBR (syslinux mbr.bin) + one active FAT16 partition with syslinux ---------------
BOOT_RAW="$WORK/boot.raw"
TOTAL_SECTORS=$((DISK_MIB * 2048))
PART_SECTORS=$((TOTAL_SECTORS - PART_START))
OFFSET_BYTES=$((PART_START * 512))
truncate -s "${DISK_MIB}M" "$BOOT_RAW"
export SOURCE_DATE_EPOCH=$FIXED_EPOCH MTOOLS_SKIP_CHECK=1
mkfs.fat --invariant -F 16 -n HANGARBOOT -i "$FAT_VOLID" --offset "$PART_START" -h "$PART_START" \
  "$BOOT_RAW" $((PART_SECTORS / 2)) >&2
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT hangar
PROMPT 0
TIMEOUT 0
LABEL hangar
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $CMDLINE
EOF
touch -d "@$FIXED_EPOCH" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg"
mcopy -i "$BOOT_RAW@@$OFFSET_BYTES" -m "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg" ::/
syslinux --offset "$OFFSET_BYTES" --install "$BOOT_RAW"
mdir -i "$BOOT_RAW@@$OFFSET_BYTES" -a -b ::/ | grep -qi ldlinux.sys || die "syslinux did not install ldlinux.sys"
# Boot code (first 440 bytes) from syslinux; then the partition table by hand (no sfdisk needed).
dd if="$SYSLINUX_MBR" of="$BOOT_RAW" bs=440 count=1 conv=notrunc status=none
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) $((($1 >> 16) & 255)) $((($1 >> 24) & 255)); }
# disk signature, 2 zero bytes, entry 1: active, CHS fe/ff/ff (use LBA), type 0x0e (FAT16 LBA)
# shellcheck disable=SC2059
{
  printf "$(le32 0x48414e47)\\x00\\x00"
  printf '\x80\xfe\xff\xff\x0e\xfe\xff\xff'
  printf "$(le32 "$PART_START")$(le32 "$PART_SECTORS")"
} | dd of="$BOOT_RAW" bs=1 seek=440 conv=notrunc status=none
printf '\x55\xaa' | dd of="$BOOT_RAW" bs=1 seek=510 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$BOOT_RAW" "$WORK/boot.qcow2"
rm -f "$BOOT_RAW"

# --- manifest -------------------------------------------------------------------------------------
json_escape() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' <<<"$1"; }
cat >"$WORK/image.json" <<EOF
{
  "name": "$NAME",
  "version": "$STAMP",
  "kernelVersion": "$KVER",
  "kernelPackage": "$KPKG=$KPKG_VER",
  "busyboxPackage": "$BUSYBOX_PKG=$BB_VER",
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "cmdline": "$(json_escape "$CMDLINE")",
  "baseDisk": "base.qcow2",
  "bootDisk": "boot.qcow2",
  "marker": "HANGAR-READY"
}
EOF

# --- install: replace files one by one (rename), stamp last ---------------------------------------
mkdir -p "$OUT"
rm -f "$OUT/.stamp"
for f in vmlinuz initrd.img base.qcow2 boot.qcow2 image.json; do
  chmod 0644 "$WORK/$f"
  mv -f "$WORK/$f" "$OUT/$f"
done
echo "$STAMP" >"$OUT/.stamp.tmp"
mv -f "$OUT/.stamp.tmp" "$OUT/.stamp"
log "built $OUT: $(cd "$OUT" && du -h --apparent-size vmlinuz initrd.img base.qcow2 boot.qcow2 | awk '{printf "%s=%s ", $2, $1}')"
echo "$OUT"
