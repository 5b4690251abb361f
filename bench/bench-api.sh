#!/usr/bin/env bash
# Load runs of the control plane: byoi-api instances on SQLite (one) or on a
# throw-away PostgreSQL (several), and byoi-load playing the agents and
# customers against them, all on 127.0.0.1 and bounded in time. byoi-load
# prints events/s, p50/p99/max per endpoint, errors, the memory and CPU of
# every instance (and of PostgreSQL, and its own), and at the end compares
# every acknowledged event with what the database holds.
#
#   bench/bench-api.sh                                   # SQLite, 1,000 servers, 60 s
#   bench/bench-api.sh --backend postgres --instances 2 --agents 10000 --duration 5m
#   bench/bench-api.sh --backend postgres --instances 2 --agents 3000 --duration 60s --kill-at 30
#   bench/bench-api.sh --profile 30                      # CPU, block, mutex, heap profiles of instance 1 at 30 s
#   bench/bench-api.sh --scenario cache --agents 200 --image-size 1GiB             # issue 28: one image, 200 agents, the image cache
#   bench/bench-api.sh --scenario cache --no-cache --agents 200 --image-size 1GiB  # the same, every agent from the origin
#
# --scenario cache runs `byoi-load cache` against one instance started with
# --image-cache (a temporary directory, 127.0.0.0/8 allowed as origin) and
# --metrics-listen: the origin inside byoi-load counts what it sends, every
# agent hashes what it got; /metrics is saved beside the logs.
#
# --kill-at S kills the last instance with SIGKILL S seconds into the run:
# its agents move to another instance, and the final comparison shows
# whether anything it had acknowledged was lost. BENCH_OUT=DIR keeps the
# logs and profiles (default: a temporary directory, printed).
# BYOI_BENCH_PG_DSN uses an existing PostgreSQL database instead of a
# throw-away cluster (it must be empty or a byoi database).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=sqlite instances=1 agents=1000 duration=60s interval=2s kill_at=0 profile=0 progress=20 customers=0
scenario=events nocache=0 image_size=1GiB
while [ $# -gt 0 ]; do
  case $1 in
  --backend) backend=$2; shift 2 ;;
  --instances) instances=$2; shift 2 ;;
  --agents) agents=$2; shift 2 ;;
  --customers) customers=$2; shift 2 ;;
  --duration) duration=$2; shift 2 ;;
  --interval) interval=$2; shift 2 ;;
  --progress-events) progress=$2; shift 2 ;;
  --kill-at) kill_at=$2; shift 2 ;;
  --profile) profile=$2; shift 2 ;;
  --scenario) scenario=$2; shift 2 ;;
  --no-cache) nocache=1; shift ;;
  --image-size) image_size=$2; shift 2 ;;
  *) echo "bench-api: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $backend in sqlite | postgres) ;; *) echo "bench-api: --backend sqlite|postgres" >&2; exit 2 ;; esac
if [ "$backend" = sqlite ] && [ "$instances" != 1 ]; then
  echo "bench-api: SQLite serves one instance" >&2; exit 2
fi
out=${BENCH_OUT:-$(mktemp -d /tmp/byoi-bench.XXXXXX)}
mkdir -p "$out"
echo "bench-api: logs and profiles in $out"
export CGO_ENABLED=0
go build -o "$out/byoi-api" ./cmd/byoi-api
go build -o "$out/byoi-load" ./cmd/byoi-load

pids=() helpers=() dsn="" pgdsn_ours=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for h in "${helpers[@]}"; do kill "$h" 2>/dev/null || true; done
  if [ -n "$pgdsn_ours" ]; then
    cp "$(sed -E 's/.*[?&]host=([^&]*).*/\1/' <<<"$pgdsn_ours")/server.log" "$out/postgres.log" 2>/dev/null || true
    scripts/pg-throwaway.sh stop "$pgdsn_ours"
  fi
  return 0
}
trap cleanup EXIT

keyfile=$out/byoi.key
if [ "$backend" = sqlite ]; then
  db=$out/byoi.db
  rm -f "$db" "$db-wal" "$db-shm"
else
  if [ -n "${BYOI_BENCH_PG_DSN:-}" ]; then
    db=$BYOI_BENCH_PG_DSN
  else
    pgdsn_ours=$(scripts/pg-throwaway.sh start)
    db=$pgdsn_ours
  fi
fi
# The first command creates the schema and the key file.
"$out/byoi-api" customer add bench --db "$db" --key-file "$keyfile" >/dev/null

case $scenario in events | cache) ;; *) echo "bench-api: --scenario events|cache" >&2; exit 2 ;; esac
extra=()
if [ "$scenario" = cache ]; then
  [ "$instances" = 1 ] || { echo "bench-api: the cache scenario runs one instance" >&2; exit 2; }
  extra=(--metrics-listen 127.0.0.1:19108)
  [ "$nocache" = 1 ] || extra+=(--image-cache "$out/cache" --image-cache-allow 127.0.0.0/8)
fi
urls=() pidargs=()
for i in $(seq 1 "$instances"); do
  port=$((18079 + i))
  "$out/byoi-api" serve --db "$db" --key-file "$keyfile" --listen "127.0.0.1:$port" --pprof "127.0.0.1:$((16059 + i))" "${extra[@]}" 2>"$out/api$i.log" &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
  pidargs+=("api$i=$!")
done
if [ -n "$pgdsn_ours" ]; then
  pgdir=$(sed -E 's/.*[?&]host=([^&]*).*/\1/' <<<"$pgdsn_ours")
  pidargs+=("postgres=$(head -1 "$pgdir/data/postmaster.pid")")
fi
for i in "${!urls[@]}"; do
  for _ in $(seq 1 100); do
    grep -q 'msg="byoi-api serving"' "$out/api$((i + 1)).log" && break
    kill -0 "${pids[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  grep -q 'msg="byoi-api serving"' "$out/api$((i + 1)).log" || { cat "$out/api$((i + 1)).log" >&2; exit 1; }
done

if [ "$profile" != 0 ]; then
  (
    sleep "$profile"
    curl -s -o "$out/cpu.pprof" "http://127.0.0.1:16060/debug/pprof/profile?seconds=20"
    for p in block mutex heap goroutine; do
      curl -s -o "$out/$p.pprof" "http://127.0.0.1:16060/debug/pprof/$p"
    done
    echo "bench-api: profiles of api1 in $out (go tool pprof -top $out/byoi-api $out/cpu.pprof)"
  ) &
  helpers+=($!)
fi
if [ "$kill_at" != 0 ]; then
  victim=${pids[-1]}
  (
    sleep "$kill_at"
    kill -9 "$victim" && echo "bench-api: killed api$instances (pid $victim) with SIGKILL at ${kill_at}s"
  ) &
  helpers+=($!)
fi

if [ "$scenario" = cache ]; then
  IFS=,
  "$out/byoi-load" cache --db "$db" --key-file "$keyfile" --url "${urls[0]}" --agents "$agents" --image-size "$image_size" \
    --duration "$duration" --pid "${pidargs[*]}" | tee "$out/load.txt"
  unset IFS
  curl -s -o "$out/metrics.txt" http://127.0.0.1:19108/metrics || true
  echo "bench-api: /metrics of api1 in $out/metrics.txt"
  exit 0
fi
IFS=,
"$out/byoi-load" --db "$db" --key-file "$keyfile" --url "${urls[*]}" --agents "$agents" --customers "$customers" \
  --duration "$duration" --interval "$interval" --progress-events "$progress" --pid "${pidargs[*]}" \
  --cpuprofile "$out/load-cpu.pprof" | tee "$out/load.txt"
unset IFS
for h in "${helpers[@]}"; do wait "$h" || true; done
