#!/usr/bin/env bash
# Boot acceptance: what byoi deploys really boots (UEFI and legacy BIOS) and cloud-init
# applies the ConfigDrive.
#
# Usage:
#   scripts/boot-check.sh [--firmware uefi|bios|both] [--no-configdrive] [--expect-hostname NAME]
#   scripts/boot-check.sh --acceptance     both firmwares pass AND the two negative cases fail
#                                          (UEFI boots a reinstall-body deploy, BIOS a legacy-body
#                                          one: both job shapes; --job-shape is ignored here; and
#                                          BIOS boots the same image deployed as an OVA)
# Options:
#   --firmware F           uefi (OVMF), bios (SeaBIOS) or both (default both)
#   --no-configdrive       deploy a job without configdrive (expected to FAIL: no marker)
#   --expect-hostname N    expect hostname N instead of the one put in the job (N != job → FAIL)
#   --negative-firmware F  firmware for the negative cases of --acceptance (default bios)
#   --image PATH           the qcow2 to deploy (default: scripts/build-test-image.sh, cached)
#   --timeout SEC          time limit per boot (default 600: a boot takes ~100 s on an idle
#                          core under TCG, 2-4x that when the machine is busy)
#   --job-shape S          legacy (default: the bringYourOwnImage body) or reinstall (the current
#                          operatingSystem byoi_64 + customizations body)
#   --fail-fast            stop a boot as soon as the login prompt shows another hostname
#   --jobs N               boots run at once, each QEMU -smp 1 (default 2)
#   --keep                 keep the work directory (logs, disks) for inspection
# Env:
#   BYOI_BIN               byoi binary (default: built with CGO_ENABLED=0 go build ./cmd/byoi)
#   BYOI_DEPLOY_ARGS       extra arguments for `byoi deploy` (word-split)
#   BOOT_CHECK_PREPARE     DEVELOPMENT ONLY: "manual" prepares the disk with qemu-img/sgdisk/
#                          xorriso instead of `byoi deploy` (proves the QEMU half on its own)
#   BOOT_CHECK_WORKDIR     parent directory for the scratch directory (default /var/tmp)
# Exit status: 0 all checks passed; 1 a check failed; 2 setup error (build, deploy tool, QEMU).
# Needs: qemu-system-x86_64, qemu-img, ovmf, sgdisk, ssh, ssh-keygen, /usr/bin/python3, xorriso
# (manual mode). Network use: 127.0.0.1 only (HTTP server, QEMU user networking, restrict=on).
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
PY=/usr/bin/python3

FIRMWARE=both
NO_CD=0
EXPECT_HOST=""
NEG_FW=bios
IMAGE=""
TIMEOUT=600
JOBS=2
JOB_SHAPE=legacy
FAILFAST=""
EARLY=0
KEEP=0
ACCEPT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --firmware) FIRMWARE=$2; shift 2;;
    --no-configdrive) NO_CD=1; shift;;
    --expect-hostname) EXPECT_HOST=$2; shift 2;;
    --negative-firmware) NEG_FW=$2; shift 2;;
    --image) IMAGE=$2; shift 2;;
    --timeout) TIMEOUT=$2; shift 2;;
    --keep) KEEP=1; shift;;
    --jobs) JOBS=$2; shift 2;;
    --fail-fast) FAILFAST=failfast; shift;;
    --job-shape) JOB_SHAPE=$2; shift 2;;
    --acceptance) ACCEPT=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2;;
  esac
done
case "$FIRMWARE" in uefi|bios|both) ;; *) echo "--firmware must be uefi, bios or both" >&2; exit 2;; esac
case "$JOB_SHAPE" in legacy|reinstall) ;; *) echo "--job-shape must be legacy or reinstall" >&2; exit 2;; esac
case "$NEG_FW" in uefi|bios) ;; *) echo "--negative-firmware must be uefi or bios" >&2; exit 2;; esac

say()  { printf '%s\n' "$*"; }
info() { printf '[boot-check] %s\n' "$*" >&2; }
setup_fail() { printf 'FAIL setup: %s\n' "$*"; exit 2; }

T_START=$(date +%s)
WORK=$(mktemp -d "${BOOT_CHECK_WORKDIR:-/var/tmp}/byoi-boot-check.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ "$KEEP" = 1 ]; then info "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  [ $rc -lt 128 ] || info "interrupted: QEMU and the HTTP server stopped, scratch files removed"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for t in qemu-system-x86_64 qemu-img sgdisk ssh ssh-keygen; do
  command -v "$t" >/dev/null || setup_fail "missing tool $t (scripts/install-test-deps.sh)"
done
[ -x "$PY" ] || setup_fail "missing $PY"
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---------------------------------------------------------------- image, server, test identity
if [ -z "$IMAGE" ]; then
  info "building/looking up the test image (scripts/build-test-image.sh) ..."
  T0=$(date +%s)
  IMAGE=$("$REPO/scripts/build-test-image.sh" | tail -1) || setup_fail "scripts/build-test-image.sh failed"
  info "image: $IMAGE ($(( $(date +%s) - T0 )) s)"
fi
[ -s "$IMAGE" ] || setup_fail "image $IMAGE not found"
mkdir -p "$WORK/srv"
ln -s "$(readlink -f "$IMAGE")" "$WORK/srv/img.qcow2"
IMG_SHA=$(sha256sum "$IMAGE" | cut -d' ' -f1)
HTTP_PORT=$(free_port)
"$PY" -m http.server --bind 127.0.0.1 --directory "$WORK/srv" "$HTTP_PORT" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
IMG_URL="http://127.0.0.1:$HTTP_PORT/img.qcow2"
for _ in $(seq 50); do "$PY" -c "import urllib.request as u; u.urlopen('$IMG_URL', timeout=1).close()" 2>/dev/null && break; sleep 0.2; done

ssh-keygen -q -t ed25519 -N '' -C byoi-boot-check -f "$WORK/id_ed25519"
PUBKEY=$(cat "$WORK/id_ed25519.pub")
# cloud-init 22.4 prints sha256(base64-decoded key blob) as hex pairs joined by ':'
KEY_FP=$("$PY" -c 'import sys,base64,hashlib; h=hashlib.sha256(base64.b64decode(sys.argv[1])).hexdigest(); print(":".join(h[i:i+2] for i in range(0,len(h),2)))' "$(cut -d' ' -f2 <<<"$PUBKEY")")
JOB_HOST="byoi-test-$(rand_hex 2)"
MARKER="$(rand_hex 8)"
info "hostname $JOB_HOST, marker $MARKER, key fingerprint $KEY_FP"

# --------------------------------------------------------------------------------- deployment
write_job() { # $1 = with configdrive (1/0), $2 = output file, $3 = shape (legacy|reinstall)
  # The image: IMG_URL/IMG_SHA (qcow2), or W_URL/W_SHA/W_TYPE when set (the OVA).
  "$PY" - "$1" "$2" "${W_URL:-$IMG_URL}" "${W_SHA:-$IMG_SHA}" "$JOB_HOST" "$PUBKEY" "$MARKER" "$3" "${W_TYPE:-qcow2}" <<'EOF'
import json, sys
with_cd, out, url, sha, host, key, marker, shape, typ = sys.argv[1:]
job = {"URL": url, "type": typ, "checkSum": sha, "checkSumType": "sha256",
       "description": "byoi boot-check"}
if with_cd == "1":
    user_data = ("#!/bin/sh\n"
                 "# byoi boot-check: prove the ConfigDrive user data ran\n"
                 "printf 'BYOI-MARKER %%s\\n' '%s' > /dev/ttyS0 2>/dev/null || true\n"
                 "printf 'BYOI-MARKER %%s\\n' '%s' > /dev/console 2>/dev/null || true\n"
                 "printf '%%s\\n' '%s' > /root/byoi-marker\n") % (marker, marker, marker)
    job["configdrive"] = {"enable": True, "hostname": host, "sshKey": key,
                          "userData": user_data,
                          "userMetadatas": [{"key": "byoi-test", "value": "boot-check"},
                                            {"key": "marker", "value": marker}]}
if shape == "reinstall":  # the current OVH body: POST /dedicated/server/{sn}/reinstall
    c = {"imageURL": url, "imageType": typ, "imageCheckSum": sha, "imageCheckSumType": "sha256"}
    if "configdrive" in job:
        cd = job["configdrive"]
        c.update({"hostname": cd["hostname"], "sshKey": cd["sshKey"], "configDriveUserData": cd["userData"],
                  "configDriveMetadata": {m["key"]: m["value"] for m in cd["userMetadatas"]}})
    job = {"operatingSystem": "byoi_64", "customizations": c, "storage": [{"diskGroupId": 0}]}
json.dump(job, open(out, "w"), indent=1)
EOF
}

BYOI=""
byoi_bin() {
  if [ -n "$BYOI" ]; then return; fi
  if [ -n "${BYOI_BIN:-}" ]; then BYOI=$BYOI_BIN; return; fi
  info "building byoi (CGO_ENABLED=0 go build ./cmd/byoi) ..."
  (cd "$REPO" && CGO_ENABLED=0 go build -o "$WORK/byoi" ./cmd/byoi) >"$WORK/go-build.log" 2>&1 \
    || { tail -20 "$WORK/go-build.log"; setup_fail "go build ./cmd/byoi failed"; }
  BYOI="$WORK/byoi"
}

# DEVELOPMENT ONLY (BOOT_CHECK_PREPARE=manual): what byoi deploy is meant to do, with stock tools.
manual_prepare() { # $1 job, $2 disk
  local job=$1 disk=$2 cd="$WORK/cd" sectors start end
  curl_py() { "$PY" -c "import shutil,sys,urllib.request as u; shutil.copyfileobj(u.urlopen(sys.argv[1]), open(sys.argv[2],'wb'))" "$@"; }
  curl_py "$IMG_URL" "$WORK/dl.qcow2"
  [ "$(sha256sum "$WORK/dl.qcow2" | cut -d' ' -f1)" = "$IMG_SHA" ] || return 1
  qemu-img convert -f qcow2 -O raw "$WORK/dl.qcow2" "$disk" && rm -f "$WORK/dl.qcow2"
  truncate -s 8G "$disk"
  sgdisk -e "$disk" >/dev/null
  "$PY" -c 'import json,sys; sys.exit(0 if "configdrive" in json.load(open(sys.argv[1])) else 1)' "$job" || return 0
  rm -rf "$cd"; mkdir -p "$cd/openstack/latest"
  "$PY" - "$job" "$cd/openstack/latest" <<'EOF'
import json, sys, uuid
job = json.load(open(sys.argv[1])); cd = job["configdrive"]; out = sys.argv[2]
md = {"uuid": str(uuid.uuid4()), "hostname": cd["hostname"], "name": cd["hostname"],
      "public_keys": {"byoi": cd["sshKey"]},
      "meta": {m["key"]: m["value"] for m in cd.get("userMetadatas", [])}}
json.dump(md, open(out + "/meta_data.json", "w"))
open(out + "/user_data", "w").write(cd["userData"])
EOF
  xorriso -as mkisofs -quiet -R -V config-2 -o "$WORK/cd.iso" "$cd" 2>/dev/null
  sectors=$(( $(stat -c %s "$disk") / 512 ))
  end=$(( sectors - 34 ))
  start=$(( (end - 131072) / 2048 * 2048 ))
  sgdisk -n "0:$start:$end" -t 0:0700 -c 0:config-2 "$disk" >/dev/null
  dd if="$WORK/cd.iso" of="$disk" bs=512 seek="$start" conv=notrunc,sparse status=none
}

# make_ova $1: the test image as an OVA: OVF descriptor, SHA256 manifest, streamOptimized VMDK
# (qemu-img writes it; VMware's member order: ovf, mf, vmdk).
make_ova() {
  local out=$1 d="$WORK/ova" cap
  rm -rf "$d"; mkdir -p "$d"
  qemu-img convert -f qcow2 -O vmdk -o subformat=streamOptimized "$IMAGE" "$d/disk1.vmdk"
  cap=$(qemu-img info --output=json "$IMAGE" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  cat >"$d/vm.ovf" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="disk1.vmdk"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="$cap"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="byoi-boot-check"><Info>boot-check</Info>
    <VirtualHardwareSection><Info>hardware</Info>
      <Item><rasd:ElementName>disk1</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:AddressOnParent>0</rasd:AddressOnParent></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
EOF
  (cd "$d" && for f in vm.ovf disk1.vmdk; do printf 'SHA256(%s)= %s\n' "$f" "$(sha256sum "$f" | cut -d' ' -f1)"; done >vm.mf)
  tar -C "$d" -cf "$out" vm.ovf vm.mf disk1.vmdk
  rm -rf "$d"
}

deploy() { # $1 name, $2 with-configdrive; sets DISK
  local name=$1 with_cd=$2 job="$WORK/job-$1.json" t0 rc
  DISK="$WORK/disk-$name.img"
  write_job "$with_cd" "$job" "$JOB_SHAPE"
  rm -f "$DISK"; truncate -s 8G "$DISK"
  t0=$(date +%s)
  if [ "${BOOT_CHECK_PREPARE:-}" = manual ]; then
    info "DEVELOPMENT ONLY: BOOT_CHECK_PREPARE=manual, preparing $name without byoi"
    write_job "$with_cd" "$WORK/job-$1.legacy.json" legacy  # manual_prepare reads the legacy body
    manual_prepare "$WORK/job-$1.legacy.json" "$DISK" >"$WORK/deploy-$name.log" 2>&1 && rc=0 || rc=$?
  elif [ -n "${BOOT_CHECK_PREPARE:-}" ]; then
    setup_fail "unknown BOOT_CHECK_PREPARE=$BOOT_CHECK_PREPARE (only 'manual', for development)"
  else
    byoi_bin
    # shellcheck disable=SC2086
    "$BYOI" deploy --job "$job" --disk "$DISK" ${BYOI_DEPLOY_ARGS:-} </dev/null >"$WORK/deploy-$name.log" 2>&1 && rc=0 || rc=$?
  fi
  if [ $rc -ne 0 ]; then
    tail -30 "$WORK/deploy-$name.log"
    say "FAIL deploy[$name]: exit $rc"
    exit 2
  fi
  say "PASS deploy[$name]: $( [ "${BOOT_CHECK_PREPARE:-}" = manual ] && echo 'manual (dev)' || echo "byoi deploy ($JOB_SHAPE job, ${W_TYPE:-qcow2})") in $(( $(date +%s) - t0 )) s"
  # independent judge of the table byoi left behind
  if sgdisk -v "$DISK" 2>&1 | grep -q "No problems found"; then
    say "PASS deploy[$name]: sgdisk -v finds no problems (backup GPT at the end of the disk)"
  else
    sgdisk -v "$DISK" 2>&1 | tail -5
    say "FAIL deploy[$name]: sgdisk -v reports problems"
    FAILED+=("deploy[$name]:gpt")
  fi
  sgdisk -p "$DISK" 2>/dev/null | sed -n '/^Number/,$p' | sed 's/^/    /' >&2
}

# ------------------------------------------------------------------------------------- booting
FAILED=()
CASE_FAILS=()
QPID=""
check() { # $1 case, $2 check name, $3 ok(0/1), $4 description
  # after an early stop only the hostname is decided; other failures are undecided
  if [ "$3" != 0 ] && [ "$EARLY" = 1 ] && [ "$2" != hostname ]; then
    say "SKIP [$1] $2: not seen before the early stop ($4)"; return
  fi
  if [ "$3" = 0 ]; then say "PASS [$1] $2: $4"; else say "FAIL [$1] $2: $4"; CASE_FAILS+=("$2"); fi
}

# boot_case NAME FIRMWARE DISK EXPECTED_HOSTNAME [failfast]; sets CASE_FAILS (checks that failed)
# Waits for cloud-init's final message and the login prompt (or the time limit; or 120 s after
# the prompt without a final message). failfast: stop as soon as the prompt shows another
# hostname; checks that could not be decided yet are then reported as SKIP.
boot_case() {
  local name=$1 fw=$2 disk=$3 want=$4 failfast=${5:-}
  local dir="$WORK/boot-$name" log ov port pid t0 now elapsed final="" prompt="" state=running tprompt=""
  set +e
  EARLY=0
  CASE_FAILS=()
  mkdir -p "$dir"; log="$dir/console.log"; ov="$dir/overlay.qcow2"; : >"$log"
  qemu-img create -q -f qcow2 -b "$disk" -F raw "$ov"
  port=$(free_port)
  local fwargs=()
  if [ "$fw" = uefi ]; then
    cp "$OVMF_VARS" "$dir/OVMF_VARS.fd"
    fwargs=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
            -drive "if=pflash,format=raw,unit=1,file=$dir/OVMF_VARS.fd")
  fi
  info "[$name] booting $fw (ssh on 127.0.0.1:$port, console $log, limit ${TIMEOUT}s)"
  t0=$(date +%s)
  qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -no-reboot \
    -display none -vga none -monitor none -parallel none -serial "file:$log" \
    "${fwargs[@]}" \
    -drive "file=$ov,format=qcow2,if=virtio,cache=unsafe" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" \
    -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
    </dev/null >"$dir/qemu.log" 2>&1 &
  pid=$!
  QPID=$pid
  while :; do
    sleep 2
    now=$(date +%s); elapsed=$(( now - t0 ))
    final=$(tr -d '\r' <"$log" | grep -a -m1 -E 'Cloud-init v\. .* finished at ' || true)
    prompt=$(tr -d '\r' <"$log" | grep -a -oE '[A-Za-z0-9._-]+ login:' | tail -1 | sed 's/ login:$//' || true)
    if [ -n "$final" ] && [ -n "$prompt" ]; then state=finished; break; fi
    if [ -n "$prompt" ] && [ "$prompt" != "$want" ] && [ -n "$failfast" ]; then state=wrong-hostname-failfast; break; fi
    if [ -n "$prompt" ] && [ -z "$tprompt" ]; then tprompt=$now; fi
    if [ -n "$tprompt" ] && [ $(( now - tprompt )) -ge 120 ]; then state=no-cloud-init-final-120s-after-login-prompt; break; fi
    if ! kill -0 "$pid" 2>/dev/null; then state=qemu-exited; break; fi
    if [ "$elapsed" -ge "$TIMEOUT" ]; then state=timeout; break; fi
  done
  say "TIME [$name] $fw: $state after ${elapsed}s"
  if [ "$state" = timeout ] || [ "$state" = qemu-exited ]; then
    check "$name" boot 1 "$state after ${elapsed}s (no cloud-init final message and login prompt); last 50 console lines:"
    tr -d '\r' <"$log" | tail -50 | sed 's/^/    | /'
    [ "$state" = qemu-exited ] && sed 's/^/    qemu: /' "$dir/qemu.log"
  fi

  local clog; clog=$(tr -d '\r' <"$log")
  [ "$state" = wrong-hostname-failfast ] && EARLY=1
  [ "$state" = no-cloud-init-final-120s-after-login-prompt ] && check "$name" cloud-init-finished 1 "no cloud-init final message 120 s after the login prompt"
  grep -aqF "BYOI-MARKER $MARKER" <<<"$clog"; check "$name" marker $? "user data marker $MARKER on the serial console"
  grep -aqE 'Datasource DataSourceConfigDrive \[net,ver=2\]\[source=/dev/vd[a-z][0-9]+\]' <<<"$final"
  check "$name" datasource $? "cloud-init finished with the ConfigDrive datasource: ${final:-<no final message>}"
  [ -n "$prompt" ] && [ "$prompt" = "$want" ]; check "$name" hostname $? "login prompt shows '$want' (saw '${prompt:-<none>}')"
  grep -aqE "Authorized keys from /home/debian/\.ssh/authorized_keys for user debian" <<<"$clog" \
    && grep -aqF "$KEY_FP" <<<"$clog"
  check "$name" ssh-key-fingerprint $? "cloud-init lists the test key $KEY_FP for user debian"

  if [ "$state" = finished ] && [ ${#CASE_FAILS[@]} -eq 0 ]; then
    # log in with the test key and look at the system from inside
    local out="" try
    for try in $(seq 10); do
      out=$(ssh -i "$WORK/id_ed25519" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o BatchMode=yes -o ConnectTimeout=15 -o LogLevel=ERROR debian@127.0.0.1 'sh -s' <<'EOF' 2>"$dir/ssh.err"
echo "HOST=$(hostname)"
echo "MARKERFILE=$(sudo cat /root/byoi-marker)"
dev=$(sudo blkid -t LABEL=config-2 -o device | head -1)
echo "CD_DEV=$dev"
echo "CD_TYPE=$(sudo blkid -s TYPE -o value "$dev")"
sudo mkdir -p /run/byoi-cd && sudo mount -o ro "$dev" /run/byoi-cd 2>/dev/null \
  && echo "CD_META=$(sudo cat /run/byoi-cd/openstack/latest/meta_data.json | tr -d '\n')" && sudo umount /run/byoi-cd
echo "ROOT=$(findmnt -no SOURCE /) $(lsblk -bno SIZE "$(findmnt -no SOURCE /)")"
lsblk -o NAME,SIZE,FSTYPE,LABEL /dev/vda | sed 's/^/LSBLK /'
echo "SYSTEMD=$(systemd-analyze 2>/dev/null | head -1)"
echo "CI_QUERY=$(sudo cloud-init query ds.meta_data.meta 2>/dev/null | tr -d ' \n')"
EOF
            ) && break
      sleep 5
    done
    sed 's/^/    /' <<<"$out" >&2
    [ -n "$out" ]; check "$name" ssh-login $? "ssh -i <test key> debian@127.0.0.1:$port works$([ -z "$out" ] && echo ": $(tail -2 "$dir/ssh.err" | tr '\n' ' ')")"
    grep -qx "HOST=$want" <<<"$out"; check "$name" ssh-hostname $? "hostname over ssh is '$want'"
    grep -qx "MARKERFILE=$MARKER" <<<"$out"; check "$name" marker-file $? "/root/byoi-marker holds the marker"
    local meta; meta=$(sed -n 's/^CD_META=//p' <<<"$out")
    grep -q '^CD_TYPE=iso9660$\|^CD_TYPE=vfat$' <<<"$out" \
      && "$PY" -c 'import json,sys; m=json.loads(sys.argv[1]); sys.exit(0 if m.get("uuid") and sys.argv[2] in json.dumps(m) else 1)' "$meta" "$want" 2>/dev/null
    check "$name" configdrive-survives $? "after first boot (growpart) config-2 is still readable: $(sed -n 's/^CD_DEV=//p' <<<"$out") $(sed -n 's/^ROOT=//p' <<<"$out" | sed 's/^/root /')"
    "$PY" -c 'import json,sys; m=json.loads(sys.argv[1]); sys.exit(0 if m.get("meta",{}).get("marker")==sys.argv[2] else 1)' "$meta" "$MARKER" 2>/dev/null
    check "$name" metadata-on-drive $? "meta_data.json on config-2 carries userMetadatas as meta (marker=$MARKER)"
    grep -q "^CI_QUERY=.*\"marker\":\"$MARKER\"" <<<"$out"
    check "$name" metadata-in-cloud-init $? "cloud-init query ds.meta_data.meta shows the marker: $(sed -n 's/^CI_QUERY=//p' <<<"$out")"
  fi
  EARLY=0
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  say "TIME [$name] $fw: total $(( $(date +%s) - t0 ))s"
  if [ ${#CASE_FAILS[@]} -eq 0 ]; then say "PASS [$name] boot on $fw"; else say "FAIL [$name] boot on $fw: ${CASE_FAILS[*]}"; fi
  echo "${CASE_FAILS[*]}" >"$dir/fails"
}

# run_boots "NAME FIRMWARE DISK HOSTNAME [failfast]" ...: up to $JOBS boots at once (each QEMU is -smp 1),
# reports printed in order; afterwards FAILS_<NAME> holds the checks that failed for each case.
run_boots() {
  local specs=("$@") i j n name fw disk want ff pids=()
  for ((i=0; i<${#specs[@]}; i+=JOBS)); do
    pids=()
    for ((j=i; j<i+JOBS && j<${#specs[@]}; j++)); do
      read -r name fw disk want ff <<<"${specs[$j]}"
      mkdir -p "$WORK/boot-$name"
      info "booting [$name] under $fw (console: $WORK/boot-$name/console.log)"
      ( trap '[ -n "$QPID" ] && kill "$QPID" 2>/dev/null' EXIT; trap 'exit 143' TERM
        boot_case "$name" "$fw" "$disk" "$want" "$ff" ) >"$WORK/boot-$name/report" 2>&1 &
      pids+=($!); PIDS+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    for ((j=i; j<i+JOBS && j<${#specs[@]}; j++)); do
      read -r name _ <<<"${specs[$j]}"
      cat "$WORK/boot-$name/report"
      if [ -f "$WORK/boot-$name/fails" ]; then n=$(cat "$WORK/boot-$name/fails"); else n="crashed"; fi
      printf -v "FAILS_${name//-/_}" '%s' "$n"
    done
  done
}
fails_of() { local v="FAILS_${1//-/_}"; printf '%s' "${!v-crashed}"; }

fws() { if [ "$1" = both ]; then echo uefi bios; else echo "$1"; fi; }

if [ "$ACCEPT" = 0 ]; then
  if [ "$NO_CD" = 1 ]; then deploy nocd 0; else deploy cd 1; fi
  want=${EXPECT_HOST:-$JOB_HOST}
  specs=()
  for fw in $(fws "$FIRMWARE"); do specs+=("$fw $fw $DISK $want $FAILFAST"); done
  run_boots "${specs[@]}"
  for fw in $(fws "$FIRMWARE"); do [ -z "$(fails_of "$fw")" ] || FAILED+=("$fw"); done
else
  # Both OVH job shapes boot: the legacy body under BIOS (and for the negative cases), the
  # reinstall body (operatingSystem byoi_64 + customizations) under UEFI.
  JOB_SHAPE=legacy; deploy cd 1; DISK_CD=$DISK
  deploy nocd 0; DISK_NOCD=$DISK
  JOB_SHAPE=reinstall; deploy cd-reinstall 1; DISK_CDR=$DISK
  # The same system as an OVA (a streamOptimized VMDK, as VMware and
  # VirtualBox export it), deployed with type "ova".
  make_ova "$WORK/srv/img.ova"
  W_URL="http://127.0.0.1:$HTTP_PORT/img.ova" W_SHA=$(sha256sum "$WORK/srv/img.ova" | cut -d' ' -f1) W_TYPE=ova
  export W_URL W_SHA W_TYPE
  JOB_SHAPE=legacy; deploy ova 1; DISK_OVA=$DISK
  unset W_URL W_SHA W_TYPE
  WRONG="wrong-$(rand_hex 2)"
  run_boots "uefi uefi $DISK_CDR $JOB_HOST" "bios bios $DISK_CD $JOB_HOST" "ova bios $DISK_OVA $JOB_HOST" \
            "negative-no-configdrive $NEG_FW $DISK_NOCD $JOB_HOST" \
            "negative-wrong-hostname $NEG_FW $DISK_CD $WRONG failfast"
  for fw in uefi bios ova; do [ -z "$(fails_of "$fw")" ] || FAILED+=("$fw"); done
  # negative 1: no ConfigDrive → cloud-init finishes (DataSourceNone) without the marker → must
  # fail on the marker (the boot runs until cloud-init's final message)
  f=$(fails_of negative-no-configdrive)
  if [[ " $f " == *" marker "* ]]; then
    say "PASS acceptance: without a ConfigDrive the check fails ($f)"
  else
    say "FAIL acceptance: without a ConfigDrive the check did not fail on the marker (${f:-nothing failed})"
    FAILED+=("negative-no-configdrive")
  fi
  # negative 2: wrong expected hostname → must fail on the hostname (stops at the login prompt)
  f=$(fails_of negative-wrong-hostname)
  if [[ " $f " == *" hostname "* ]]; then
    say "PASS acceptance: a wrong expected hostname ($WRONG) fails the check ($f)"
  else
    say "FAIL acceptance: a wrong expected hostname did not fail the hostname check (${f:-nothing failed})"
    FAILED+=("negative-wrong-hostname")
  fi
fi

say "TIME total: $(( $(date +%s) - T_START ))s"
if [ ${#FAILED[@]} -eq 0 ]; then say "RESULT: PASS"; exit 0; fi
say "RESULT: FAIL (${FAILED[*]})"
exit 1
