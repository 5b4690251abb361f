#!/usr/bin/env bash
# bench-qcow2-limit.sh (issue 27): how close does `byoi deploy --type qcow2`
# come to the machine's limit, and to the tools an operator already has?
#
# For a zstd and a zlib qcow2 (made by qemu-img convert -c from a generated
# raw GPT image: SIZE virtual, about DATA of mixed data, see
# bench/benchqcow2 -gen), served from 127.0.0.1 (bench/benchserve, sendfile),
# it times, interleaved, RUNS times each, and reports medians:
#   stages alone (the machine's limit: the slowest of download, sha256 and
#   the faster of the two conversions):
#     download     curl -s -o /dev/null URL
#     sha256       sha256sum of the qcow2 (page cache)
#     qemu-img     qemu-img convert -O raw to a new sparse file, then sync
#     byoi-convert byoi's own conversion from the local file (benchqcow2)
#   whole deploys onto a sparse target file of SIZE+256 MiB:
#     byoi         byoi deploy --type qcow2 --checksum (sha256)
#     byoi-cd      the same with a ConfigDrive (--hostname, --ssh-key)
#     peers        curl -o /dev/shm, sha256sum -c, qemu-img convert -n, sync
#     operator     the peers, then sgdisk -e, genisoimage of a config-2
#                  drive, sgdisk -n for it, dd the ISO into it, sync
#   and, with BYOI_OLD=path (a byoi built from an earlier commit), that
#   binary's plain deploy as "byoi-old", for a before/after in one run.
# Peak RSS (KiB) is /usr/bin/time's. Ratios are of medians.
#   bench/bench-qcow2-limit.sh                 (env: RUNS=3 SIZE=2G DATA=640M
#                                               FORMATS="zstd zlib" KEEP=1)
# Needs: go, qemu-img, curl, sha256sum, sgdisk, genisoimage, /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin CGO_ENABLED=0
for c in go qemu-img curl sha256sum sgdisk genisoimage /usr/bin/time; do
	command -v "$c" >/dev/null || { echo "bench-qcow2-limit: needs $c" >&2; exit 1; }
done
RUNS=${RUNS:-3}
SIZE=$(numfmt --from=iec "${SIZE:-2G}")
DATA=$(numfmt --from=iec "${DATA:-640M}")
FORMATS=${FORMATS:-zstd zlib}
mib=$((1 << 20))
target_size=$((SIZE + 256 * mib))

tmp=$(mktemp -d /var/tmp/bench-qcow2-limit.XXXXXX)
shm=$(mktemp -d /dev/shm/bench-qcow2-limit.XXXXXX)
server_pid=
cleanup() {
	if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; fi
	rm -rf "$shm"
	if [[ ${KEEP:-0} == 1 ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

echo "== build"
go build -o "$tmp/byoi" ./cmd/byoi
go build -o "$tmp/benchqcow2" ./bench/benchqcow2
go build -o "$tmp/benchserve" ./bench/benchserve
old=
if [[ -n ${BYOI_OLD:-} ]]; then cp "$BYOI_OLD" "$tmp/byoi-old"; old=byoi-old; fi

echo "== image: $SIZE bytes virtual, about $DATA of data, GPT"
mkdir "$tmp/www"
"$tmp/benchqcow2" -gen "$tmp/src.raw" -size "$SIZE" -data "$DATA"
sgdisk -n 1:2048:+64M -t 1:ef00 -n 2:0:0 -t 2:8300 "$tmp/src.raw" >/dev/null
for f in $FORMATS; do
	case $f in
	zlib) qemu-img convert -c -f raw -O qcow2 "$tmp/src.raw" "$tmp/www/$f.qcow2" ;;
	zstd) qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$tmp/src.raw" "$tmp/www/$f.qcow2" ;;
	plain) qemu-img convert -f raw -O qcow2 "$tmp/src.raw" "$tmp/www/$f.qcow2" ;;
	*) echo "unknown format $f" >&2; exit 1 ;;
	esac
	sha256sum "$tmp/www/$f.qcow2" | cut -d' ' -f1 >"$tmp/$f.sum"
done
ls -l "$tmp/www"
mkdir -p "$tmp/cd/openstack/latest"
echo '{"uuid":"bench","hostname":"bench","public_keys":{"k":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBenchBen bench"}}' \
	>"$tmp/cd/openstack/latest/meta_data.json"

"$tmp/benchserve" -dir "$tmp/www" >"$tmp/server.url" 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 50); do [[ -s $tmp/server.url ]] && break; sleep 0.1; done
base=$(head -n1 "$tmp/server.url")

# timed NAME CMD...: one run, its wall time, cpu and peak RSS appended to
# $tmp/NAME.txt as "wall cpu rss".
timed() {
	local name=$1
	shift
	sync
	/usr/bin/time -f "%e %U %S %M" -o "$tmp/time.txt" "$@" >"$tmp/out.txt" 2>"$tmp/err.txt" ||
		{ echo "bench-qcow2-limit: $name failed:" >&2; cat "$tmp/out.txt" "$tmp/err.txt" >&2; exit 1; }
	awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$tmp/time.txt" >>"$tmp/$name.txt"
}
median() { sort -n "$tmp/$1.txt" | awk '{l[NR]=$0} END{print l[int((NR+1)/2)]}'; }
# same: the target holds the image (the GPT's backup may have moved: the
# first and last MiB are not compared)
same() { cmp -s -i "$mib:$mib" -n $((SIZE - 2 * mib)) "$tmp/src.raw" "$1" || { echo "bench-qcow2-limit: $1 differs from the image" >&2; exit 1; }; }
fresh_target() { rm -f "$tmp/target.img"; truncate -s "$target_size" "$tmp/target.img"; }

operator() { # url sum cd
	curl -sf -o "$shm/img.qcow2" "$1"
	echo "$2  $shm/img.qcow2" | sha256sum -c --quiet
	qemu-img convert -n -O raw "$shm/img.qcow2" "$tmp/target.img"
	rm -f "$shm/img.qcow2"
	if [[ $3 == 1 ]]; then
		sgdisk -e "$tmp/target.img" >/dev/null
		genisoimage -quiet -o "$shm/cd.iso" -V config-2 -J -R "$tmp/cd"
		local end=$(((target_size / 512 - 34) / 2048 * 2048)) start
		start=$((end - 64 * 2048))
		sgdisk -n "0:$start:$((end - 1))" -c 0:config-2 "$tmp/target.img" >/dev/null
		dd if="$shm/cd.iso" of="$tmp/target.img" bs=512 seek="$start" conv=notrunc status=none
		rm -f "$shm/cd.iso"
	fi
	sync "$tmp/target.img"
}
export -f operator
export tmp shm target_size

names="download sha256 qemu-img byoi-convert byoi byoi-cd peers operator $old"
echo "== runs: $RUNS each, interleaved; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for f in $FORMATS; do
	url=$base$f.qcow2
	sum=$(cat "$tmp/$f.sum")
	for n in $names; do : >"$tmp/$n.txt"; done
	for r in $(seq "$RUNS"); do
		echo "-- $f run $r"
		cat "$tmp/www/$f.qcow2" >/dev/null
		timed download curl -sf -o /dev/null "$url"
		timed sha256 sha256sum "$tmp/www/$f.qcow2"
		rm -f "$tmp/conv.raw"
		timed qemu-img sh -c "qemu-img convert -O raw '$tmp/www/$f.qcow2' '$tmp/conv.raw' && sync '$tmp/conv.raw'"
		rm -f "$tmp/conv.raw"
		timed byoi-convert "$tmp/benchqcow2" -src "$tmp/www/$f.qcow2" -dst "$tmp/conv.raw"
		same "$tmp/conv.raw"
		rm -f "$tmp/conv.raw"
		for b in byoi $old; do
			fresh_target
			timed "$b" "$tmp/$b" deploy --url "$url" --type qcow2 --checksum "$sum" --checksum-type sha256 --disk "$tmp/target.img"
			same "$tmp/target.img"
		done
		fresh_target
		timed byoi-cd "$tmp/byoi" deploy --url "$url" --type qcow2 --checksum "$sum" --checksum-type sha256 --disk "$tmp/target.img" \
			--hostname bench --ssh-key "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBenchBen bench"
		same "$tmp/target.img"
		fresh_target
		timed peers bash -c "operator '$url' '$sum' 0"
		same "$tmp/target.img"
		fresh_target
		timed operator bash -c "operator '$url' '$sum' 1"
		same "$tmp/target.img"
	done
	rm -f "$tmp/target.img"
	echo
	echo "== $f: $(stat -c %s "$tmp/www/$f.qcow2") bytes of qcow2, $SIZE virtual; medians of $RUNS (wall s, cpu s, peak RSS KiB)"
	slowest=0
	for n in $names; do
		read -r w c m < <(median "$n")
		printf '%-13s %7s %7s %8s\n' "$n" "$w" "$c" "$m"
		eval "w_${n//-/_}=$w"
	done
	conv=$(printf '%s\n' "$w_qemu_img" "$w_byoi_convert" | sort -n | head -n1)
	slowest=$(printf '%s\n' "$w_download" "$w_sha256" "$conv" | sort -n | tail -n1)
	r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
	echo "limit (slowest of download, sha256 and the faster conversion): $slowest s"
	echo "byoi / limit         $(r "$w_byoi" "$slowest")   (goal <= 1.2)"
	echo "byoi / peers         $(r "$w_byoi" "$w_peers")   (goal <= 0.5)"
	echo "byoi-cd / operator   $(r "$w_byoi_cd" "$w_operator")   (goal <= 0.35)"
	echo "byoi-convert / qemu-img  $(r "$w_byoi_convert" "$w_qemu_img")"
	if [[ -n $old ]]; then echo "byoi / byoi-old      $(r "$w_byoi" "$w_byoi_old")"; fi
done
