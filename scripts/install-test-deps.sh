#!/usr/bin/env bash
# Installs the Debian 12 packages byoi's tests and scripts need. Idempotent:
# packages already present are not fetched again. With BYOI_SKIP_BOOT=1 only
# what the Go tests need is installed (no QEMU system emulator, firmware or
# image builder).
set -euo pipefail
pkgs=(
  qemu-utils        # qemu-img, qemu-io: qcow2 fixtures and the conversion judge
  gdisk             # sgdisk: GPT fixtures and the relocation judge
  fdisk             # sfdisk: partition table judge
  util-linux        # blkid, losetup, partx
  xorriso           # ISO9660 extraction (the kernel here has no isofs)
  genisoimage       # isoinfo
  dosfstools        # mkfs.vfat, fsck.fat
  mtools            # FAT access without mounting
  cloud-init        # its Python ConfigDrive reader judges our config-2
  e2fsprogs         # mkfs.ext4 for in-use tests
  openssh-client    # ssh-keygen for key fixtures
  zstd xz-utils bzip2 # compressed raw images: the tools are the judges
  curl time file    # benchmarks and the static-binary check
  postgresql        # the control plane's PostgreSQL store tests (scripts/pg-throwaway.sh)
  chromium          # the Control Panel browser tests (chromedp drives it headless)
  binutils          # as, ld: controlplane/netboot's test rebuilds bootsel.bin
  xfsprogs cpio lz4 # imagecheck: XFS roots (mkfs.xfs -p), initramfs archives and their compressions
  openipmi ipmitool # ipmi_sim, the BMC of the power tests; ipmitool judges them
  nodejs            # OVH's Node.js client (npm ovh 2.0.3) drives byoi-api in e2e (issue 24)
)
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ]; then
  pkgs+=(
    qemu-system-x86 # boot acceptance
    ovmf            # UEFI firmware for boot acceptance
    mmdebstrap      # builds the boot test image
    ipxe-qemu       # the NICs' iPXE option ROMs of the network boot check (scripts/pxe-check.sh)
  )
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's nodejs comes without npm (a package of its own); NodeSource's
# nodejs carries it and conflicts with Debian's npm.
if ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq npm >/dev/null
fi
