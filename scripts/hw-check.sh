#!/usr/bin/env bash
# The rescue system on a matrix of emulated server hardware (QEMU TCG, SeaBIOS, user-mode
# network only): network boot through the iPXE ROMs of e1000, e1000e, vmxnet3 and rtl8139 and
# agent contact; disks behind megasas-gen2, mptsas1068, lsi53c895a, ich9-ahci, pvscsi,
# virtio-scsi and nvme in the inventory with their drivers and groups; a USB keyboard on
# qemu-xhci typing into the fallback shell on tty1 (QMP send-key); a controller whose driver is
# left out of the rescue reported unclaimed. The machines and checks: internal/harness/hwcheck.
# Usage: scripts/hw-check.sh [--keep] [--timeout 20m]     Needs root, go, qemu-system-x86,
# ipxe-qemu (scripts/install-test-deps.sh). Exit: 0 pass, 1 a check failed, 2 setup error.
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
KEEP=0 ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift;;
    --timeout) ARGS+=("$1" "$2"); shift 2;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "FAIL setup: must run as root (the rescue builder needs it)"; exit 2; }
WORK=$(mktemp -d /var/tmp/byoi-hw-check.XXXXXX)
PID=
cleanup() {
  local rc=$?
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
  if [ "$KEEP" = 1 ]; then echo "[hw-check] work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
(cd "$REPO" && go build -o "$WORK/hwcheck" ./internal/harness/hwcheck) || { echo "FAIL setup: go build ./internal/harness/hwcheck"; exit 2; }
"$WORK/hwcheck" --repo "$REPO" --work "$WORK" "${ARGS[@]}" &
PID=$!
rc=0
wait "$PID" || rc=$?
PID=
exit $rc
