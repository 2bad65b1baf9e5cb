#!/usr/bin/env bash
# Stops what scripts/up.sh (scripts/demo.sh) started under $HANGAR_DATA_DIR/cluster/, by the
# pids it recorded: first the agents' guests through the api (graceful, then forced; they stay
# STOPPED until started again), then the agents, the worker and the api, then the local
# PostgreSQL and Redis that scripts/services.sh started under the data folder (never servers it
# only used). A multi-host cluster (up.sh --hosts N) also loses its hosts: guests the api could
# not stop are killed by their pid files, and the namespaces, veths and bridge up.sh made are
# removed — also after an up that failed or was killed. Data stays on disk; scripts/up.sh brings
# it all back. See docs/adr/0040 and 0044.
#
#   bash scripts/down.sh [--keep-guests] [--keep-services]
#
# --keep-guests leaves guests running (and a multi-host cluster's namespaces: the next up
# re-adopts them); --keep-services leaves the local PostgreSQL and Redis running.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HANGAR_ROOT"

keep_services=no
pass=()
for arg in "$@"; do
  case "$arg" in
    --keep-guests) pass+=("$arg") ;;
    --keep-services) keep_services=yes ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) printf 'down: unknown argument: %s\n' "$arg" >&2; exit 2 ;;
  esac
done

mkdir -p "$HANGAR_DATA_DIR/cluster"
exec 8>"$HANGAR_DATA_DIR/cluster/.lock"
if ! flock -n 8; then
  log "another up/down of $HANGAR_DATA_DIR/cluster is running; waiting for it"
  flock 8
fi

node scripts/cluster/down.mjs "${pass[@]}" 8>&-
if [ "$keep_services" = no ]; then
  bash scripts/services.sh stop 8>&-
fi
log "stopped"
