#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for tests and load runs: Debian's
# postgresql (15 on Debian 12), a new cluster in a temporary directory,
# listening only on a Unix socket in that directory (no TCP port), run by
# an unprivileged user (initdb refuses root: as root the cluster belongs to
# the `postgres` user the Debian package creates). fsync stays on.
#
#   dsn=$(scripts/pg-throwaway.sh start)   # prints postgres://byoi@/byoi?host=/tmp/byoi-pg.XXXX&port=5432
#   scripts/pg-throwaway.sh stop "$dsn"     # stops the cluster and removes the directory (the DSN or the directory)
#
# PG_OPTS adds server settings, e.g. PG_OPTS='-c max_connections=300'.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  echo "pg-throwaway: no initdb (Debian: apt-get install postgresql, or scripts/install-test-deps.sh)" >&2
  exit 1
}

# as_owner runs a command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "${1:-}" in
start)
  bin=$(bindir)
  dir=$(mktemp -d /tmp/byoi-pg.XXXXXX)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "pg-throwaway: no user postgres (install postgresql)" >&2; rmdir "$dir"; exit 1; }
    chown postgres: "$dir"
  fi
  chmod 700 "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U byoi --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
  # Settings for a test cluster on a small shared machine: enough
  # connections for several byoi-api instances and the load tool.
  # shellcheck disable=SC2086
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses= -k $dir -p 5432 -c max_connections=200 -c shared_buffers=256MB ${PG_OPTS:-}" start >/dev/null ||
    { cat "$dir/server.log" >&2; rm -rf "$dir"; exit 1; }
  as_owner "$bin/createdb" -h "$dir" -p 5432 -U byoi byoi
  echo "postgres://byoi@/byoi?host=$dir&port=5432&sslmode=disable"
  ;;
stop)
  arg=${2:?usage: pg-throwaway.sh stop DSN|DIR}
  dir=$arg
  if [[ $arg == postgres://* ]]; then
    dir=$(sed -E 's/.*[?&]host=([^&]*).*/\1/' <<<"$arg")
  fi
  case $dir in /tmp/byoi-pg.*) ;; *) echo "pg-throwaway: $dir is not one of ours" >&2; exit 1 ;; esac
  [ -d "$dir" ] || exit 0
  bin=$(bindir)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: pg-throwaway.sh start | stop DSN|DIR" >&2
  exit 2
  ;;
esac
