#!/usr/bin/env bash
# bench-raw.sh: how fast does `byoi deploy --type raw` put an image on disk,
# compared with a plain download (curl) and with the shell pipeline an
# operator would write (curl | tee >(sha256sum) | dd)?
#
# It builds byoi, makes a 4 GiB raw GPT image holding about 1.5 GiB of data
# (random, text-like and zero ranges), serves it from 127.0.0.1 with a small
# Go file server (bench/benchserve, sendfile), and times in one run:
#   (a) curl -s -o out.img URL                       download only, no hash
#   (b) curl -s URL | tee >(sha256sum) | dd of=...     download, hash, write
#   (c) byoi deploy --type raw --checksum ...          download, hash, write,
#                                                      fsync, table last
# (c) runs under /usr/bin/time -v for its peak RSS. The target of (c) is a
# sparse 5 GiB file. Caches are dropped (as root) and the image re-read into
# the page cache before each run, so the server side is the same for all.
# Note: byoi fsyncs and punches holes for zero ranges; curl and dd do neither.
#
# Usage: bench/bench-raw.sh            (env: KEEP=1 keeps the temp dir,
#                                          BYOI=path uses a prebuilt binary)
# Needs: go, sgdisk, openssl, curl, sha256sum, dd, /usr/bin/time.
set -euo pipefail

cd "$(dirname "$0")/.."
for c in go sgdisk openssl curl sha256sum dd /usr/bin/time; do
	command -v "$c" >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null || {
		echo "bench-raw: needs $c" >&2
		exit 1
	}
done
export PATH=$PATH:/usr/sbin:/sbin

tmp=$(mktemp -d /var/tmp/bench-raw.XXXXXX)
server_pid=
cleanup() {
	if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
	if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

mib=$((1 << 20))
img_size=$((4096 * mib))
target_size=$((5120 * mib))

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / 1e6 / s }'; }

# fresh_cache: flush what earlier runs wrote, drop the page cache (root),
# and read the image back in so every run is served from memory.
fresh_cache() {
	sync
	if [[ $(id -u) == 0 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
	cat "$tmp/www/image.raw" >/dev/null
}

echo "== build"
byoi_ok=1
if [[ -n ${BYOI:-} ]]; then
	cp "$BYOI" "$tmp/byoi"
elif ! CGO_ENABLED=0 go build -o "$tmp/byoi" ./cmd/byoi; then
	echo "bench-raw: byoi does not build: measuring curl and the pipeline only" >&2
	byoi_ok=0
fi
CGO_ENABLED=0 go build -o "$tmp/benchserve" ./bench/benchserve

echo "== image: 4 GiB raw GPT, about 1.5 GiB of data"
mkdir "$tmp/www"
img=$tmp/www/image.raw
truncate -s "$img_size" "$img"
sgdisk -n 1:2048:+512M -t 1:ef00 -n 2:0:0 -t 2:8300 "$img" >/dev/null
sgdisk -v "$img" | grep "No problems found" >/dev/null || { echo "bench-raw: sgdisk made no valid GPT" >&2; exit 1; }
# random: AES-CTR keystream, fast and incompressible
random_at() { # offset_mib size_mib
	dd if=/dev/zero bs=1M count="$2" status=none |
		openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:"byoi$1" |
		dd of="$img" bs=1M seek="$1" conv=notrunc iflag=fullblock status=none
}
# text-like: numbered lines, compressible
seq -f 'line %g of a text-like file, compressible by any compressor worth the name' 1 20000 >"$tmp/text.chunk"
truncate -s "$mib" "$tmp/text.chunk"
text_at() { # offset_mib size_mib
	for ((i = 0; i < $2; i++)); do cat "$tmp/text.chunk"; done |
		dd of="$img" bs=1M seek="$1" conv=notrunc iflag=fullblock status=none
}
random_at 1 256      # ESP
text_at 600 256      # the rest is zero ranges (holes) between
random_at 1024 512
text_at 2048 256
random_at 3072 256
sync
sum=$(sha256sum "$img" | cut -d' ' -f1)
echo "sha256 $sum"

echo "== server"
"$tmp/benchserve" -dir "$tmp/www" >"$tmp/server.url" 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 50); do [[ -s $tmp/server.url ]] && break; sleep 0.1; done
url=$(head -n1 "$tmp/server.url")image.raw
echo "$url"
curl -sfI "$url" | grep -i '^content-length' || { echo "bench-raw: server does not answer" >&2; exit 1; }

echo "== (a) curl -o"
fresh_cache
t0=$(now)
curl -sf -o "$tmp/out.img" "$url"
t1=$(now)
t_curl=$(secs "$t0" "$t1")
cmp -s -n "$img_size" "$img" "$tmp/out.img" || { echo "bench-raw: curl output differs" >&2; exit 1; }
rm -f "$tmp/out.img"

echo "== (b) curl | tee >(sha256sum) | dd"
fresh_cache
t0=$(now)
curl -sf "$url" | tee >(sha256sum >"$tmp/sum") | dd of="$tmp/dd.img" bs=4M iflag=fullblock status=none
t1=$(now)
t_pipe=$(secs "$t0" "$t1")
for _ in $(seq 50); do [[ -s $tmp/sum ]] && break; sleep 0.1; done # the >(...) may finish after dd
[[ $(cut -d' ' -f1 "$tmp/sum") == "$sum" ]] || { echo "bench-raw: pipeline checksum differs" >&2; exit 1; }
rm -f "$tmp/dd.img"

t_byoi=
rss=
if [[ $byoi_ok == 1 ]]; then
	echo "== (c) byoi deploy --type raw"
	truncate -s "$target_size" "$tmp/target.img"
	fresh_cache
	t0=$(now)
	/usr/bin/time -v -o "$tmp/time.txt" "$tmp/byoi" deploy --url "$url" --type raw \
		--checksum "$sum" --checksum-type sha256 --disk "$tmp/target.img" >"$tmp/byoi.out" 2>"$tmp/byoi.err" || {
		echo "bench-raw: byoi deploy failed:" >&2
		cat "$tmp/byoi.out" "$tmp/byoi.err" >&2
		exit 1
	}
	t1=$(now)
	t_byoi=$(secs "$t0" "$t1")
	rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/time.txt")
	# the image must be on the target; byoi may have changed the GPT (backup
	# moved to the end of the disk), so compare the data, not the tables.
	cmp -s -i "$mib:$mib" -n $((img_size - 2 * mib)) "$img" "$tmp/target.img" ||
		{ echo "bench-raw: target differs from the image" >&2; exit 1; }
	rm -f "$tmp/target.img"
fi

echo
echo "== results (image $((img_size / mib)) MiB, $(nproc) CPUs)"
printf '(a) curl -o             %8s s  %6s MB/s\n' "$t_curl" "$(mbps "$img_size" "$t_curl")"
printf '(b) curl|tee sha256|dd  %8s s  %6s MB/s\n' "$t_pipe" "$(mbps "$img_size" "$t_pipe")"
if [[ -n $t_byoi ]]; then
	printf '(c) byoi deploy raw     %8s s  %6s MB/s  peak RSS %s KiB\n' "$t_byoi" "$(mbps "$img_size" "$t_byoi")" "$rss"
	echo "byoi/curl      $(ratio "$t_byoi" "$t_curl")"
	echo "pipeline/byoi  $(ratio "$t_pipe" "$t_byoi")"
else
	echo "(c) byoi deploy: not measured (byoi did not build)"
	exit 1
fi
