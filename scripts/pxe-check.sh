#!/usr/bin/env bash
# The whole flow on a simulated bare-metal server: network boot into rescue, deploy, reboot
# to disk. A QEMU (TCG) machine per firmware, SeaBIOS and OVMF, run in parallel, shaped like
# a server: three NVMe disks (two 6 GiB: disk group 1; one 4 GiB: group 2), a virtio NIC
# whose option ROM is QEMU's iPXE (Debian's ipxe-qemu), the network first. byoi-api serves
# the iPXE scripts and the rescue system (scripts/build-rescue.sh) on 127.0.0.1; the machines
# reach it only through QEMU's user-mode network (its DHCP names
# http://10.0.2.2:PORT/boot/boot.ipxe; 10.0.2.2 is the host's 127.0.0.1). The customer is
# OVH's Go client (go-ovh). The steps and their checks: scripts/pxecheck/main.go.
#
#   both: 1 network boot into rescue, the agent's inventory shows both disk groups
#         2 POST reinstall (byoi_64, the Debian test image, diskGroupId 2): task and
#           install/status done
#         3 the agent reboots the machine; it network-boots, is sent to its disk (BIOS:
#           bootsel finds the disk by its GPT disk GUID; UEFI: iPXE exits to the agent's boot
#           entry), Debian boots: ConfigDrive user data, hostname, SSH with the key, root and
#           config-2 on group 2's disk
#   uefi: 5 DELETE the deployment, power cycle: rescue, the agent waits for a job
#         4 an image whose ESP has no \EFI\BOOT\BOOTX64.EFI, efiBootloaderPath
#           \EFI\debian\grubx64.efi: it boots through the agent's entry
#   bios: 5 PUT bootId 2 (rescue), power cycle: rescue, the agent waits for a job
#         6 a wrong checksum: task customerError with OVH's message, no reboot, rescue
#   end:  group 1's disks unchanged; no agent token on any console or in byoi-api's log
#
# Usage: scripts/pxe-check.sh [--firmware bios|uefi|both] [--keep] [--timeout 25m]
#   --keep   keep the work directory (consoles, byoi-api's log, disks) for inspection
# Exit status: 0 every check passed; 1 a check failed; 2 setup error.
# Needs root (build-rescue.sh, build-test-image.sh), go, qemu-system-x86, ovmf, ipxe-qemu,
# qemu-utils, gdisk, mtools, openssh-client (scripts/install-test-deps.sh).
# Network: byoi-api and the image server listen on 127.0.0.1 only; QEMU uses -netdev user.
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
FIRMWARE=both
KEEP=0
TIMEOUT=25m
while [ $# -gt 0 ]; do
  case "$1" in
    --firmware) FIRMWARE=$2; shift 2;;
    --keep) KEEP=1; shift;;
    --timeout) TIMEOUT=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2;;
  esac
done
case "$FIRMWARE" in bios|uefi|both) ;; *) echo "--firmware must be bios, uefi or both" >&2; exit 2;; esac

info() { printf '[pxe-check] %s\n' "$*" >&2; }
setup_fail() { printf 'FAIL setup: %s\n' "$*"; exit 2; }

[ "$(id -u)" = 0 ] || setup_fail "must run as root (the rescue and test image builders need it)"
for t in go qemu-system-x86_64 qemu-img sgdisk mdeltree mdir ssh ssh-keygen; do
  command -v "$t" >/dev/null || setup_fail "missing tool $t (scripts/install-test-deps.sh)"
done
for f in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd /usr/lib/ipxe/qemu/efi-virtio.rom; do
  [ -e "$f" ] || setup_fail "missing $f (ovmf, ipxe-qemu)"
done

T_START=$(date +%s)
WORK=$(mktemp -d /var/tmp/byoi-pxe-check.XXXXXX)
PXPID=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$PXPID" ]; then kill "$PXPID" 2>/dev/null; wait "$PXPID" 2>/dev/null; fi
  if [ "$KEEP" = 1 ]; then info "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

info "building byoi-api and the orchestrator"
(cd "$REPO" && CGO_ENABLED=0 go build -o "$WORK/byoi-api" ./cmd/byoi-api && go build -o "$WORK/pxecheck" ./scripts/pxecheck) \
  >"$WORK/go-build.log" 2>&1 || { tail -20 "$WORK/go-build.log"; setup_fail "go build failed"; }

info "the rescue system (scripts/build-rescue.sh, cached) ..."
mapfile -t RESCUE < <("$REPO/scripts/build-rescue.sh" 2>"$WORK/build-rescue.log" | tail -2) || true
[ -s "${RESCUE[0]:-}" ] && [ -s "${RESCUE[1]:-}" ] || { tail -20 "$WORK/build-rescue.log"; setup_fail "scripts/build-rescue.sh failed"; }
RESCUE_DIR=$(dirname "${RESCUE[0]}")
info "rescue: $RESCUE_DIR ($(sed -n 's/^sizes: //p' "$RESCUE_DIR/manifest.txt"))"

info "the Debian test image (scripts/build-test-image.sh, cached) ..."
IMAGE=$("$REPO/scripts/build-test-image.sh" 2>"$WORK/build-test-image.log" | tail -1) || true
[ -s "$IMAGE" ] || { tail -20 "$WORK/build-test-image.log"; setup_fail "scripts/build-test-image.sh failed"; }

# The same image with its ESP's \EFI\BOOT removed: the loader is then only at
# \EFI\debian\grubx64.efi (the image's grub.cfg finds the root file system either way).
# Cached beside the test image.
nodefault_image() {
  local src=$1 out="${1%.qcow2}-nodefault.qcow2" raw start
  exec 8>"$(dirname "$src")/.nodefault.lock"
  flock -w 600 8 || setup_fail "timed out waiting for $(dirname "$src")/.nodefault.lock"
  if [ ! -s "$out" ] || [ "$src" -nt "$out" ]; then
    info "deriving $(basename "$out") (no \\EFI\\BOOT on the ESP) ..."
    raw="$WORK/nodefault.raw"
    qemu-img convert -f qcow2 -O raw "$src" "$raw"
    start=$(sgdisk -p "$raw" | awk '$6 == "EF00" {print $2; exit}')
    [ -n "$start" ] || setup_fail "no EFI System Partition in $src"
    MTOOLS_SKIP_CHECK=1 mdeltree -i "$raw@@$((start * 512))" ::/EFI/BOOT >/dev/null
    MTOOLS_SKIP_CHECK=1 mdir -b -i "$raw@@$((start * 512))" ::/EFI/debian/grubx64.efi >/dev/null || setup_fail "no EFI/debian/grubx64.efi on the ESP of $src"
    if MTOOLS_SKIP_CHECK=1 mdir -b -i "$raw@@$((start * 512))" ::/EFI/BOOT >/dev/null 2>&1; then setup_fail "EFI/BOOT still on the ESP"; fi
    qemu-img convert -c -f raw -O qcow2 "$raw" "$out.tmp"
    rm -f "$raw"
    mv "$out.tmp" "$out"
  fi
  exec 8>&-
  echo "$out"
}
IMAGE_ND=
[ "$FIRMWARE" = bios ] || IMAGE_ND=$(nodefault_image "$IMAGE")
info "images: $IMAGE ${IMAGE_ND:+and $IMAGE_ND} (setup took $(( $(date +%s) - T_START )) s)"

"$WORK/pxecheck" --byoi-api "$WORK/byoi-api" --rescue-dir "$RESCUE_DIR" --image "$IMAGE" \
  ${IMAGE_ND:+--image-nodefault "$IMAGE_ND"} --work "$WORK" --firmware "$FIRMWARE" --timeout "$TIMEOUT" &
PXPID=$!
rc=0
wait "$PXPID" || rc=$?
PXPID=
echo "TIME pxe-check.sh: $(( $(date +%s) - T_START )) s (setup included)"
exit $rc
