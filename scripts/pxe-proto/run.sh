#!/usr/bin/env bash
# PXE prototype: proves, in QEMU (TCG), how a server that network-boots through iPXE is sent
# to its local disk by an iPXE script fetched over HTTP, under SeaBIOS and under OVMF, with
# Debian 12's iPXE ROMs (ipxe-qemu 1.0.0+git-20190125). Findings: FINDINGS.md next to it.
#
# Usage: scripts/pxe-proto/run.sh [--keep] [--timeout SEC] SCENARIO
#   direct         the rescue system booted with -kernel: init, DHCP, agent restarts, shell
#   bios           SeaBIOS: network -> rescue -> stand-in agent writes a BIOS image to the
#                  first disk of the group (2nd NVMe) -> reboot -> iPXE runs $DISK_SCRIPT
#                  (default "chain /files/bootsel.bin || exit": bootsel.S, patched with the
#                  image's MBR signature or GPT disk GUID, finds the disk whatever its BIOS
#                  number; "sanboot --no-describe --drive 0x81" works too when N is known)
#   uefi           OVMF: network -> rescue -> stand-in writes a GPT image whose ESP holds only
#                  \EFI\debian\grubx64.efi to the 2nd NVMe and a Boot#### for it (efiboot)
#                  -> reboot -> iPXE runs $DISK_SCRIPT (default "exit") -> marker; then a
#                  power cycle (new QEMU, same OVMF_VARS) and a redeploy boot to check that
#                  the network stays first and the entry survives
#   efibootmgr     OVMF: like uefi's first boot, but the rescue initramfs gets efibootmgr
#                  appended (a second cpio) and the stand-in runs efibootmgr --create for the
#                  same partition: the two Boot#### values are printed and compared
#   probe-bios / probe-uefi   no rescue: iPXE runs $DISK_SCRIPT on disks prepared by the
#                  host (BIOS: marker MBRs on every disk; UEFI: the target ESP on the 2nd NVMe)
# Env: DISK_SCRIPT  iPXE commands for the "disk" state (default per scenario above)
#      NIC          QEMU NIC model (default virtio-net-pci), ROM  its romfile (default: none given,
#                   so QEMU loads its default efi-virtio.rom, Debian's /usr/lib/ipxe/qemu one,
#                   legacy + EFI iPXE, and patches its PCI IDs; see FINDINGS.md)
#      BOOTINDEX    "net c a b" bootindex values ("-" for none; default "- - - -" for uefi,
#                   "1 2 3 4" otherwise)
#      DECOYS=0     leave disks c and b blank (default 1: each boots a marker of its own)
#      SEED=1       uefi (default there): first boot the VM once with bootindex=1 on the NIC only, until iPXE
#                   starts, so that OVMF writes a BootOrder with the network first (what an
#                   operator does in the firmware setup); later boots use BOOTINDEX
#      BIOS_TABLE   bios: the deployed image has an MBR (default) or a GPT (gpt) partition table
#      BOOTSEL_KEY  bios: the MBR signature bootsel looks for (default: the image's, 1a2b3c4d)
#      FWCFG        extra QEMU arguments for OVMF, e.g. "-fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=no"
# The three NVMe disks: c (128 MiB, first on the bus, a decoy that boots and says so),
# a (256 MiB, serial byoi-a: the first disk of the group of two 256 MiB disks: the target),
# b (256 MiB, serial byoi-b, a decoy too). Every boot's console is in WORK/<phase>.log.
# QEMU uses user-mode networking only; the stand-in control plane listens on 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN=$(cd "$HERE/../.." && pwd)
CACHE=${BYOI_PROTO_CACHE:-/var/cache/byoi-rescue/proto}
KEEP=0
TIMEOUT=420
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift;;
    --timeout) TIMEOUT=$2; shift 2;;
    -*) echo "unknown option $1" >&2; exit 2;;
    *) break;;
  esac
done
SCENARIO=${1:?scenario: direct, bios, uefi, probe-bios, probe-uefi}
NIC=${NIC:-virtio-net-pci}
ROM=${ROM-}
# uefi: the recipe of FINDINGS.md (no bootindex; one seeding boot puts the network first)
case "$SCENARIO" in
  uefi) DEFAULT_BI="- - - -"; SEED=${SEED:-1};;
  *)    DEFAULT_BI="1 2 3 4";;
esac
read -r BI_NET BI_C BI_A BI_B <<<"${BOOTINDEX:-$DEFAULT_BI}"
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
MAC=52:54:00:12:34:56
TOKEN="tok-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

log() { printf '[pxe-proto %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
RESULTS=()
result() { RESULTS+=("$1 [$SCENARIO] $2"); log "$1 $2"; }

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$CACHE"
WORK=$(mktemp -d /tmp/byoi-pxe-proto.XXXXXX)
QPIDS=()
CPPID=
cleanup() {
  local rc=$?
  set +e
  for p in "${QPIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "$CPPID" ] && kill "$CPPID" 2>/dev/null
  wait 2>/dev/null
  echo
  for r in "${RESULTS[@]}"; do echo "$r"; done
  if [ "$KEEP" = 1 ] || [ $rc -ne 0 ]; then echo "logs: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- ingredients (cached) --------------------------------------------------------------------------
log "building the stand-in agent and the rescue system"
(cd "$MAIN" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$CACHE/standin" ./scripts/pxe-proto/standin)
mapfile -t RESCUE < <("$MAIN/scripts/build-rescue.sh" --byoi "$CACHE/standin" | tail -2)
[ -s "${RESCUE[0]}" ] && [ -s "${RESCUE[1]}" ] || die "build-rescue.sh printed no paths"

GRUBROOT="$CACHE/grub/root"
if [ ! -x "$GRUBROOT/usr/bin/grub-mkstandalone" ]; then
  log "apt-get download grub-common grub-efi-amd64-bin libefivar1 libefiboot1"
  mkdir -p "$CACHE/debs"
  (cd "$CACHE/debs" && apt-get -q -o APT::Sandbox::User=root download grub-common grub-efi-amd64-bin libefivar1 libefiboot1 >&2)
  for d in "$CACHE"/debs/{grub-common,grub-efi-amd64-bin,libefivar1,libefiboot1}_*.deb; do dpkg-deb -x "$d" "$GRUBROOT"; done
fi
# grub_efi OUT MARKER: a standalone GRUB EFI binary whose embedded grub.cfg prints MARKER and
# the path it was loaded from on the serial console, then powers off.
grub_efi() {
  local cfg="$WORK/grub-$RANDOM.cfg"
  cat >"$cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
echo "$2 from \${cmdpath}"
sleep 1
halt
EOF
  LD_LIBRARY_PATH="$GRUBROOT/usr/lib/x86_64-linux-gnu" "$GRUBROOT/usr/bin/grub-mkstandalone" \
    -d "$GRUBROOT/usr/lib/grub/x86_64-efi" -O x86_64-efi -o "$1" \
    --modules="part_gpt fat serial terminal echo halt sleep" \
    --install-modules="normal part_gpt fat serial terminal echo halt sleep test" \
    --locales= --fonts= --themes= "boot/grub/grub.cfg=$cfg"
}
# mbr_marker OUT MARKER [SIGNATURE_HEX8]: a legacy boot sector printing MARKER and the BIOS
# drive number it got; the MBR disk signature (bytes 440..443) is SIGNATURE (little-endian)
mbr_marker() {
  [ -s "$WORK/mbr.bin" ] || {
    as --32 -o "$WORK/mbr.o" "$HERE/mbr-marker.S"
    ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o "$WORK/mbr.bin" "$WORK/mbr.o"
  }
  cp "$WORK/mbr.bin" "$1.mbr"
  printf '%s\0' "$2" | dd of="$1.mbr" bs=1 seek=256 conv=notrunc status=none
  dd if="$1.mbr" of="$1" conv=notrunc status=none
  # one partition (type 0x83, 1 MiB..end) and the boot signature
  printf '\x80\x00\x00\x00\x83\x00\x00\x00\x00\x08\x00\x00\x00\xf8\x00\x00' | dd of="$1" bs=1 seek=446 conv=notrunc status=none
  printf '\x55\xaa' | dd of="$1" bs=1 seek=510 conv=notrunc status=none
  if [ -n "${3:-}" ]; then
    printf "\\x${3:6:2}\\x${3:4:2}\\x${3:2:2}\\x${3:0:2}" | dd of="$1" bs=1 seek=440 conv=notrunc status=none
  fi
  rm -f "$1.mbr"
}
# bootsel OUT MODE KEYHEX: bootsel.S assembled, with its key patched in (mode 1: MBR signature
# as 8 hex digits, the number; mode 2: GPT disk GUID as text)
bootsel() {
  as --32 -o "$WORK/bootsel.o" "$HERE/bootsel.S"
  ld -m elf_i386 -Ttext 0x600 --oformat binary -o "$1" "$WORK/bootsel.o"
  [ "$(dd if="$1" bs=1 skip=448 count=4 status=none)" = BSEL ] || die "bootsel.bin: no BSEL at 0x1C0"
  local k=$3 bytes
  if [ "$2" = 1 ]; then
    bytes="${k:6:2}${k:4:2}${k:2:2}${k:0:2}"
  else
    k=${k//-/}
    bytes="${k:6:2}${k:4:2}${k:2:2}${k:0:2}${k:10:2}${k:8:2}${k:14:2}${k:12:2}${k:16:16}"
  fi
  printf "\\x0$2$(echo "$bytes" | sed 's/../\\x&/g')" | dd of="$1" bs=1 seek=452 conv=notrunc status=none
}
# gpt_esp_image OUT SIZE_MIB EFI_PATH LOADER [PARTNUM]: GPT; p1 Linux data, p2 ESP (FAT)
# holding LOADER at EFI_PATH (e.g. EFI/debian/grubx64.efi)
gpt_esp_image() {
  local out=$1 size=$2 path=$3 loader=$4 esp="$WORK/esp-$RANDOM.fat"
  truncate -s "${size}M" "$out"
  sgdisk -o -n 1:2048:+8M -t 1:8300 -c 1:data -n 2:0:+40M -t 2:EF00 -c 2:esp "$out" >/dev/null
  truncate -s 40M "$esp"
  mkfs.vfat -n ESP "$esp" >/dev/null
  local dir
  dir=$(dirname "$path")
  local acc=""
  for part in ${dir//\// }; do acc="$acc/$part"; mmd -i "$esp" "::$acc"; done
  mcopy -i "$esp" "$loader" "::/$path"
  local start
  start=$(sgdisk -i 2 "$out" | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
  dd if="$esp" of="$out" bs=512 seek="$start" conv=notrunc,sparse status=none
  rm -f "$esp"
}

# --- the stand-in control plane ----------------------------------------------------------------------
CP="$WORK/cp"
mkdir -p "$CP/files"
echo rescue >"$CP/state"
echo "$TOKEN" >"$CP/token"
ln -s "${RESCUE[0]}" "$CP/files/vmlinuz"
ln -s "${RESCUE[1]}" "$CP/files/initrd.img"
/usr/bin/python3 "$HERE/cp.py" "$CP" "$CP/port" >"$CP/cp.log" 2>&1 &
CPPID=$!
for _ in $(seq 50); do [ -s "$CP/port" ] && break; sleep 0.1; done
PORT=$(cat "$CP/port")
BASE="http://10.0.2.2:$PORT"
log "control plane on 127.0.0.1:$PORT (guests: $BASE)"
# The DHCP bootfile: a fixed script that chains the per-MAC one by a relative URL.
printf '#!ipxe\necho BYOI-PXE: iPXE ${version} on ${platform}, ${netX/mac}\nchain /boot/${netX/mac:hexhyp}.ipxe\n' >"$CP/files/boot.ipxe"
cat >"$CP/rescue.ipxe" <<EOF
#!ipxe
echo BYOI-PXE: state rescue: booting the rescue system
kernel $BASE/files/vmlinuz initrd=initrd.img console=ttyS0,115200 quiet BOOTIF=01-\${netX/mac:hexhyp} byoi.url=$BASE/ byoi.server=srv1 byoi.token=$TOKEN
initrd $BASE/files/initrd.img
boot
EOF

# --- QEMU ----------------------------------------------------------------------------------------------
# qemu_start PHASE FIRMWARE [extra args]: starts QEMU in the background (QPID), console in WORK/PHASE.log
bi() { [ "$1" = - ] || echo ",bootindex=$1"; }
qemu_start() {
  local phase=$1 fw=$2; shift 2
  local fwargs=()
  if [ "$fw" = uefi ]; then
    [ -f "$WORK/vars.fd" ] || cp "$OVMF_VARS" "$WORK/vars.fd"
    fwargs=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
            -drive "if=pflash,format=raw,unit=1,file=$WORK/vars.fd")
  fi
  : >"$WORK/$phase.log"
  QCMD=(qemu-system-x86_64 -accel tcg -machine pc,graphics=off -m 1024 -smp 1
    -display none -vga none -monitor none -parallel none -serial "file:$WORK/$phase.log"
    "${fwargs[@]}" ${FWCFG:-}
    -netdev "user,id=n0,tftp=$CP/files,bootfile=$BASE/files/boot.ipxe"
    -device "$NIC,netdev=n0,mac=$MAC${ROM:+,romfile=$ROM}$(bi "$BI_NET")"
    -drive "if=none,id=dc,file=$WORK/disk-c.raw,format=raw,cache=unsafe" -device "nvme,drive=dc,serial=byoi-c$(bi "$BI_C")"
    -drive "if=none,id=da,file=$WORK/disk-a.raw,format=raw,cache=unsafe" -device "nvme,drive=da,serial=byoi-a$(bi "$BI_A")"
    -drive "if=none,id=db,file=$WORK/disk-b.raw,format=raw,cache=unsafe" -device "nvme,drive=db,serial=byoi-b$(bi "$BI_B")"
    "$@")
  printf '%q ' "${QCMD[@]}" >"$WORK/$phase.cmd"; echo >>"$WORK/$phase.cmd"
  "${QCMD[@]}" </dev/null >"$WORK/$phase.qemu.log" 2>&1 &
  QPID=$!
  QPIDS+=("$QPID")
  QSTART=$(date +%s)
  log "[$phase] QEMU $fw started (console $WORK/$phase.log)"
}
# wait_for PHASE REGEX [SECONDS]: 0 when REGEX shows on the console; 1 on time-out or QEMU exit
wait_for() {
  local phase=$1 re=$2 limit=${3:-$TIMEOUT} t0
  t0=$(date +%s)
  while :; do
    if tr -d '\r' <"$WORK/$phase.log" | grep -aqE "$re"; then
      log "[$phase] seen after $(( $(date +%s) - QSTART )) s: $(tr -d '\r' <"$WORK/$phase.log" | grep -aE -m1 "$re" | cut -c1-160)"
      return 0
    fi
    if ! kill -0 "$QPID" 2>/dev/null; then
      sleep 0.5
      tr -d '\r' <"$WORK/$phase.log" | grep -aqE "$re" && continue
      log "[$phase] QEMU exited before /$re/"; return 1
    fi
    if [ $(( $(date +%s) - t0 )) -ge "$limit" ]; then log "[$phase] time-out (${limit}s) waiting for /$re/"; return 1; fi
    sleep 1
  done
}
qemu_stop() { kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; }
show_tail() { log "[$1] last console lines:"; tr -d '\r' <"$WORK/$1.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -av '^\s*$' | tail -${2:-25} | sed 's/^/    | /' >&2; }
expect() { # expect PHASE NAME REGEX [SECONDS]
  if wait_for "$1" "$3" "${4:-$TIMEOUT}"; then result PASS "$2: $(tr -d '\r' <"$WORK/$1.log" | grep -aE -m1 "$3" | cut -c1-200)"
  else result FAIL "$2: /$3/ not seen"; show_tail "$1"; return 1; fi
}

# no_token: the token must not show on any console of this run
no_token() {
  if cat "$WORK"/*.log 2>/dev/null | tr -d '\r' | grep -aqF "$TOKEN"; then result FAIL "the token shows on a console"
  else result PASS "the token shows on no console ($(ls "$WORK"/*.log | grep -vc qemu) boots)"; fi
}

TARGET_UEFI_MARK="BYOI-UEFI-MARKER target grubx64.efi on disk a"
DECOY_MARK="BYOI-DECOY-MARKER"
blank_disks() {
  truncate -s 128M "$WORK/disk-c.raw"; truncate -s 256M "$WORK/disk-a.raw"; truncate -s 256M "$WORK/disk-b.raw"
}

case "$SCENARIO" in
direct)
  blank_disks
  echo '{"exit": 3}' >"$CP/job.json"
  : >"$WORK/direct.log"
  QCMD=(qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -display none -vga none -monitor none -parallel none
    -serial "file:$WORK/direct.log" -no-reboot
    -kernel "${RESCUE[0]}" -initrd "${RESCUE[1]}"
    -append "console=ttyS0,115200 quiet byoi.url=http://user:SECRETPASS@10.0.2.2:$PORT/?sig=SECRETQUERY byoi.server=srv1 byoi.token=$TOKEN byoi.retries=2"
    -netdev user,id=n0 -device "virtio-net-pci,netdev=n0")
  printf '%q ' "${QCMD[@]}" >"$WORK/direct.cmd"; echo >>"$WORK/direct.cmd"
  "${QCMD[@]}" </dev/null >"$WORK/direct.qemu.log" 2>&1 &
  QPID=$!; QPIDS+=("$QPID"); QSTART=$(date +%s)
  expect direct dhcp 'byoi-rescue: dhcp: eth0 10\.0\.2\.15/24 via 10\.0\.2\.2' 120
  expect direct agent-args 'STANDIN: args: agent --url http://user:SECRETPASS@10\.0\.2\.2:[0-9]+/\?sig=SECRETQUERY --server srv1 --token <redacted' 60
  expect direct agent-exit-3 'byoi-rescue: the agent exited with status 3' 60
  expect direct restart 'starting the agent \(attempt 2 of 2\)' 60
  expect direct shell "a shell on the console" 60
  if tr -d '\r' <"$WORK/direct.log" | grep -aqF "$TOKEN"; then result FAIL "token printed on the console"; else result PASS "token never on the console"; fi
  if tr -d '\r' <"$WORK/direct.log" | grep -a '^byoi-rescue' | grep -aqE 'SECRETQUERY|SECRETPASS'; then result FAIL "URL query or userinfo shown by init"; else result PASS "init shows the URL without its query and userinfo"; fi
  qemu_stop
  # busybox reboot (no -f) signals PID 1: init syncs and reboots (-no-reboot: QEMU exits)
  echo '{"then": "reboot-cmd"}' >"$CP/job.json"
  : >"$WORK/reboot.log"
  for i in "${!QCMD[@]}"; do [ "${QCMD[$i]}" = "file:$WORK/direct.log" ] && QCMD[$i]="file:$WORK/reboot.log"; done
  "${QCMD[@]}" </dev/null >"$WORK/reboot.qemu.log" 2>&1 &
  QPID=$!; QPIDS+=("$QPID"); QSTART=$(date +%s)
  expect reboot reboot-signal 'byoi-rescue: reboot requested' 90
  for _ in $(seq 30); do kill -0 "$QPID" 2>/dev/null || break; sleep 1; done
  if kill -0 "$QPID" 2>/dev/null; then result FAIL "QEMU still running 30 s after the reboot request"; else result PASS "the guest rebooted (QEMU -no-reboot exited)"; fi
  ;;

bios|probe-bios)
  blank_disks
  if [ "${DECOYS:-1}" = 1 ]; then
    mbr_marker "$WORK/disk-c.raw" "$DECOY_MARK disk c (first NVMe)" c0c0c0c0
    mbr_marker "$WORK/disk-b.raw" "$DECOY_MARK disk b" b0b0b0b0
  fi
  truncate -s 1M "$CP/files/bios.img"
  mbr_marker "$CP/files/bios.img" "BYOI-BIOS-MARKER target disk a" 1a2b3c4d
  if [ "${BIOS_TABLE:-mbr}" = gpt ]; then
    # a GPT image with the same boot code in its protective MBR, and a known disk GUID
    truncate -s 8M "$CP/files/bios.img"
    sgdisk -g -o -n 1:2048:0 -t 1:8300 -U 0FC0FFEE-1234-4321-ABCD-0123456789AB "$CP/files/bios.img" >/dev/null
    bootsel "$CP/files/bootsel.bin" 2 0FC0FFEE-1234-4321-ABCD-0123456789AB
  else
    bootsel "$CP/files/bootsel.bin" 1 "${BOOTSEL_KEY:-1a2b3c4d}"
  fi
  DISK_SCRIPT=${DISK_SCRIPT:-chain /files/bootsel.bin || exit}
  printf '#!ipxe\necho BYOI-PXE: state disk: %s\n%s\necho BYOI-PXE: returned from the disk command: ${errno}\n' "${DISK_SCRIPT//||/OR}" "$DISK_SCRIPT" >"$CP/disk.ipxe"
  echo "{\"image\": \"$BASE/files/bios.img\", \"diskSerial\": \"byoi-a\", \"then\": \"reboot\"}" >"$CP/job.json"
  if [ "$SCENARIO" = probe-bios ]; then
    cp "$CP/files/bios.img" "$WORK/bios.img"; dd if="$WORK/bios.img" of="$WORK/disk-a.raw" conv=notrunc status=none
    echo disk >"$CP/state"
    qemu_start probe bios
    expect probe ipxe-banner 'BYOI-PXE: iPXE' 240 || true
    wait_for probe 'BYOI-(BIOS|DECOY)-MARKER|BYOI-PXE: returned' 180 || true
    show_tail probe 15
    exit 0
  fi
  qemu_start deploy bios
  expect deploy ipxe-chain 'BYOI-PXE: state rescue' 240
  expect deploy rescue-dhcp 'byoi-rescue: dhcp: eth0 ' 300
  expect deploy edd 'STANDIN: (edd|disk) ' 120 || true
  expect deploy written 'STANDIN: wrote [0-9]+ bytes to /dev/nvme' 120
  expect deploy reboot 'STANDIN: reboot\(2\)' 60
  expect deploy disk-script "BYOI-PXE: state disk" 240
  expect deploy target-booted 'BYOI-BIOS-MARKER target disk a' 120 || true
  tr -d '\r' <"$WORK/deploy.log" | grep -aE 'STANDIN: (edd|disk) |BYOI-(BIOS|DECOY)-MARKER|BYOI-PXE: returned|iPXE [0-9]' | sed 's/^/    /' >&2
  no_token
  ;;

efibootmgr)
  blank_disks
  grub_efi "$WORK/target.efi" "$TARGET_UEFI_MARK"
  gpt_esp_image "$CP/files/uefi.img" 64 EFI/debian/grubx64.efi "$WORK/target.efi"
  # efibootmgr and its libraries (Debian's, plus the host's glibc: both Debian 12) as a second
  # cpio archive appended to the initramfs (the kernel unpacks concatenated archives)
  X="$WORK/extra"
  mkdir -p "$X/bin" "$X/lib/x86_64-linux-gnu" "$X/lib64" "$CACHE/debs"
  for p in efibootmgr libefivar1 libefiboot1; do
    (cd "$CACHE/debs" && ls ${p}_*.deb >/dev/null 2>&1 || apt-get -q -o APT::Sandbox::User=root download $p >&2)
  done
  for d in "$CACHE"/debs/{efibootmgr,libefivar1,libefiboot1}_*.deb; do dpkg-deb -x "$d" "$WORK/ebm"; done
  cp "$WORK/ebm/bin/efibootmgr" "$X/bin/"
  cp -L "$WORK"/ebm/usr/lib/x86_64-linux-gnu/libefi{var,boot}.so.1 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libdl.so.2 "$X/lib/x86_64-linux-gnu/"
  cp -L /lib64/ld-linux-x86-64.so.2 "$X/lib64/"
  rm -f "$CP/files/initrd.img"
  { cat "${RESCUE[1]}"; (cd "$X" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -n); } >"$CP/files/initrd.img"
  echo "{\"image\": \"$BASE/files/uefi.img\", \"diskSerial\": \"byoi-a\", \"loader\": \"\\\\EFI\\\\debian\\\\grubx64.efi\", \"description\": \"byoi deployed image\", \"efibootmgr\": true, \"then\": \"poweroff\"}" >"$CP/job.json"
  read -r BI_NET BI_C BI_A BI_B <<<"1 - - -"
  qemu_start deploy uefi
  expect deploy install 'STANDIN: efiboot.Install' 400
  expect deploy efibootmgr-ran 'STANDIN: bytes efibootmgr Boot' 60
  tr -d '\r' <"$WORK/deploy.log" | grep -aE 'STANDIN: (efibootmgr|bytes)' | sed 's/^/    /' >&2
  ours=$(tr -d '\r' <"$WORK/deploy.log" | sed -n 's/^STANDIN: bytes efiboot Boot[0-9A-F]* //p' | head -1)
  theirs=$(tr -d '\r' <"$WORK/deploy.log" | sed -n 's/^STANDIN: bytes efibootmgr Boot[0-9A-F]* //p' | head -1)
  echo "$theirs" >"$WORK/efibootmgr-bytes.hex"
  if [ -n "$ours" ] && [ "$ours" = "$theirs" ]; then
    result PASS "efiboot's Boot#### is byte-identical to efibootmgr's ($(( ${#ours} / 2 )) bytes, attributes included)"
  else
    result FAIL "efiboot and efibootmgr differ: ours=$ours theirs=$theirs"
  fi
  ;;

uefi|probe-uefi)
  blank_disks
  grub_efi "$WORK/target.efi" "$TARGET_UEFI_MARK"
  if [ "${DECOYS:-1}" = 1 ]; then
    grub_efi "$WORK/decoy-c.efi" "$DECOY_MARK disk c BOOTX64.EFI"
    grub_efi "$WORK/decoy-b.efi" "$DECOY_MARK disk b BOOTX64.EFI"
    gpt_esp_image "$WORK/disk-c.raw" 128 EFI/BOOT/BOOTX64.EFI "$WORK/decoy-c.efi"
    gpt_esp_image "$WORK/disk-b.raw" 256 EFI/BOOT/BOOTX64.EFI "$WORK/decoy-b.efi"
  fi
  gpt_esp_image "$CP/files/uefi.img" 64 EFI/debian/grubx64.efi "$WORK/target.efi"
  DISK_SCRIPT=${DISK_SCRIPT:-exit}
  printf '#!ipxe\necho BYOI-PXE: state disk: %s\n%s\necho BYOI-PXE: returned from the disk command: ${errno}\n' "${DISK_SCRIPT//||/OR}" "$DISK_SCRIPT" >"$CP/disk.ipxe"
  echo "{\"image\": \"$BASE/files/uefi.img\", \"diskSerial\": \"byoi-a\", \"loader\": \"\\\\EFI\\\\debian\\\\grubx64.efi\", \"description\": \"byoi deployed image\", \"then\": \"reboot\"}" >"$CP/job.json"
  if [ "$SCENARIO" = probe-uefi ]; then
    dd if="$CP/files/uefi.img" of="$WORK/disk-a.raw" conv=notrunc status=none
    echo disk >"$CP/state"
    qemu_start probe uefi
    expect probe ipxe-banner 'BYOI-PXE: iPXE' 240 || true
    wait_for probe 'BYOI-(UEFI|DECOY)-MARKER|BYOI-PXE: returned' 180 || true
    sleep 5; show_tail probe 30
    exit 0
  fi
  if [ "${SEED:-0}" = 1 ]; then
    saved_bi="$BI_NET $BI_C $BI_A $BI_B"
    read -r BI_NET BI_C BI_A BI_B <<<"1 - - -"
    qemu_start seed uefi
    expect seed seed-network-first 'BYOI-PXE: iPXE' 300
    qemu_stop
    read -r BI_NET BI_C BI_A BI_B <<<"$saved_bi"
  fi
  qemu_start deploy uefi
  expect deploy ipxe-chain 'BYOI-PXE: state rescue' 300
  expect deploy rescue-dhcp 'byoi-rescue: dhcp: eth0 ' 300
  expect deploy efivarfs 'byoi-rescue: firmware: UEFI \(efivarfs mounted\)' 5
  expect deploy written 'STANDIN: wrote [0-9]+ bytes to /dev/nvme' 120
  expect deploy install 'STANDIN: efiboot.Install' 30
  expect deploy reboot 'STANDIN: reboot\(2\)' 60
  expect deploy disk-script "BYOI-PXE: state disk" 300
  expect deploy target-booted "$TARGET_UEFI_MARK" 300 || true
  tr -d '\r' <"$WORK/deploy.log" | grep -aE 'STANDIN: efi|STANDIN: efiboot|BYOI-(UEFI|DECOY)-MARKER|BYOI-PXE: returned|iPXE [0-9]' | sed 's/^/    /' >&2
  qemu_stop

  # A power cycle: a new QEMU on the same OVMF_VARS. The network must still come first, then the disk.
  qemu_start cycle uefi
  expect cycle network-first "BYOI-PXE: state disk" 300
  expect cycle target-after-power-cycle "$TARGET_UEFI_MARK" 300 || true
  qemu_stop

  # The next deployment: the control plane says "rescue" again; the rescue dumps the variables.
  echo rescue >"$CP/state"
  echo '{"diskSerial": "", "then": "poweroff"}' >"$CP/job.json"
  qemu_start redeploy uefi
  expect redeploy network-first-for-redeploy 'STANDIN: efi before: BootCurrent' 400
  tr -d '\r' <"$WORK/redeploy.log" | grep -aE 'STANDIN: efi before' | sed 's/^/    /' >&2
  if tr -d '\r' <"$WORK/redeploy.log" | grep -aq '"byoi deployed image" HD(2,GPT,'; then
    result PASS "the boot entry survived two reboots and a power cycle"
  else
    result FAIL "the boot entry is gone after the reboots"
  fi
  no_token
  ;;
*) die "unknown scenario $SCENARIO";;
esac
