#!/usr/bin/env bash
# Boot acceptance: what byoi deploys really boots (UEFI and legacy BIOS) and cloud-init
# applies the ConfigDrive. The check is internal/harness/bootcheck (its package comment says
# what passes); the QEMU machines, consoles, SSH and reports are internal/harness's.
#
# Usage:
#   scripts/boot-check.sh [--firmware uefi|bios|both] [--no-configdrive] [--expect-hostname NAME]
#   scripts/boot-check.sh --acceptance     both firmwares pass AND the two negative cases fail
#                                          (UEFI boots a reinstall-body deploy, BIOS a legacy-body
#                                          one: both job shapes; --job-shape is ignored here; and
#                                          BIOS boots the same image deployed as an OVA)
#   scripts/boot-check.sh --variants       the image checks' proofs (issue 26): the test image's
#                                          defective variants (build-test-image.sh --variant
#                                          fstabdev, nonvme, nocloud, biosonly; xfsroot) are named
#                                          by byoi inspect and deploy, and fail to boot (or ignore
#                                          the ConfigDrive) on NVMe under OVMF; a two-NIC server
#                                          answers SSH through the NIC network_data.json names,
#                                          and not with networkData off (--no-network-negative
#                                          skips that last boot)
# Options:
#   --firmware F           uefi (OVMF), bios (SeaBIOS) or both (default both)
#   --no-configdrive       deploy a job without configdrive (expected to FAIL: no marker)
#   --expect-hostname N    expect hostname N instead of the one put in the job (N != job → FAIL)
#   --negative-firmware F  firmware for the negative cases of --acceptance (default bios)
#   --image PATH           the qcow2 to deploy (default: scripts/build-test-image.sh, cached)
#   --timeout SEC          time limit per boot (default 600: a boot takes ~100 s on an idle
#                          core under TCG, 2-4x that when the machine is busy)
#   --job-shape S          legacy (default: the bringYourOwnImage body) or reinstall (the current
#                          operatingSystem byoi_64 + customizations body)
#   --fail-fast            stop a boot as soon as the login prompt shows another hostname
#   --jobs N               boots run at once, each QEMU -smp 1 (default 2)
#   --keep                 keep the work directory (logs, disks) for inspection
# Env:
#   BYOI_BIN               byoi binary (default: built with CGO_ENABLED=0 go build ./cmd/byoi)
#   BYOI_DEPLOY_ARGS       extra arguments for `byoi deploy` (word-split)
#   BOOT_CHECK_PREPARE     DEVELOPMENT ONLY: "manual" prepares the disk with qemu-img/sgdisk/
#                          xorriso instead of `byoi deploy` (proves the QEMU half on its own)
#   BOOT_CHECK_WORKDIR     parent directory for the scratch directory (default /var/tmp)
# Exit status: 0 all checks passed; 1 a check failed; 2 setup error (build, deploy tool, QEMU).
# Needs: go, qemu-system-x86_64, qemu-img, ovmf, sgdisk, ssh, ssh-keygen, curl and xorriso
# (manual mode). Network use: 127.0.0.1 only (the image server, QEMU user networking, restrict=on).
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
KEEP=0 ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift;;
    --no-configdrive|--fail-fast|--acceptance|--variants|--no-network-negative) ARGS+=("$1"); shift;;
    --firmware|--expect-hostname|--negative-firmware|--image|--timeout|--job-shape|--jobs) ARGS+=("$1" "$2"); shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2;;
  esac
done
for t in go qemu-system-x86_64 qemu-img sgdisk ssh ssh-keygen; do
  command -v "$t" >/dev/null || { echo "FAIL setup: missing tool $t (scripts/install-test-deps.sh)"; exit 2; }
done
WORK=$(mktemp -d "${BOOT_CHECK_WORKDIR:-/var/tmp}/byoi-boot-check.XXXXXX")
PID=
cleanup() {
  local rc=$?
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
  if [ "$KEEP" = 1 ]; then echo "[boot-check] work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
  [ $rc -lt 128 ] || echo "[boot-check] interrupted: QEMU and the image server stopped, scratch files removed" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
(cd "$REPO" && go build -o "$WORK/bootcheck" ./internal/harness/bootcheck) || { echo "FAIL setup: go build ./internal/harness/bootcheck"; exit 2; }
"$WORK/bootcheck" --repo "$REPO" --work "$WORK" "${ARGS[@]}" &
PID=$!
rc=0
wait "$PID" || rc=$?
PID=
exit $rc
