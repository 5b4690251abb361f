#!/usr/bin/env bash
# Benchmark: an OVA deployed by imaging.WriteOVA (streaming, no staging)
# against what an operator would do, `tar x` of the VMDK then
# `qemu-img convert -f vmdk -O raw`; and a .raw.zst deployed by
# imaging.DecompressStream + imaging.WriteRaw against `zstd -d | dd`.
#
# The source is a raw GPT disk of SIZE bytes (default 4 GiB) holding DATA
# bytes (default 1.5 GiB) of mixed data (70% file contents from /usr, 15%
# random, 15% text; zeros between: bench/benchqcow2 -gen). From it:
# a streamOptimized VMDK (qemu-img), packed as an OVA in VMware's member
# order (ovf, mf, vmdk: one digest of the disk) and VirtualBox's (ovf,
# vmdk, mf: every digest the manifest could name, SHA1, SHA256 and
# SHA512, is computed, the manifest coming last); and a .raw.zst (zstd -3).
# Each run writes a new sparse file and is timed including the flush of
# its output (byoi syncs; the others are followed by `sync FILE` or
# conv=fsync). Runs are interleaved, RUNS times each; medians are printed
# with the wall-time ratio and the peak RSS (/usr/bin/time).
#   bench/bench-ova.sh [WORKDIR]     (default: a new dir in /var/tmp)
#   RUNS=3 SIZE=4G DATA=1536M bench/bench-ova.sh
#   SIZE=16G DATA=1536M RUNS=1 bench/bench-ova.sh   the memory figures
#   OUTDIR=/dev/shm bench/bench-ova.sh   output on tmpfs (CPU path only)
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0 GOFLAGS=-mod=readonly PATH=$PATH:/usr/sbin:/sbin
RUNS=${RUNS:-3}
SIZE=$(numfmt --from=iec "${SIZE:-4G}")
DATA=$(numfmt --from=iec "${DATA:-1536M}")
W=${1:-$(mktemp -d /var/tmp/byoi-bench-ova.XXXXXX)}
mkdir -p "$W"
O=${OUTDIR:-$W}/byoi-bench-out.raw
X=$W/extract # tar x's staging directory
trap 'rm -rf "$O" "$X"' EXIT
for c in qemu-img zstd sgdisk tar dd numfmt; do
  command -v "$c" >/dev/null || { echo "needs $c" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: time)" >&2; exit 1; }

go build -o "$W/benchqcow2" ./bench/benchqcow2
go build -o "$W/benchova" ./bench/benchova
if [ ! -f "$W/src.raw" ]; then
  echo "== generating $W/src.raw ($SIZE bytes, $DATA of data)"
  "$W/benchqcow2" -gen "$W/src.raw.tmp" -size "$SIZE" -data "$DATA"
  sgdisk -n 1:2048:0 -t 1:8300 "$W/src.raw.tmp" >/dev/null
  mv "$W/src.raw.tmp" "$W/src.raw"
fi
if [ ! -f "$W/disk.vmdk" ]; then
  echo "== qemu-img convert -O vmdk -o subformat=streamOptimized"
  # The descriptor names the file qemu-img wrote: write it under its name.
  mkdir -p "$W/tmp"
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$W/src.raw" "$W/tmp/disk.vmdk"
  mv "$W/tmp/disk.vmdk" "$W/disk.vmdk"
fi
for l in vmware virtualbox; do
  [ -f "$W/$l.ova" ] || "$W/benchova" -pack "$W/$l.ova" -vmdk "$W/disk.vmdk" -capacity "$SIZE" -layout "$l"
done
if [ ! -f "$W/src.raw.zst" ]; then
  echo "== zstd -3"
  zstd -q -3 -T0 -o "$W/src.raw.zst.tmp" "$W/src.raw"
  mv "$W/src.raw.zst.tmp" "$W/src.raw.zst"
fi
ls -l "$W"/disk.vmdk "$W"/*.ova "$W"/src.raw.zst

# once INPUT CMD...: one run, input in page cache, output removed first;
# prints "wall_s cpu_s peak_rss_kib" (cpu = user + sys).
once() {
  local in=$1
  shift
  rm -rf "$O" "$X"
  mkdir -p "$X"
  cat "$in" >/dev/null
  /usr/bin/time -f "%e %U %S %M" -o "$W/time.txt" "$@" >/dev/null 2>"$W/err.txt" || { cat "$W/err.txt" >&2; exit 1; }
  cmp -n "$SIZE" "$W/src.raw" "$O" >/dev/null || { echo "$* : output differs from the source" >&2; exit 1; }
  awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$W/time.txt"
}
# median of the first column of stdin lines, with that line's other columns
median() { sort -n | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}'; }
row() { printf "%-28s %8s %8s %9sKiB  %s\n" "$@"; }

echo "runs: $RUNS each, interleaved; $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-28s %8s %8s %12s  %s\n" what wall_s cpu_s peak_rss "byoi/other wall"
: >"$W/q.txt"; : >"$W/bw.txt"; : >"$W/bv.txt"; : >"$W/z.txt"; : >"$W/bz.txt"
for _ in $(seq "$RUNS"); do
  once "$W/vmware.ova" sh -c "tar -xf '$W/vmware.ova' -C '$X' disk.vmdk && qemu-img convert -f vmdk -O raw '$X/disk.vmdk' '$O' && sync '$O'" >>"$W/q.txt"
  once "$W/vmware.ova" "$W/benchova" -ova "$W/vmware.ova" -dst "$O" -size "$SIZE" >>"$W/bw.txt"
  once "$W/virtualbox.ova" "$W/benchova" -ova "$W/virtualbox.ova" -dst "$O" -size "$SIZE" >>"$W/bv.txt"
  once "$W/src.raw.zst" sh -c "zstd -q -d -c '$W/src.raw.zst' | dd of='$O' bs=4M iflag=fullblock conv=fsync status=none" >>"$W/z.txt"
  once "$W/src.raw.zst" "$W/benchova" -raw "$W/src.raw.zst" -dst "$O" -size "$SIZE" >>"$W/bz.txt"
done
read -r q qc qr < <(median <"$W/q.txt")
read -r bw bwc bwr < <(median <"$W/bw.txt")
read -r bv bvc bvr < <(median <"$W/bv.txt")
read -r z zc zr < <(median <"$W/z.txt")
read -r bz bzc bzr < <(median <"$W/bz.txt")
ratio() { awk "BEGIN{printf \"%.2fx\", $1/$2}"; }
row "tar x + qemu-img convert" "$q" "$qc" "$qr" ""
row "byoi WriteOVA (VMware)" "$bw" "$bwc" "$bwr" "$(ratio "$bw" "$q")"
row "byoi WriteOVA (VirtualBox)" "$bv" "$bvc" "$bvr" "$(ratio "$bv" "$q")"
row "zstd -d | dd" "$z" "$zc" "$zr" ""
row "byoi DecompressStream+Raw" "$bz" "$bzc" "$bzr" "$(ratio "$bz" "$z")"
