#!/usr/bin/env bash
# Benchmark: imaging.ConvertQcow2 against qemu-img convert -O raw on a 4 GiB
# virtual image with about 1.5 GiB of mixed data (random, text, zeros), as
# uncompressed, zlib and zstd qcow2. Each conversion writes a new sparse
# file and is timed including the flush of its output (ours syncs; qemu-img
# is followed by `sync FILE`). Prints wall times, ratios and peak RSS.
#   scripts/bench-qcow2.sh [WORKDIR]     (default: a new dir in /var/tmp)
#   RUNS=3 SIZE=4G DATA=1536M scripts/bench-qcow2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0 GOFLAGS=-mod=mod
RUNS=${RUNS:-3}
SIZE=$(numfmt --from=iec "${SIZE:-4G}")
DATA=$(numfmt --from=iec "${DATA:-1536M}")
W=${1:-$(mktemp -d /var/tmp/byoi-bench-qcow2.XXXXXX)}
mkdir -p "$W"
trap 'rm -f "$W"/out.raw' EXIT
command -v qemu-img >/dev/null || { echo "needs qemu-img" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: time)" >&2; exit 1; }

go build -o "$W/benchqcow2" ./scripts/benchqcow2
if [ ! -f "$W/src.raw" ]; then
  echo "== generating $W/src.raw ($SIZE bytes, $DATA of data)"
  "$W/benchqcow2" -gen "$W/src.raw" -size "$SIZE" -data "$DATA"
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

# timeit NAME CMD...: best wall time (s) and its peak RSS (KiB) over RUNS.
timeit() {
  local name=$1; shift
  local best="" rss=""
  for _ in $(seq "$RUNS"); do
    rm -f "$W/out.raw"
    cat "$W/$fmt.qcow2" >/dev/null # source in page cache for every tool
    /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@" >/dev/null 2>"$W/err.txt" || { cat "$W/err.txt" >&2; exit 1; }
    read -r t m <"$W/time.txt"
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; rss=$m; fi
  done
  cmp -n "$SIZE" "$W/src.raw" "$W/out.raw" >/dev/null || { echo "$name: output differs from the source" >&2; exit 1; }
  echo "$best $rss"
}

printf "%-6s %-28s %8s %10s %8s\n" format tool wall_s peak_rss ratio
for fmt in plain zlib zstd; do
  read -r qd qdr < <(timeit qemu-img sh -c "qemu-img convert -O raw '$W/$fmt.qcow2' '$W/out.raw' && sync '$W/out.raw'")
  read -r qb qbr < <(timeit qemu-img-m8W sh -c "qemu-img convert -m 8 -W -O raw '$W/$fmt.qcow2' '$W/out.raw' && sync '$W/out.raw'")
  read -r ob obr < <(timeit byoi "$W/benchqcow2" -src "$W/$fmt.qcow2" -dst "$W/out.raw")
  qbest=$(awk "BEGIN{print ($qd < $qb) ? $qd : $qb}")
  printf "%-6s %-28s %8s %8sKiB\n" "$fmt" "qemu-img convert" "$qd" "$qdr"
  printf "%-6s %-28s %8s %8sKiB\n" "$fmt" "qemu-img convert -m 8 -W" "$qb" "$qbr"
  printf "%-6s %-28s %8s %8sKiB %8s\n" "$fmt" "byoi ConvertQcow2" "$ob" "$obr" \
    "$(awk "BEGIN{printf \"%.2fx default, %.2fx best\", $ob/$qd, $ob/$qbest}")"
done
