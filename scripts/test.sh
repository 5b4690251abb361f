#!/usr/bin/env bash
# The whole test suite: installs the Debian packages the tests need, runs the
# Go tests (as root they include the loop-device tests), then the boot
# acceptance under UEFI and legacy BIOS, then the network boot check
# (scripts/pxe-check.sh), then the rescue on a matrix of emulated hardware
# (scripts/hw-check.sh). With CI=true a missing tool or root is a failure,
# not a skip.
#   scripts/test.sh            everything
#   BYOI_SKIP_BOOT=1 scripts/test.sh   Go tests only (the boot check takes minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
scripts/install-test-deps.sh
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
echo "== go vet"
go vet ./...
# --- PostgreSQL for the control plane's store tests (pgstore, two
# instances on one database): a throw-away cluster on a Unix socket in a
# temporary directory, stopped at exit. An existing database can be given
# instead with BYOI_TEST_PG_DSN.
if [ -z "${BYOI_TEST_PG_DSN:-}" ]; then
  BYOI_TEST_PG_DSN=$(scripts/pg-throwaway.sh start)
  export BYOI_TEST_PG_DSN
  trap 'scripts/pg-throwaway.sh stop "$BYOI_TEST_PG_DSN"' EXIT
fi
# --- end PostgreSQL
echo "== go test"
go test -count=1 -timeout 20m ./...
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ]; then
  echo "== boot acceptance"
  scripts/boot-check.sh --acceptance
fi
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ]; then
  echo "== network boot check (iPXE, rescue, deploy, reboot to disk; SeaBIOS and OVMF)"
  scripts/pxe-check.sh
fi
if [ "${BYOI_SKIP_BOOT:-0}" != 1 ]; then
  echo "== hardware matrix (the rescue on emulated NICs, controllers and a USB keyboard)"
  scripts/hw-check.sh
fi
