#!/usr/bin/env bash
# PostgreSQL and Redis for Hangar.
#
#   scripts/services.sh [up]   prints DATABASE_URL=… and REDIS_URL=… for servers that answer:
#                              $DATABASE_URL / $REDIS_URL (default postgresql://postgres@127.0.0.1:5432/hangar
#                              and redis://127.0.0.1:6379) when reachable; otherwise local ones it
#                              starts (or finds already running) under $HANGAR_DATA_DIR/services/ on
#                              spare ports, installing Debian's postgresql / redis-server when
#                              missing and root. Progress goes to stderr, the two lines to stdout:
#                              eval "$(scripts/services.sh)" or `export $(scripts/services.sh)`.
#   scripts/services.sh stop   stops the local servers this script started (by their pid files).
#   scripts/services.sh status says what runs under $HANGAR_DATA_DIR/services/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SERVICES_DIR="$HANGAR_DATA_DIR/services"
PG_DIR="$SERVICES_DIR/postgres"
REDIS_DIR="$SERVICES_DIR/redis"
DEFAULT_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/hangar"
DEFAULT_REDIS_URL="redis://127.0.0.1:6379"
LOCAL_DB_NAME="hangar"

die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# url_host_port URL DEFAULT_PORT — prints "host port" of a postgresql:// or redis:// URL.
url_host_port() {
  local re='^[a-z+]+://([^@/]*@)?(\[[^]]+\]|[^:/?]*)(:([0-9]+))?([/?].*)?$'
  [[ "$1" =~ $re ]] || return 1
  local host="${BASH_REMATCH[2]:-127.0.0.1}" port="${BASH_REMATCH[4]:-$2}"
  host="${host#[}"; host="${host%]}"
  printf '%s %s\n' "$host" "$port"
}

# tcp_open HOST PORT — whether something accepts TCP connections there (bounded by 2 s).
tcp_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

postgres_answers() {
  local hp; hp="$(url_host_port "$1" 5432)" || return 1
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -t 3 -d "$1" >/dev/null 2>&1
  else
    # shellcheck disable=SC2086
    tcp_open $hp
  fi
}

redis_answers() {
  local hp; hp="$(url_host_port "$1" 6379)" || return 1
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(timeout 3 redis-cli -u "$1" ping 2>/dev/null)" = "PONG" ]
  else
    # shellcheck disable=SC2086
    tcp_open $hp
  fi
}

port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    tcp_open 127.0.0.1 "$1"
  fi
}

# spare_port FIRST — the first port from FIRST on that nothing listens on.
spare_port() {
  local p
  for ((p = $1; p < $1 + 500; p++)); do
    if ! port_in_use "$p"; then echo "$p"; return 0; fi
  done
  die "no spare port in $1..$(($1 + 499))"
}

# --- PostgreSQL ------------------------------------------------------------------------------

pg_bindir() {
  local dir
  dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

# PostgreSQL refuses to run as root: as root, run its tools as the postgres user.
as_pg() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_local_running() {
  local bindir="$1"
  [ -f "$PG_DIR/data/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

start_local_postgres() {
  local bindir port
  bindir="$(pg_bindir)" || true
  if [ -z "$bindir" ]; then
    ensure_apt_packages pg_ctlcluster:postgresql || die "PostgreSQL is not installed"
    bindir="$(pg_bindir)" || die "installed postgresql but found no /usr/lib/postgresql/*/bin/initdb"
  fi
  mkdir -p "$PG_DIR"
  if is_root; then
    chown postgres:postgres "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" ||
      die "the postgres user cannot reach $PG_DIR (a parent folder is not traversable); set HANGAR_DATA_DIR elsewhere"
  fi
  if pg_local_running "$bindir"; then
    port="$(cat "$PG_DIR/port")"
    log "reusing the local PostgreSQL on port $port ($PG_DIR)"
  else
    if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
      log "creating a PostgreSQL cluster in $PG_DIR/data"
      as_pg "$bindir/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 ||
        die "initdb failed, see $PG_DIR/initdb.log"
      echo "include_if_exists = 'hangar.conf'" | as_pg tee -a "$PG_DIR/data/postgresql.conf" >/dev/null
    fi
    port="$(cat "$PG_DIR/port" 2>/dev/null || true)"
    if [ -z "$port" ] || port_in_use "$port"; then port="$(spare_port 55432)"; fi
    # Settings live in a file of their own, so nothing has to pass through pg_ctl's shell string.
    # TCP only: a socket under a deep data folder can exceed the 107-byte limit of socket paths.
    printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" "$port" |
      as_pg tee "$PG_DIR/data/hangar.conf" >/dev/null
    log "starting PostgreSQL on 127.0.0.1:$port"
    as_pg "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null ||
      die "PostgreSQL did not start, see $PG_DIR/postgres.log"
    echo "$port" >"$PG_DIR/port"
  fi
  local exists
  exists="$("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$LOCAL_DB_NAME'")"
  if [ "$exists" != "1" ]; then
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$LOCAL_DB_NAME"
  fi
  echo "postgresql://postgres@127.0.0.1:$port/$LOCAL_DB_NAME"
}

stop_local_postgres() {
  local bindir
  bindir="$(pg_bindir)" || return 0
  if pg_local_running "$bindir"; then
    log "stopping the local PostgreSQL ($PG_DIR)"
    as_pg "$bindir/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null
  fi
}

# --- Redis -----------------------------------------------------------------------------------

# The pid in our pid file, if that process is still a redis-server (pids get reused).
redis_local_pid() {
  local pid
  pid="$(cat "$REDIS_DIR/redis.pid" 2>/dev/null || true)"
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "redis-server" ] && echo "$pid"
}

start_local_redis() {
  local port pid
  if ! command -v redis-server >/dev/null 2>&1; then
    ensure_apt_packages redis-server:redis-server || die "redis-server is not installed"
  fi
  mkdir -p "$REDIS_DIR"
  pid="$(redis_local_pid)" || true
  port="$(cat "$REDIS_DIR/port" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ -n "$port" ] && redis_answers "redis://127.0.0.1:$port"; then
    log "reusing the local Redis on port $port ($REDIS_DIR)"
  else
    if [ -z "$port" ] || port_in_use "$port"; then port="$(spare_port 56379)"; fi
    log "starting Redis on 127.0.0.1:$port"
    # Throwaway by design: Redis holds queues and recent metrics only; Postgres is the truth and
    # the sweeper re-enqueues what a lost Redis forgot (ARCHITECTURE.md).
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >/dev/null
    echo "$port" >"$REDIS_DIR/port"
    local i
    for ((i = 0; i < 100; i++)); do
      redis_answers "redis://127.0.0.1:$port" && break
      sleep 0.1
    done
    redis_answers "redis://127.0.0.1:$port" || die "Redis did not start, see $REDIS_DIR/redis.log"
  fi
  echo "redis://127.0.0.1:$port"
}

stop_local_redis() {
  local pid i
  pid="$(redis_local_pid)" || return 0
  log "stopping the local Redis (pid $pid)"
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  [ ! -d "/proc/$pid" ] || die "Redis (pid $pid) did not stop"
  rm -f "$REDIS_DIR/redis.pid"
}

# --- commands --------------------------------------------------------------------------------

cmd_up() {
  local database_url="${DATABASE_URL:-$DEFAULT_DATABASE_URL}" redis_url="${REDIS_URL:-$DEFAULT_REDIS_URL}"
  if postgres_answers "$database_url"; then
    log "PostgreSQL answers at $(url_host_port "$database_url" 5432 | tr ' ' :)"
    # A URL the user gave names a database that exists; the default one may still need creating.
    if [ -z "${DATABASE_URL:-}" ] && command -v psql >/dev/null 2>&1; then
      if [ "$(psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$LOCAL_DB_NAME'" 2>/dev/null)" != "1" ]; then
        log "creating database $LOCAL_DB_NAME"
        createdb -h 127.0.0.1 -p 5432 -U postgres "$LOCAL_DB_NAME" ||
          log "could not create database $LOCAL_DB_NAME; create it or set DATABASE_URL"
      fi
    fi
  else
    log "no PostgreSQL at $(url_host_port "$database_url" 5432 | tr ' ' :); using a local one"
    database_url="$(start_local_postgres)"
  fi
  if redis_answers "$redis_url"; then
    log "Redis answers at $(url_host_port "$redis_url" 6379 | tr ' ' :)"
  else
    log "no Redis at $(url_host_port "$redis_url" 6379 | tr ' ' :); using a local one"
    redis_url="$(start_local_redis)"
  fi
  printf 'DATABASE_URL=%s\nREDIS_URL=%s\n' "$database_url" "$redis_url"
}

cmd_status() {
  local bindir pid
  bindir="$(pg_bindir)" || true
  if [ -n "$bindir" ] && pg_local_running "$bindir"; then
    echo "postgres: running on 127.0.0.1:$(cat "$PG_DIR/port") ($PG_DIR)"
  else
    echo "postgres: not running ($PG_DIR)"
  fi
  pid="$(redis_local_pid)" || true
  if [ -n "$pid" ]; then
    echo "redis: running on 127.0.0.1:$(cat "$REDIS_DIR/port") (pid $pid, $REDIS_DIR)"
  else
    echo "redis: not running ($REDIS_DIR)"
  fi
}

case "${1:-up}" in
  up) cmd_up ;;
  stop) stop_local_postgres; stop_local_redis ;;
  status) cmd_status ;;
  *) die "usage: scripts/services.sh [up|stop|status]" ;;
esac
