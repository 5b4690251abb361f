#!/usr/bin/env bash
# The whole test suite: installs the Debian packages the tests need, runs the
# Go tests (as root they include the loop-device tests), then the boot
# acceptance under UEFI and legacy BIOS, then the image checks' proofs
# (scripts/boot-check.sh --variants), then the network boot check
# (scripts/pxe-check.sh), then the rescue on a matrix of emulated hardware
# (scripts/hw-check.sh). With CI=true a missing tool or root is a failure,
# not a skip.
#   scripts/test.sh            everything
#   BYOI_SKIP_BOOT=1 scripts/test.sh   Go tests only (the boot check takes minutes)
# The QEMU checks' inputs (the Debian test images and the rescue) are built in
# the background while the Go tests run: their builds mostly wait on Debian's
# mirror and the disk, the Go tests on the CPU. Each build is cached under
# /var/cache and locked, so a check that starts before its build ended waits for
# it, and a failed background build is retried by the check that needs it (with
# its log). Every phase prints its duration; the last line is the total.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
T0=$(date +%s)
phase() { # phase NAME CMD...: runs CMD, prints how long it took
  local name=$1 t=$(date +%s) rc=0
  shift
  echo "== $name"
  "$@" || rc=$?
  echo "== $name: $(( $(date +%s) - t )) s$([ $rc = 0 ] || echo ", FAILED (exit $rc)")"
  return $rc
}
phase "install test dependencies" scripts/install-test-deps.sh
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

PREP_PIDS=()
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
  PREP_LOG=$(mktemp /var/tmp/byoi-test-prep.XXXXXX)
  echo "== building the test images and the rescue in the background (log: $PREP_LOG)"
  ( { scripts/build-test-image.sh && scripts/build-test-image.sh --variant generic &&
      for v in fstabdev nonvme nocloud biosonly xfsroot; do scripts/build-test-image.sh --variant "$v" || exit; done
    } >>"$PREP_LOG" 2>&1 ) &
  PREP_PIDS+=($!)
  ( nice -n 5 scripts/build-rescue.sh >>"$PREP_LOG" 2>&1 ) &
  PREP_PIDS+=($!)
fi
stop_prep() { for p in "${PREP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }

phase "go vet" go vet ./...
# The store tests run against both SQLite and PostgreSQL: a throw-away
# PostgreSQL cluster is started for them unless BYOI_TEST_PG_DSN points at one.
if [ -z "${BYOI_TEST_PG_DSN:-}" ]; then
  BYOI_TEST_PG_DSN=$(scripts/pg-throwaway.sh start)
  export BYOI_TEST_PG_DSN
  trap 'stop_prep; scripts/pg-throwaway.sh stop "$BYOI_TEST_PG_DSN"' EXIT
else
  trap stop_prep EXIT
fi
# -parallel 4: the end-to-end tests mostly wait (slowed servers, heartbeats,
# kills), so four at a time on 2 cores.
phase "go test" go test -count=1 -parallel 4 -timeout 20m ./...
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ]; then
  for p in "${PREP_PIDS[@]}"; do
    wait "$p" || echo "== a background build failed (the check that needs it builds again and shows why): $PREP_LOG"
  done
  PREP_PIDS=()
  phase "boot acceptance" scripts/boot-check.sh --acceptance
  phase "image-check proofs (defective images named by byoi and failing on NVMe; two NICs and network_data.json)" scripts/boot-check.sh --variants
  phase "network boot check (iPXE, rescue, deploy, reboot to disk; SeaBIOS and OVMF)" scripts/pxe-check.sh
  phase "hardware matrix (the rescue on emulated NICs, controllers and a USB keyboard)" scripts/hw-check.sh
fi
echo "== all tests passed in $(( $(date +%s) - T0 )) s"
