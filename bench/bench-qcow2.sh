#!/usr/bin/env bash
# Benchmark: imaging.ConvertQcow2 against qemu-img convert -O raw on a 4 GiB
# virtual image with about 1.5 GiB of mixed data (70% file contents from
# /usr, 15% random, 15% text; zeros between), as uncompressed, zlib and zstd
# qcow2. Each conversion writes a new sparse
# file and is timed including the flush of its output (ours syncs; qemu-img
# is followed by `sync FILE`). Prints wall times, ratios and peak RSS.
#   bench/bench-qcow2.sh [WORKDIR]     (default: a new dir in /var/tmp)
#   RUNS=3 SIZE=4G DATA=1536M bench/bench-qcow2.sh
#   REAL=1 bench/bench-qcow2.sh   source: the Debian boot test image (real
#     file data, 2 GiB virtual); SRC_IMAGE=path for any other image
#   OUTDIR=/dev/shm bench/bench-qcow2.sh   output on tmpfs: no disk
#     writeback, so the comparison is of the conversion's CPU path
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
RUNS=${RUNS:-3}
SIZE=$(numfmt --from=iec "${SIZE:-4G}")
DATA=$(numfmt --from=iec "${DATA:-1536M}")
if [ "${REAL:-0}" = 1 ] && [ -z "${SRC_IMAGE:-}" ]; then
  SRC_IMAGE=$(scripts/build-test-image.sh | tail -n 1)
fi
W=${1:-$(mktemp -d /var/tmp/byoi-bench-qcow2.XXXXXX)}
mkdir -p "$W"
O=${OUTDIR:-$W}/byoi-bench-out.raw
trap 'rm -f "$O"' EXIT
command -v qemu-img >/dev/null || { echo "needs qemu-img" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: time)" >&2; exit 1; }

go build -o "$W/benchqcow2" ./bench/benchqcow2
if [ ! -f "$W/src.raw" ]; then
  if [ -n "${SRC_IMAGE:-}" ]; then
    # A real disk image (e.g. the boot test image: REAL=1) compresses like
    # real systems do; the generated data mixes random bytes, repeated
    # words, which either does not compress at all or compresses to nothing;
    # the file contents from /usr in between compress like a system's.
    echo "== converting $SRC_IMAGE to $W/src.raw"
    qemu-img convert -O raw "$SRC_IMAGE" "$W/src.raw"
    SIZE=$(stat -c %s "$W/src.raw")
  else
    echo "== generating $W/src.raw ($SIZE bytes, $DATA of data)"
    "$W/benchqcow2" -gen "$W/src.raw" -size "$SIZE" -data "$DATA"
  fi
fi
for fmt in plain zlib zstd; do
  [ -f "$W/$fmt.qcow2" ] && continue
  echo "== making $fmt.qcow2"
  case $fmt in
    plain) qemu-img convert -f raw -O qcow2 "$W/src.raw" "$W/$fmt.qcow2" ;;
    zlib)  qemu-img convert -c -m 8 -W -f raw -O qcow2 "$W/src.raw" "$W/$fmt.qcow2" ;;
    zstd)  qemu-img convert -c -m 8 -W -f raw -O qcow2 -o compression_type=zstd "$W/src.raw" "$W/$fmt.qcow2" ;;
  esac
done
ls -l "$W"/*.qcow2

# once CMD...: one run, source in page cache, output removed first; prints
# "wall_s cpu_s peak_rss_kib" (cpu = user + sys).
once() {
  rm -f "$O"
  cat "$W/$fmt.qcow2" >/dev/null
  /usr/bin/time -f "%e %U %S %M" -o "$W/time.txt" "$@" >/dev/null 2>"$W/err.txt" || { cat "$W/err.txt" >&2; exit 1; }
  cmp -n "$SIZE" "$W/src.raw" "$O" >/dev/null || { echo "$* : output differs from the source" >&2; exit 1; }
  awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$W/time.txt"
}
# median of the first column of stdin lines, with that line's other columns
median() { sort -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}'; }

# The machine may be shared: the tools run interleaved, RUNS times each,
# and the median run of each is reported.
echo "runs: $RUNS each, interleaved; load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-6s %-26s %8s %8s %10s  %s\n" format tool wall_s cpu_s peak_rss "byoi/qemu-img wall (default, -m 8 -W)"
for fmt in plain zlib zstd; do
  : >"$W/q.txt"; : >"$W/qw.txt"; : >"$W/b.txt"
  for _ in $(seq "$RUNS"); do
    once sh -c "qemu-img convert -O raw '$W/$fmt.qcow2' '$O' && sync '$O'" >>"$W/q.txt"
    once sh -c "qemu-img convert -m 8 -W -O raw '$W/$fmt.qcow2' '$O' && sync '$O'" >>"$W/qw.txt"
    once "$W/benchqcow2" -src "$W/$fmt.qcow2" -dst "$O" >>"$W/b.txt"
  done
  read -r qd qdc qdr < <(median <"$W/q.txt")
  read -r qw qwc qwr < <(median <"$W/qw.txt")
  read -r b bc br < <(median <"$W/b.txt")
  printf "%-6s %-26s %8s %8s %7sKiB\n" "$fmt" "qemu-img convert" "$qd" "$qdc" "$qdr"
  printf "%-6s %-26s %8s %8s %7sKiB\n" "$fmt" "qemu-img convert -m 8 -W" "$qw" "$qwc" "$qwr"
  printf "%-6s %-26s %8s %8s %7sKiB  %s\n" "$fmt" "byoi ConvertQcow2" "$b" "$bc" "$br" \
    "$(awk "BEGIN{printf \"%.2fx, %.2fx\", $b/$qd, $b/$qw}")"
done
