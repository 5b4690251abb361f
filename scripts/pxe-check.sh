#!/usr/bin/env bash
# The whole flow on simulated bare-metal servers: network boot into rescue, deploy, reboot
# to disk, back to rescue. A QEMU (TCG) machine per firmware, SeaBIOS and OVMF, in parallel,
# shaped like a server: three NVMe disks (two 6 GiB: disk group 1; one 4 GiB: group 2), a
# virtio NIC whose option ROM is QEMU's iPXE, the network first, and a BMC (OpenIPMI's ipmi_sim,
# IPMI lanplus on 127.0.0.1) that starts and stops the machine's QEMU: byoi-api powers the
# servers through it, the harness never does (ipmitool judges); byoi-api on 127.0.0.1, the
# customer OVH's Go client (go-ovh). The steps and their checks are named in
# internal/harness/pxecheck (its package comment); the QEMU machines, consoles and reports
# are internal/harness's.
#
# Usage: scripts/pxe-check.sh [--firmware bios|uefi|both] [--keep] [--timeout 25m] [--ready-file F]
#   --keep        keep the work directory (consoles, byoi-api's log, disks) for inspection
#   --ready-file  write F once both machines hold their QEMU slots (scripts/test.sh starts the
#                 other QEMU checks then, so that this one, the longest, goes first)
# Every QEMU machine of the checks runs only while it holds a QEMU slot, one host CPU each,
# shared by all the checks on the host (internal/harness/slots.go; BYOI_QEMU_SLOTS, default
# /var/tmp/byoi-qemu-slots; BYOI_QEMU_SLOTS_N, default the number of CPUs).
# Exit status: 0 every check passed; 1 a check failed; 2 setup error.
# Needs root (the rescue and test image builders), go, qemu-system-x86, ovmf, ipxe-qemu,
# qemu-utils, gdisk, mtools, openssh-client, openipmi, ipmitool (scripts/install-test-deps.sh).
# Network: byoi-api and the image server listen on 127.0.0.1 only; QEMU uses -netdev user.
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
KEEP=0 ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift;;
    --firmware|--timeout|--ready-file) ARGS+=("$1" "$2"); shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "FAIL setup: must run as root (the rescue and test image builders need it)"; exit 2; }
for t in go qemu-system-x86_64 qemu-img sgdisk mdeltree mdir ssh ssh-keygen ipmi_sim ipmitool; do
  command -v "$t" >/dev/null || { echo "FAIL setup: missing tool $t (scripts/install-test-deps.sh)"; exit 2; }
done
for f in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd /usr/lib/ipxe/qemu/efi-virtio.rom; do
  [ -e "$f" ] || { echo "FAIL setup: missing $f (ovmf, ipxe-qemu)"; exit 2; }
done
T_START=$(date +%s)
WORK=$(mktemp -d /var/tmp/byoi-pxe-check.XXXXXX)
PID=
cleanup() {
  local rc=$?
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
  if [ "$KEEP" = 1 ]; then echo "[pxe-check] work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
(cd "$REPO" && go build -o "$WORK/pxecheck" ./internal/harness/pxecheck) || { echo "FAIL setup: go build ./internal/harness/pxecheck"; exit 2; }
"$WORK/pxecheck" --repo "$REPO" --work "$WORK" "${ARGS[@]}" &
PID=$!
rc=0
wait "$PID" || rc=$?
PID=
echo "TIME pxe-check.sh: $(( $(date +%s) - T_START )) s (setup included)"
exit $rc
