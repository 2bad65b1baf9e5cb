#!/usr/bin/env bash
# Hangar's main job (the README runs it as scripts/demo.sh): brings up a working single-host
# cluster (or N hosts with --hosts N, see below) from a fresh clone. Installs what is missing
# (Debian packages when root, npm deps), builds everything and the guest image, gets PostgreSQL
# and Redis (scripts/services.sh: the ones at DATABASE_URL / REDIS_URL when they answer, else
# local ones under the data folder), applies the migrations, starts the api, a worker and one
# local agent in the background (pid files and logs under $HANGAR_DATA_DIR/cluster/), creates
# the default project, an admin API key (printed once), the flavors and the default image, boots
# a demo VM through the api, and prints the URL, the key and the curl lines that create a VM.
# Run it again at any time: what runs is reused (or restarted when its build or configuration
# changed). scripts/down.sh stops it all.
#
#   bash scripts/up.sh [--hosts N] [--http-port N] [--grpc-port N] [--agent-port N]
#                      [--new-admin-key] [--no-demo]
#   bash scripts/up.sh --vm-only     the first demo: one guest through vmm-core only, no cluster
#
# --hosts N (2 to 32, root only) makes N hosts on this machine: one network namespace per host
# (host1 … hostN at 10.231.X.11 …, X chosen among the subnets nothing here uses), joined by veth
# pairs to a bridge in the root namespace that holds the api's gRPC address 10.231.X.1; one agent
# runs inside each namespace (its guests' bridge and taps too), with mTLS to the api and worker,
# and every host shares the storage folder $HANGAR_DATA_DIR/cluster/pools/shared. down.sh removes
# the namespaces, veths and bridge again. To change N, run down.sh first. See docs/adr/0044.
#
# Ports default to 8080 (HTTP), 7440 (AgentGateway) and 7443 (agent), or the ones the last run
# used, or free ones when those are taken; HANGAR_HTTP_PORT / HANGAR_GRPC_PORT work too.
# HANGAR_REDIS_PREFIX, HANGAR_LOG_LEVEL and the api's other variables pass through.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HANGAR_ROOT"

usage() { sed -n '2,/^set -euo/p' "$HANGAR_ROOT/scripts/up.sh" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { printf 'up: %s\n' "$*" >&2; exit 2; }

vm_only=no
hosts=1
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --vm-only) vm_only=yes ;;
    --hosts) hosts="${2:-}"; shift ;;
    --hosts=*) hosts="${1#--hosts=}" ;;
    --http-port | --grpc-port | --agent-port)
      [ $# -ge 2 ] || die "$1 needs a value"
      pass+=("$1" "$2"); shift ;;
    --http-port=* | --grpc-port=* | --agent-port=* | --new-admin-key | --no-demo) pass+=("$1") ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[[ "$hosts" =~ ^[0-9]+$ ]] || die "--hosts needs a number"
[ "$hosts" -ge 1 ] && [ "$hosts" -le 32 ] || die "--hosts: a number from 1 to 32"
if [ "$hosts" -gt 1 ]; then
  [ "$vm_only" = no ] || die "--vm-only boots one guest without a cluster: it takes no --hosts"
  [ "$(id -u)" -eq 0 ] || die "--hosts $hosts needs root: it creates network namespaces, veths and a bridge"
  # The cluster's CA and certificates (scripts/gen-certs.sh makes them the same way).
  ensure_apt_packages openssl:openssl
  pass+=(--hosts "$hosts")
fi

ensure_host_tools
# curl only runs the lines the summary asks to paste: not worth failing the set-up for.
ensure_apt_packages curl:curl || log "curl is missing: the printed curl lines need it"
ensure_node_deps
log "building the guest image"
bash scripts/build-guest-image.sh >/dev/null
build_all

if [ "$vm_only" = yes ]; then
  log "booting a demo guest through vmm-core"
  exec node scripts/demo.mjs
fi

# One up or down at a time per data folder. Children must not inherit the lock's descriptor
# (8>&-): a background process holding it would block every later run.
mkdir -p "$HANGAR_DATA_DIR/cluster"
exec 8>"$HANGAR_DATA_DIR/cluster/.lock"
if ! flock -n 8; then
  log "another up/down of $HANGAR_DATA_DIR/cluster is running; waiting for it"
  flock 8
fi

services="$(bash scripts/services.sh up 8>&-)"
while IFS='=' read -r key value; do
  case "$key" in DATABASE_URL | REDIS_URL) export "$key=$value" ;; esac
done <<<"$services"

node scripts/cluster/up.mjs "${pass[@]}" 8>&-
