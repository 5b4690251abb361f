#!/usr/bin/env bash
# Builds the boot-acceptance test image: a small Debian 12 (bookworm) cloud image
# in the spirit of Debian's "genericcloud" images, entirely from Debian's package
# archive (mmdebstrap), and caches it as a compressed qcow2.
#
#   GPT, 2 GiB:  p14 BIOS boot (EF02, 3 MiB)  p15 ESP (EF00, FAT, 124 MiB)
#                p1  ext4 root (rest)           -- the layout Debian's cloud images use
#   GRUB for UEFI (EFI/BOOT/BOOTX64.EFI and EFI/debian/grubx64.efi) and legacy BIOS
#   (boot.img in the MBR, core.img in the BIOS boot partition);
#   the variant's kernel (below), console=ttyS0, cloud-init (datasource_list:
#   [ ConfigDrive, None ], default user "debian"), openssh-server (no passwords),
#   systemd-networkd (cloud-init's networkd renderer).
#
# Usage: scripts/build-test-image.sh [--variant NAME]   (prints the cached qcow2 path as its last line)
# Variants (one function each below, variant_NAME, sets what differs; add one there):
#   cloud    (default) linux-image-cloud-amd64: virtio, NVMe; the smallest and fastest to boot
#   generic  linux-image-amd64: the drivers of real servers (megaraid_sas, mpt3sas, ...), for
#            deploys behind emulated HBAs and RAID controllers (scripts/hw-check.sh)
#   Derived variants: a defect planted in a copy of a base image above (its disk is copied, its
#   root mounted and edited; no mmdebstrap), for the image checks' proofs (issue 26,
#   scripts/boot-check.sh --variants). Each is stored as an uncompressed qcow2.
#   fstabdev  (cloud)   /etc/fstab also mounts /dev/vdb1 on /data without nofail: no such disk on
#                       the server sends systemd to emergency mode (the entry's own
#                       x-systemd.device-timeout=10s shortens systemd's 90 s wait for it)
#   nonvme    (generic) the initramfs is rebuilt without the NVMe driver (an initramfs-tools hook
#                       drops drivers/nvme, as a host-only initramfs built on a virtio VM lacks it):
#                       on an NVMe disk the initramfs gives up waiting for the root
#   nocloud   (cloud)   cloud-init's datasource_list is [ NoCloud ]: the ConfigDrive is ignored
#   biosonly  (cloud)   no EFI System Partition (p15 deleted, its fstab line out): legacy BIOS only
#   xfsroot   (cloud)   the root filesystem is XFS (mkfs.xfs, same UUID and label, same files): for
#                       the image checks' XFS reader (GRUB's core has no xfs module: not booted)
# Env:   BYOI_TEST_IMAGE_CACHE   cache directory (default /var/cache/byoi-test-image)
#        BYOI_TEST_IMAGE_COMPRESSION  zlib (default) or zstd
#        BYOI_DEBIAN_MIRROR / BYOI_DEBIAN_SECURITY_MIRROR  override the mirrors read from
#                                /etc/apt/sources.list*
#        BYOI_TEST_IMAGE_REBUILD=1  ignore the cache
# The cache key is the sha256 of this script: the image is rebuilt only when it changes.
# Needs root (loop devices, mount, chroot). Never touches any device it did not create.
set -euo pipefail

log() { printf '[build-test-image] %s\n' "$*" >&2; }

# --- variants: what differs between the test images ------------------------------------------
variant_cloud()   { KERNEL_PKG=linux-image-cloud-amd64; }
variant_generic() { KERNEL_PKG=linux-image-amd64; }
# derived variants: BASE is the variant copied, derive_NAME (below) plants the defect
variant_fstabdev() { BASE=cloud; }
variant_nonvme()   { BASE=generic; }
variant_nocloud()  { BASE=cloud; }
variant_biosonly() { BASE=cloud; }
variant_xfsroot()  { BASE=cloud; }
BASE=""
VARIANT=cloud
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
declare -F "variant_$VARIANT" >/dev/null || { echo "unknown variant $VARIANT (see the variant_* functions)" >&2; exit 2; }
"variant_$VARIANT"
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (loop devices, mount, chroot)"
for t in mmdebstrap sgdisk losetup partx mkfs.ext4 mkfs.vfat mmd mcopy qemu-img blkid fstrim flock fallocate \
  $([ "$VARIANT" != xfsroot ] || echo mkfs.xfs xfs_repair); do
  command -v "$t" >/dev/null || die "missing tool: $t (see scripts/install-test-deps.sh)"
done

SELF=$(readlink -f "${BASH_SOURCE[0]}")
KEY=$(sha256sum "$SELF" | cut -c1-16)
COMP=${BYOI_TEST_IMAGE_COMPRESSION:-zlib}
case "$COMP" in zlib|zstd) ;; *) die "BYOI_TEST_IMAGE_COMPRESSION must be zlib or zstd";; esac
CACHE=${BYOI_TEST_IMAGE_CACHE:-/var/cache/byoi-test-image}
if [ "$VARIANT" = cloud ]; then
  OUT="$CACHE/debian-12-byoi-test-$KEY-$COMP.qcow2"
elif [ -n "$BASE" ]; then
  OUT="$CACHE/debian-12-byoi-test-$VARIANT-$KEY.qcow2" # uncompressed
else
  OUT="$CACHE/debian-12-byoi-test-$VARIANT-$KEY-$COMP.qcow2"
fi
mkdir -p "$CACHE"

# A derived variant's base is built (or found) first, by this script: before the lock, which
# that run takes itself.
if [ -n "$BASE" ]; then
  BASE_OUT=$("$SELF" --variant "$BASE" | tail -1)
  [ -s "$BASE_OUT" ] || die "base variant $BASE: no image"
fi

exec 9>"$CACHE/.lock"
flock -w 1800 9 || die "timed out waiting for the cache lock $CACHE/.lock"

if [ -s "$OUT" ] && [ "${BYOI_TEST_IMAGE_REBUILD:-0}" != 1 ]; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi

# --- mirrors: the ones this machine's apt already uses --------------------------------------
sources_uris() { # print every URI from the host's apt sources (deb822 and one-line style)
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1=="deb"{for(i=2;i<=NF;i++) if($i ~ /^[a-z]+:\/\//){print $i; break}}'
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk 'tolower($1)=="uris:"{for(i=2;i<=NF;i++) print $i}'
  } | sed 's:/*$::'
}
MIRROR=${BYOI_DEBIAN_MIRROR:-$(sources_uris | grep -E '/debian$' | head -1 || true)}
SECMIRROR=${BYOI_DEBIAN_SECURITY_MIRROR:-$(sources_uris | grep -E '/debian-security$' | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${SECMIRROR:-http://deb.debian.org/debian-security}
log "mirror: $MIRROR  security: $SECMIRROR"

# --- scratch space, loop device, mounts: all undone by the trap --------------------------------
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
RAW="$WORK/disk.raw"
ROOT="$WORK/root"
LOOP=""
MOUNTS=()
cleanup() {
  local rc=$?
  set +e
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null
  done
  if [ -n "$LOOP" ]; then
    partx -d "$LOOP" 2>/dev/null
    losetup -d "$LOOP"
  fi
  rm -rf "$WORK"
  [ $rc -eq 0 ] || log "FAILED (exit $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mnt() { mount "$@"; MOUNTS+=("${@: -1}"); }

# --- derived variants: a copy of the base image's disk, its root mounted and edited ------------
attach() { # attach RAW PART...: the loop device in LOOP, partition nodes made with partx
  LOOP=$(losetup --find --show --partscan "$1")
  log "loop device: $LOOP (backing $1)"
  partx -a "$LOOP" 2>/dev/null || partx -u "$LOOP" 2>/dev/null || true
  local p
  for p in "${@:2}"; do
    for _ in $(seq 50); do [ -b "${LOOP}p$p" ] && break; sleep 0.1; done
    [ -b "${LOOP}p$p" ] || die "partition node ${LOOP}p$p did not appear"
  done
}
chroot_env() { # proc, sys and a private /dev (never the host's /dev) for a chroot into $ROOT
  mnt -t proc proc "$ROOT/proc"
  mnt -t sysfs sysfs "$ROOT/sys"
  mnt -t tmpfs -o mode=755,size=16m devtmp "$ROOT/dev"
  local n
  for n in null zero full random urandom tty; do cp -a "/dev/$n" "$ROOT/dev/$n"; done
  mkdir -p "$ROOT/dev/pts"
  mnt -t devpts devpts "$ROOT/dev/pts"
}
unmount_all() { local i; for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount "${MOUNTS[$i]}"; done; MOUNTS=(); }
derive_root() { LANG=C.UTF-8 LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" "$@"; }

derive_fstabdev() {
  mkdir -p "$ROOT/data"
  printf '%s\n' '/dev/vdb1        /data      ext4  defaults,x-systemd.device-timeout=10s  0  2' >>"$ROOT/etc/fstab"
}
derive_nonvme() {
  mkdir -p "$ROOT/etc/initramfs-tools/hooks"
  cat >"$ROOT/etc/initramfs-tools/hooks/zz-no-nvme" <<'EOF'
#!/bin/sh
# byoi test image (variant nonvme): an initramfs without the NVMe driver
case "$1" in prereqs) exit 0;; esac
rm -rf "$DESTDIR"/lib/modules/*/kernel/drivers/nvme "$DESTDIR"/usr/lib/modules/*/kernel/drivers/nvme
EOF
  chmod 755 "$ROOT/etc/initramfs-tools/hooks/zz-no-nvme"
  chroot_env
  # the root's node and /dev/disk/by-uuid link, as the base build had them (the fsck hook
  # looks the root's type up there)
  cp -a "$LOOP" "${LOOP}p1" "$ROOT/dev/"
  mkdir -p "$ROOT/dev/disk/by-uuid"
  ln -s "../../$(basename "$LOOP")p1" "$ROOT/dev/disk/by-uuid/$(blkid -s UUID -o value "${LOOP}p1")"
  derive_root update-initramfs -u -k all >&2
  local i n=0
  for i in "$ROOT"/boot/initrd.img-*; do
    n=$((n+1))
    derive_root lsinitramfs "/boot/${i##*/}" >"$WORK/lsinitramfs"
    ! grep -E '(^|/)nvme[^/]*\.ko' "$WORK/lsinitramfs" >&2 || die "$i still holds an NVMe module"
    grep -q '/virtio_blk\.ko' "$WORK/lsinitramfs" || die "$i lost virtio_blk too (the hook removes too much)"
    grep -Eq 'sbin/(fsck\.ext4|e2fsck)$' "$WORK/lsinitramfs" || die "$i has no fsck.ext4 (the fsck hook did not find the root)"
    log "$(basename "$i"): no nvme*.ko (lsinitramfs)"
  done
  [ $n -gt 0 ] || die "no initramfs in /boot"
}
derive_nocloud() {
  sed -i 's/^datasource_list:.*/datasource_list: [ NoCloud ]/' "$ROOT/etc/cloud/cloud.cfg.d/90_byoi_test.cfg"
  grep -q '^datasource_list: \[ NoCloud \]$' "$ROOT/etc/cloud/cloud.cfg.d/90_byoi_test.cfg" || die "datasource_list not replaced"
}
derive_biosonly() { # the partition itself goes once the disk is detached (derive_biosonly_disk)
  sed -i '\#[[:space:]]/boot/efi[[:space:]]#d' "$ROOT/etc/fstab"
  ! grep -q /boot/efi "$ROOT/etc/fstab" || die "the ESP's fstab line is still there"
}
derive_biosonly_disk() {
  local start size
  start=$(partx -g -o START -n 15 "$RAW") size=$(partx -g -o SECTORS -n 15 "$RAW")
  fallocate -p -o $((start*512)) -l $((size*512)) "$RAW"
  sgdisk -d 15 "$RAW" >/dev/null
  ! sgdisk -p "$RAW" | grep -q EF00 || die "an EF00 partition is still there"
}
derive_xfsroot() { # the root's files out, mkfs.xfs with the same UUID and label, the files back
  local uuid
  uuid=$(blkid -s UUID -o value "${LOOP}p1")
  tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -cpf "$WORK/root.tar" .
  umount "$ROOT"; MOUNTS=()
  mkfs.xfs -q -f -L root -m uuid="$uuid" "${LOOP}p1"
  mnt "${LOOP}p1" "$ROOT"
  tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$WORK/root.tar"
  rm -f "$WORK/root.tar"
  sed -i "s#^UUID=$uuid[[:space:]].*#UUID=$uuid  /          xfs   defaults  0  1#" "$ROOT/etc/fstab"
  grep -q "^UUID=$uuid .* xfs " "$ROOT/etc/fstab" || die "fstab's root line not changed to xfs"
}

if [ -n "$BASE" ]; then
  START=$(date +%s)
  log "deriving $VARIANT from $BASE_OUT ..."
  qemu-img convert -O raw "$BASE_OUT" "$RAW"
  attach "$RAW" 1
  mkdir -p "$ROOT"
  mnt "${LOOP}p1" "$ROOT"
  "derive_$VARIANT"
  unmount_all
  case "$(blkid -s TYPE -o value "${LOOP}p1")" in
    ext4) e2fsck -fy "${LOOP}p1" >&2 || [ $? -le 1 ] || die "e2fsck found errors";;
    xfs) xfs_repair -n "${LOOP}p1" >&2 || die "xfs_repair -n found errors";;
    *) die "unexpected root filesystem type";;
  esac
  partx -d "$LOOP" 2>/dev/null || true
  losetup -d "$LOOP"; LOOP=""
  if declare -F "derive_${VARIANT}_disk" >/dev/null; then "derive_${VARIANT}_disk"; fi
  sgdisk -v "$RAW" | grep -q "No problems found" || die "sgdisk -v found problems"
  qemu-img convert -O qcow2 "$RAW" "$WORK/out.qcow2"
  mv "$WORK/out.qcow2" "$OUT"
  log "built $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - START )) s"
  echo "$OUT"
  exit 0
fi

START=$(date +%s)
truncate -s 2G "$RAW"
sgdisk -Z "$RAW" >/dev/null 2>&1 || true
sgdisk -o \
  -n 14:2048:+3M   -t 14:EF02 -c 14:bios \
  -n 15:0:+124M    -t 15:EF00 -c 15:esp \
  -n 1:0:0         -t 1:8304  -c 1:root \
  "$RAW" >/dev/null

LOOP=$(losetup --find --show --partscan "$RAW")
log "loop device: $LOOP (backing $RAW)"
partx -a "$LOOP" 2>/dev/null || partx -u "$LOOP" 2>/dev/null || true
for p in 1 14 15; do
  for _ in $(seq 50); do [ -b "${LOOP}p$p" ] && break; sleep 0.1; done
  [ -b "${LOOP}p$p" ] || die "partition node ${LOOP}p$p did not appear"
done

mkfs.ext4 -q -L root -m 1 -E lazy_itable_init=0,lazy_journal_init=0 "${LOOP}p1"
mkfs.vfat -n EFI "${LOOP}p15" >/dev/null
ROOT_UUID=$(blkid -s UUID -o value "${LOOP}p1")
ESP_UUID=$(blkid -s UUID -o value "${LOOP}p15")
[ -n "$ROOT_UUID" ] && [ -n "$ESP_UUID" ] || die "could not read filesystem UUIDs"
log "root UUID $ROOT_UUID, ESP UUID $ESP_UUID"

mkdir -p "$ROOT"
mnt "${LOOP}p1" "$ROOT"

# --- the root filesystem ------------------------------------------------------------------------
PKGS=(
  "$KERNEL_PKG" initramfs-tools
  grub-pc-bin grub-efi-amd64-bin grub2-common
  systemd-sysv udev dbus iproute2 netbase kmod procps less
  cloud-init cloud-guest-utils fdisk e2fsprogs
  openssh-server sudo ca-certificates zstd
)
IFS=,
INCLUDE="${PKGS[*]}"
unset IFS
# The mmdebstrap result is cached as a tarball keyed by the package list and mirrors, so that
# tweaking the configuration below does not download everything again.
ROOTFS_KEY=$(printf '%s\n' "$INCLUDE" "$MIRROR" "$SECMIRROR" "v1" | sha256sum | cut -c1-16)
ROOTFS_TAR="$CACHE/rootfs-$VARIANT-$ROOTFS_KEY.tar"
# (the name before it had the variant in it: taken over, not downloaded again)
[ -s "$ROOTFS_TAR" ] || [ ! -s "$CACHE/rootfs-$ROOTFS_KEY.tar" ] || mv "$CACHE/rootfs-$ROOTFS_KEY.tar" "$ROOTFS_TAR"
if [ ! -s "$ROOTFS_TAR" ] || [ "${BYOI_TEST_IMAGE_REBUILD:-0}" = 1 ]; then
  log "mmdebstrap bookworm (${#PKGS[@]} packages requested) ..."
  T0=$(date +%s)
  LANG=C.UTF-8 LC_ALL=C.UTF-8 mmdebstrap --mode=root --variant=apt --format=tar \
    --include="$INCLUDE" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$WORK/rootfs.tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECMIRROR bookworm-security main" >&2
  log "mmdebstrap took $(( $(date +%s) - T0 )) s"
  rm -f "$CACHE/rootfs-$VARIANT"-*.tar # this variant's stale ones only
  mv "$WORK/rootfs.tar" "$ROOTFS_TAR"
else
  log "reusing cached rootfs $ROOTFS_TAR"
fi
tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$ROOTFS_TAR"

# chroot environment of our own: proc, sys and a private /dev (never the host's /dev)
mnt -t proc proc "$ROOT/proc"
mnt -t sysfs sysfs "$ROOT/sys"
mnt -t tmpfs -o mode=755,size=16m devtmp "$ROOT/dev"
for n in null zero full random urandom tty; do cp -a "/dev/$n" "$ROOT/dev/$n"; done
cp -a "$LOOP" "${LOOP}p1" "${LOOP}p14" "${LOOP}p15" "$ROOT/dev/"
mkdir -p "$ROOT/dev/pts" "$ROOT/dev/disk/by-uuid"
ln -s "../../$(basename "$LOOP")p1" "$ROOT/dev/disk/by-uuid/$ROOT_UUID"
ln -s "../../$(basename "$LOOP")p15" "$ROOT/dev/disk/by-uuid/$ESP_UUID"
mnt -t devpts devpts "$ROOT/dev/pts"
in_root() { LANG=C.UTF-8 LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" "$@"; }

cat >"$ROOT/etc/fstab" <<EOF
# <file system>  <mount point>  <type>  <options>  <dump>  <pass>
UUID=$ROOT_UUID  /          ext4  rw,discard,errors=remount-ro  0  1
UUID=$ESP_UUID   /boot/efi  vfat  defaults,nofail,umask=0077  0  0
EOF
mkdir -p "$ROOT/boot/efi"
echo localhost >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
echo 'LANG=C.UTF-8' >"$ROOT/etc/default/locale"

# GRUB configuration: quick, serial, root=UUID=. nvme_core.io_timeout: under TCG on a loaded host
# an NVMe I/O can wait over 30 s, and the controller reset that follows loses every later I/O
# with QEMU 7.2's NVMe (docs/pxe-findings.md); pxe-check boots this image on NVMe disks.
cat >"$ROOT/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200 nvme_core.io_timeout=600"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB_DISABLE_RECOVERY=true
EOF

# cloud-init: ConfigDrive first, then None; Debian's default user "debian"
cat >"$ROOT/etc/cloud/cloud.cfg.d/90_byoi_test.cfg" <<'EOF'
datasource_list: [ ConfigDrive, None ]
manage_etc_hosts: true
# ed25519 + ecdsa host keys only: RSA key generation is slow under QEMU TCG
ssh_genkeytypes: [ed25519, ecdsa]
EOF
mkdir -p "$ROOT/etc/ssh/sshd_config.d"
cat >"$ROOT/etc/ssh/sshd_config.d/50-byoi-test.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

# quiet, fast boot: nothing periodic, networkd for cloud-init's network config
in_root systemctl enable systemd-networkd.service >&2
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer man-db.timer >&2 2>/dev/null || true
mkdir -p "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d/byoi-test.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF

# initramfs after everything (e2fsprogs' fsck hook included), then grub.cfg
in_root update-initramfs -u -k all >&2
mkdir -p "$ROOT/boot/grub"
in_root grub-mkconfig -o /boot/grub/grub.cfg >&2 2>&1
grep -q "root=UUID=$ROOT_UUID" "$ROOT/boot/grub/grub.cfg" || die "grub.cfg does not boot root=UUID=$ROOT_UUID"

# legacy BIOS: boot.img in the MBR, core.img in the BIOS boot partition, i386-pc modules in /boot/grub
in_root grub-install --target=i386-pc --boot-directory=/boot --modules="part_gpt ext2" \
  --no-floppy "$LOOP" >&2 2>&1

# UEFI: a standalone GRUB EFI binary (no vfat mount needed), copied in with mtools
mkdir -p "$ROOT/boot/grub/x86_64-efi"
cp "$ROOT"/usr/lib/grub/x86_64-efi/*.mod "$ROOT"/usr/lib/grub/x86_64-efi/*.lst "$ROOT/boot/grub/x86_64-efi/"
cat >"$ROOT/tmp/early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
in_root grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -o /tmp/grubx64.efi \
  -c /tmp/early.cfg -p /boot/grub \
  part_gpt part_msdos fat ext2 normal linux search search_fs_uuid search_label configfile \
  echo boot gzio serial terminal efi_gop all_video test reboot halt sleep loadenv minicmd
MT="${LOOP}p15"
MTOOLS_SKIP_CHECK=1 mmd -i "$MT" ::/EFI ::/EFI/BOOT ::/EFI/debian
MTOOLS_SKIP_CHECK=1 mcopy -i "$MT" "$ROOT/tmp/grubx64.efi" ::/EFI/BOOT/BOOTX64.EFI
MTOOLS_SKIP_CHECK=1 mcopy -i "$MT" "$ROOT/tmp/grubx64.efi" ::/EFI/debian/grubx64.efi
cp "$ROOT/tmp/early.cfg" "$WORK/grub-early.cfg"
MTOOLS_SKIP_CHECK=1 mcopy -i "$MT" "$WORK/grub-early.cfg" ::/EFI/debian/grub.cfg
rm -f "$ROOT/tmp/grubx64.efi" "$ROOT/tmp/early.cfg"

# generalise: no host keys, no machine-id, no logs, no apt lists, no cloud-init state
rm -f "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
  "$ROOT"/var/lib/cloud/* "$ROOT"/var/log/*.log "$ROOT"/tmp/* "$ROOT"/root/.bash_history
rm -f "$ROOT/dev/disk/by-uuid/"* # (private tmpfs anyway)

for ((i=${#MOUNTS[@]}-1; i>=1; i--)); do umount "${MOUNTS[$i]}"; done
MOUNTS=("${MOUNTS[0]}")
sync -f "$ROOT"
fstrim "$ROOT" >&2 || log "fstrim failed (image will just be larger)"
umount "$ROOT"; MOUNTS=()
e2fsck -fy "${LOOP}p1" >&2 || [ $? -le 1 ] || die "e2fsck found errors"
sgdisk -v "$RAW" | grep -q "No problems found" || die "sgdisk -v found problems"
partx -d "$LOOP" 2>/dev/null || true
losetup -d "$LOOP"; LOOP=""

log "converting to qcow2 ($COMP) ..."
qemu-img convert -c -O qcow2 -o compression_type="$COMP" "$RAW" "$WORK/out.qcow2"
mv "$WORK/out.qcow2" "$OUT"
log "built $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - START )) s"
echo "$OUT"
