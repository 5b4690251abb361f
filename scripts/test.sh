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
declare -A Q_NAME=() Q_KEY=() Q_T0=() # the QEMU checks running, by pid (below)
stop_qemu_checks() { for p in "${!Q_NAME[@]}"; do kill "$p" 2>/dev/null || true; done; }
PG_STARTED=
cleanup() {
  stop_qemu_checks
  stop_prep
  [ -z "$PG_STARTED" ] || scripts/pg-throwaway.sh stop "$BYOI_TEST_PG_DSN"
}
trap cleanup EXIT

phase "go vet" go vet ./...
# The store tests run against both SQLite and PostgreSQL: a throw-away
# PostgreSQL cluster is started for them unless BYOI_TEST_PG_DSN points at one.
if [ -z "${BYOI_TEST_PG_DSN:-}" ]; then
  BYOI_TEST_PG_DSN=$(scripts/pg-throwaway.sh start)
  export BYOI_TEST_PG_DSN
  PG_STARTED=1
fi
# -parallel 4: the end-to-end tests mostly wait (slowed servers, heartbeats,
# kills), so four at a time on 2 cores. -p 4: four packages at a time (the
# default is one per CPU): the loop-device and sparse-file tests wait on the
# disk, and the agent's package, the longest, no longer runs alone at the end
# (measured on 2 cores: 321 s for the Go tests, against 384 s with -p 2).
phase "go test" go test -count=1 -p 4 -parallel 4 -timeout 20m ./...
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ]; then
  for p in "${PREP_PIDS[@]}"; do
    wait "$p" || echo "== a background build failed (the check that needs it builds again and shows why): $PREP_LOG"
  done
  PREP_PIDS=()
  # The QEMU checks run side by side. Every machine runs only while it holds
  # a QEMU slot, one host CPU each, shared by the checks (internal/harness/
  # slots.go, first come first served): the CPUs are always busy with as many
  # TCG machines as there are CPUs, never more. The network boot check (the
  # longest chain of boots) takes its slots first; the others start once it
  # holds them. Each check's output goes to its log and is printed when it
  # ends, with its duration; the group's wall time follows.
  QEMU_LOGS=$(mktemp -d /var/tmp/byoi-test-qemu.XXXXXX)
  q_start() { # q_start KEY NAME CMD...: starts CMD in the background, output in $QEMU_LOGS/KEY.log
    local key=$1 name=$2
    shift 2
    "$@" >"$QEMU_LOGS/$key.log" 2>&1 &
    Q_NAME[$!]=$name Q_KEY[$!]=$key Q_T0[$!]=$(date +%s)
    echo "== $name: started (log: $QEMU_LOGS/$key.log)"
  }
  TQ=$(date +%s)
  q_start pxe "network boot check (iPXE, rescue, deploy, reboot to disk; SeaBIOS and OVMF)" \
    scripts/pxe-check.sh --ready-file "$QEMU_LOGS/pxe.ready"
  PXE_PID=$!
  for _ in $(seq 600); do
    [ ! -e "$QEMU_LOGS/pxe.ready" ] && kill -0 "$PXE_PID" 2>/dev/null || break
    sleep 0.5
  done
  q_start acceptance "boot acceptance" scripts/boot-check.sh --acceptance
  q_start hw "hardware matrix (the rescue on emulated NICs, controllers and a USB keyboard)" scripts/hw-check.sh
  q_start variants "image-check proofs (defective images named by byoi and failing on NVMe; two NICs and network_data.json)" \
    scripts/boot-check.sh --variants
  FAILED=()
  while [ ${#Q_NAME[@]} -gt 0 ]; do
    pid= rc=0
    wait -n -p pid "${!Q_NAME[@]}" || rc=$?
    [ -n "$pid" ] || { echo "== wait for the QEMU checks failed (exit $rc)"; exit 2; }
    name=${Q_NAME[$pid]} key=${Q_KEY[$pid]} t=${Q_T0[$pid]}
    unset "Q_NAME[$pid]" "Q_KEY[$pid]" "Q_T0[$pid]"
    echo "== $name"
    cat "$QEMU_LOGS/$key.log"
    echo "== $name: $(( $(date +%s) - t )) s$([ $rc = 0 ] || echo ", FAILED (exit $rc)")"
    [ $rc = 0 ] || FAILED+=("$name")
  done
  echo "== QEMU checks side by side (network boot, boot acceptance, hardware matrix, image-check proofs): $(( $(date +%s) - TQ )) s"
  if [ ${#FAILED[@]} -gt 0 ]; then
    for f in "${FAILED[@]}"; do echo "== FAILED: $f"; done
    echo "== the checks' logs: $QEMU_LOGS"
    exit 1
  fi
  rm -rf "$QEMU_LOGS"
fi
echo "== all tests passed in $(( $(date +%s) - T0 )) s"
