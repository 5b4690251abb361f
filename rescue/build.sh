#!/usr/bin/env bash
# Builds the byoi rescue system that servers network-boot into: Debian 12's generic kernel and
# an initramfs holding busybox (static), the init in rescue/ (beside this script), a curated set
# of kernel modules for server hardware (rescue/modules.txt) with their dependencies, the free
# firmware Debian ships in main, and a static `byoi` binary. At boot, init has `byoi drivers
# load` load the modules whose modules.alias matches a device that is there, then runs `byoi
# agent`. byoi-api serves it (`byoi-api serve --rescue-dir DIR`: DIR holds vmlinuz and
# initrd.img; the printed paths are in one directory).
#
#   kernel:     linux-image-amd64's image (generic: the drivers of most servers, as modules)
#   initramfs:  /init (rescue/init), /bin/busybox + applet links,
#               /etc/udhcpc/default.script (rescue/udhcpc.script), /bin/byoi,
#               /lib/modules/<kver>/: the modules of rescue/modules.txt + BYOI_RESCUE_MODULES
#               and their dependencies, indexed by depmod -b (modules.dep, modules.alias),
#               /lib/firmware: firmware-linux-free, plus BYOI_RESCUE_FIRMWARE_DIR's files
#
# Usage: rescue/build.sh [--byoi PATH]   (or BYOI_BIN=PATH; scripts/build-rescue.sh runs this)
#   Prints the kernel path, then the initramfs path (the last two lines of stdout);
#   logs go to stderr. Needs root (the initramfs holds /dev/console) and apt-get.
# Env:   BYOI_BIN                  the static byoi binary to bake in (default: cmd/byoi of
#                                  this tree, built with CGO_ENABLED=0 -trimpath -ldflags=-s -w)
#        BYOI_RESCUE_CACHE         cache directory (default /var/cache/byoi-rescue)
#        BYOI_RESCUE_MODULES       modules to add to rescue/modules.txt's (names, space-separated;
#                                  their dependencies come along), e.g. "qla2xxx lpfc"
#        BYOI_RESCUE_FIRMWARE_DIR  a directory copied into the initramfs's /lib/firmware (non-free
#                                  firmware, e.g. bnx2x/, qed/, i915/ from Debian's
#                                  firmware-nonfree packages or linux-firmware.git)
#        BYOI_RESCUE_KERNEL_PKG    kernel meta package (default linux-image-amd64)
#        BYOI_RESCUE_COMPRESS      gzip (default: fastest to unpack under TCG) or xz
#        BYOI_RESCUE_REBUILD=1     ignore the cached result
# Cache key: sha256 of everything in rescue/ (this script included), the exact .deb versions,
# the byoi binary, the module list, the firmware directory's files and the compression. Downloaded .debs are kept in
# $CACHE/debs, so a key change does not download them again; the 8 newest builds are kept.
#
# byoi-api's rescue script boots it with (iPXE; controlplane/netboot):
#   kernel http://HOST/boot/rescue/vmlinuz initrd=initrd.img quiet console=... BOOTIF=01-aa-bb-.. byoi.url=... byoi.server=... byoi.token=...
#   initrd http://HOST/boot/rescue/initrd.img
#   boot
# (`initrd=initrd.img` is for the EFI stub under UEFI; `quiet` keeps the kernel from echoing
# its command line, token included, to the console.)
set -euo pipefail

log() { printf '[build-rescue] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

BYOI=${BYOI_BIN:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --byoi) BYOI=$2; shift 2;;
    --byoi=*) BYOI=${1#*=}; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) die "unknown argument $1 (see --help)";;
  esac
done
[ "$(id -u)" = 0 ] || die "must run as root (the initramfs holds the /dev/console node)"
SELF=$(readlink -f "${BASH_SOURCE[0]}")
BUILT=
if [ -z "$BYOI" ]; then
  command -v go >/dev/null || die "no byoi binary (--byoi PATH) and no go to build one"
  BUILT=$(mktemp -d /tmp/byoi-rescue-bin.XXXXXX)
  BYOI=$BUILT/byoi
  trap 'rm -rf "$BUILT"' EXIT
  log "building byoi (CGO_ENABLED=0 go build -trimpath -ldflags=-s -w ./cmd/byoi)"
  (cd "$(dirname "$SELF")/.." && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$BYOI" ./cmd/byoi) ||
    die "go build ./cmd/byoi failed"
fi
[ -f "$BYOI" ] && [ -x "$BYOI" ] || die "byoi binary $BYOI is not an executable file"
if head -c 4 "$BYOI" | grep -q 'ELF' && LC_ALL=C readelf -l "$BYOI" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  die "$BYOI is dynamically linked: build it with CGO_ENABLED=0"
fi
PATH=$PATH:/usr/sbin:/sbin
for t in apt-get apt-cache dpkg-deb sha256sum flock find sort gzip depmod modinfo; do
  command -v "$t" >/dev/null || die "missing tool: $t"
done

SRC=$(dirname "$SELF")
[ -f "$SRC/init" ] && [ -f "$SRC/udhcpc.script" ] || die "missing $SRC/init or $SRC/udhcpc.script"
CACHE=${BYOI_RESCUE_CACHE:-/var/cache/byoi-rescue}
KPKG=${BYOI_RESCUE_KERNEL_PKG:-linux-image-amd64}
FWDIR=${BYOI_RESCUE_FIRMWARE_DIR:-}
[ -z "$FWDIR" ] || [ -d "$FWDIR" ] || die "BYOI_RESCUE_FIRMWARE_DIR=$FWDIR is not a directory"
COMPRESS=${BYOI_RESCUE_COMPRESS:-gzip}
case "$COMPRESS" in gzip) ;; xz) command -v xz >/dev/null || die "missing tool: xz";; *) die "BYOI_RESCUE_COMPRESS must be gzip or xz";; esac
[ -f "$SRC/modules.txt" ] || die "missing $SRC/modules.txt"
MODULES="$(sed 's/#.*//' "$SRC/modules.txt" | tr '\n' ' ' | tr -s ' ') ${BYOI_RESCUE_MODULES:-}"
mkdir -p "$CACHE/debs"

exec 9>"$CACHE/.lock"
flock -w 900 9 || die "timed out waiting for the cache lock $CACHE/.lock"

# --- exact package versions (the apt candidates) -------------------------------------------------
candidate() { # candidate PKG -> version, from the local apt lists
  apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -1
}
KVER_PKG=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 |
  tr ',' '\n' | sed 's/([^)]*)//; s/|.*//; s/ //g' | grep -E '^linux-image-[0-9]' | head -1 || true)
[ -n "$KVER_PKG" ] || die "cannot resolve $KPKG to a linux-image-<abi> package (apt-get update?)"
PKGS=("$KVER_PKG" busybox-static firmware-linux-free)
declare -A VER
for p in "${PKGS[@]}"; do
  VER[$p]=$(candidate "$p")
  [ -n "${VER[$p]}" ] || die "no candidate version for $p (apt-get update?)"
done
BYOI_SUM=$(sha256sum "$BYOI" | cut -d' ' -f1)
KEY=$( {
  sha256sum "$SELF" | cut -d' ' -f1
  (cd "$SRC" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  for p in "${PKGS[@]}"; do echo "$p=${VER[$p]}"; done
  echo "byoi=$BYOI_SUM modules=$MODULES compress=$COMPRESS"
  [ -z "$FWDIR" ] || (cd "$FWDIR" && find . -type f | LC_ALL=C sort | xargs -r sha256sum)
} | sha256sum | cut -c1-16)
OUT="$CACHE/$KEY"
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ "${BYOI_RESCUE_REBUILD:-0}" != 1 ]; then
  log "cached: $OUT ($(sed -n 's/^sizes: //p' "$OUT/manifest.txt" 2>/dev/null))"
  echo "$OUT/vmlinuz"
  echo "$OUT/initrd.img"
  exit 0
fi

WORK=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() { local rc=$?; rm -rf "$WORK"; [ -z "$BUILT" ] || rm -rf "$BUILT"; [ $rc -eq 0 ] || log "FAILED (exit $rc)"; exit $rc; }
trap cleanup EXIT
trap 'exit 130' INT TERM
START=$(date +%s)

# --- download (cached) and unpack -------------------------------------------------------------
deb_of() { # deb_of PKG -> path of the cached .deb of its pinned version, downloading it
  local p=$1 v=${VER[$1]} d f
  d="$CACHE/debs/$p=${v//:/%3a}"
  f=$(find "$d" -maxdepth 1 -name '*.deb' 2>/dev/null | head -1)
  if [ -z "$f" ]; then
    log "apt-get download $p=$v"
    rm -rf "$d.tmp"; mkdir -p "$d.tmp"
    (cd "$d.tmp" && timeout 600 apt-get -q -o APT::Sandbox::User=root download "$p=$v" >&2) ||
      die "apt-get download $p=$v failed"
    rm -rf "$d"; mv "$d.tmp" "$d"
    f=$(find "$d" -maxdepth 1 -name '*.deb' | head -1)
  fi
  [ -n "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$v" ] || die "bad cached package in $d"
  echo "$f"
}
KDEB=$(deb_of "$KVER_PKG")
BBDEB=$(deb_of busybox-static)
FWDEB=$(deb_of firmware-linux-free)
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"
dpkg-deb -x "$FWDEB" "$WORK/firmware"
KVER=$(ls "$WORK/kernel/lib/modules")
[ "$(echo "$KVER" | wc -w)" = 1 ] || die "expected one kernel version in $KDEB, found: $KVER"
VMLINUZ="$WORK/kernel/boot/vmlinuz-$KVER"
[ -s "$VMLINUZ" ] || die "no kernel image in $KDEB"
BB="$WORK/busybox/bin/busybox"
[ -x "$BB" ] || die "no busybox in $BBDEB"
log "kernel $KVER ($KVER_PKG ${VER[$KVER_PKG]}), busybox-static ${VER[busybox-static]}"

# --- the tree ---------------------------------------------------------------------------------------
R="$WORK/root"
mkdir -p "$R"/{bin,dev,etc/udhcpc,lib/modules,proc,root,run,sys,tmp,var,usr}
ln -s bin "$R/sbin"; ln -s ../bin "$R/usr/bin"; ln -s ../bin "$R/usr/sbin"
chmod 1777 "$R/tmp"; chmod 700 "$R/root"
cp "$BB" "$R/bin/busybox"
for a in $("$BB" --list); do
  [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
done
install -m 0755 "$SRC/init" "$R/init"
install -m 0755 "$SRC/udhcpc.script" "$R/etc/udhcpc/default.script"
install -m 0755 "$BYOI" "$R/bin/byoi"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3
printf 'root::0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\ntty:x:5:\ndisk:x:6:\n' >"$R/etc/group"
printf '127.0.0.1\tlocalhost byoi-rescue\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
cat >"$R/etc/profile" <<'EOF'
export PS1='byoi-rescue# '
echo "byoi rescue system: 'byoi disks', 'byoi agent', 'reboot -f'"
EOF
echo "byoi-rescue $KVER built $(date -u +%Y-%m-%dT%H:%M:%SZ) key $KEY" >"$R/etc/byoi-rescue-release"

# --- modules: the requested ones and their dependencies, in load order ------------------------
MODDIR="$WORK/kernel/lib/modules/$KVER"
declare -A KO SEEN
while read -r f; do
  n=${f##*/}; n=${n%.ko}; KO[${n//-/_}]=$f
done < <(cd "$MODDIR" && find kernel -name '*.ko')
builtin_mod() { grep -qE "/${1//_/[-_]}\.ko\$" "$MODDIR/modules.builtin"; }
ORDER=()
visit() {
  local m=${1//-/_} d
  [ -z "${SEEN[$m]:-}" ] || return 0
  SEEN[$m]=1
  if [ -z "${KO[$m]:-}" ]; then
    builtin_mod "$m" && return 0
    die "module $m is neither a module nor built into $KVER"
  fi
  for d in $(tr '\0' '\n' <"$MODDIR/${KO[$m]}" | sed -n 's/^depends=//p' | head -1 | tr ',' ' '); do
    visit "$d"
  done
  ORDER+=("$m")
}
for m in $MODULES; do
  case "$m" in
    \?*) m=${m#\?}
        if [ -z "${KO[${m//-/_}]:-}" ] && ! builtin_mod "$m"; then log "optional module $m: not in $KVER"; continue; fi;;
  esac
  visit "$m"
done
for m in "${ORDER[@]}"; do
  mkdir -p "$R/lib/modules/$KVER/$(dirname "${KO[$m]}")"
  cp "$MODDIR/${KO[$m]}" "$R/lib/modules/$KVER/${KO[$m]}"
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
  [ ! -f "$MODDIR/$f" ] || cp "$MODDIR/$f" "$R/lib/modules/$KVER/"
done
# The kernel package ships no index: modules.dep, modules.alias, ... for the shipped set.
depmod -b "$R" "$KVER" || die "depmod -b failed"
[ -s "$R/lib/modules/$KVER/modules.alias" ] || die "depmod wrote no modules.alias"
log "modules (${#ORDER[@]}): ${ORDER[*]}"

# --- firmware: Debian main's free firmware, then the operator's directory ---------------------------
mkdir -p "$R/lib/firmware"
[ ! -d "$WORK/firmware/lib/firmware" ] || cp -a "$WORK/firmware/lib/firmware/." "$R/lib/firmware/"
[ -z "$FWDIR" ] || cp -aL "$FWDIR/." "$R/lib/firmware/"
# Firmware the shipped modules may ask for and that is not there (non-free; say so).
MISSING_FW=()
for m in "${ORDER[@]}"; do
  for fw in $(modinfo -F firmware "$MODDIR/${KO[$m]}" 2>/dev/null); do
    [ -e "$R/lib/firmware/$fw" ] || MISSING_FW+=("$m:$fw")
  done
done
log "firmware: $(find "$R/lib/firmware" -type f | wc -l) files; ${#MISSING_FW[@]} named by the modules are not shipped (non-free: BYOI_RESCUE_FIRMWARE_DIR)"

# --- the archive ----------------------------------------------------------------------------------
find "$R" -exec touch -h -d @0 {} +
mkdir -p "$WORK/out"
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) >"$WORK/initrd.cpio"
case "$COMPRESS" in
  gzip) gzip -n -9 <"$WORK/initrd.cpio" >"$WORK/out/initrd.img";;
  xz)   xz -T0 --check=crc32 --lzma2=dict=32MiB -9 <"$WORK/initrd.cpio" >"$WORK/out/initrd.img";;
esac
cp "$VMLINUZ" "$WORK/out/vmlinuz"
# The index of the shipped modules, beside the files: what this rescue can drive.
cp "$R/lib/modules/$KVER/modules.alias" "$R/lib/modules/$KVER/modules.dep" "$WORK/out/"
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
SIZES="vmlinuz $(mib "$WORK/out/vmlinuz"), initrd.img $(mib "$WORK/out/initrd.img") ($COMPRESS; $(mib "$WORK/initrd.cpio") unpacked; byoi $(mib "$BYOI"))"
{
  echo "key: $KEY"
  echo "kernel: $KVER ($KVER_PKG ${VER[$KVER_PKG]})"
  echo "busybox-static: ${VER[busybox-static]}"
  echo "byoi: $BYOI_SUM"
  echo "modules: ${ORDER[*]}"
  echo "firmware: firmware-linux-free ${VER[firmware-linux-free]}${FWDIR:+ + $FWDIR}"
  echo "firmware not shipped: ${MISSING_FW[*]}"
  echo "sizes: $SIZES"
  (cd "$WORK/out" && sha256sum vmlinuz initrd.img)
} >"$WORK/out/manifest.txt"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
# keep the 8 newest builds
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %p\n' |
  sort -rn | tail -n +9 | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
log "built $OUT in $(( $(date +%s) - START )) s: $SIZES"
echo "$OUT/vmlinuz"
echo "$OUT/initrd.img"
