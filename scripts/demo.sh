#!/usr/bin/env bash
# Hangar's main job. For now: build everything, prepare the guest image, boot a demo guest through
# vmm-core, print its marker line and status, and stop it cleanly.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HANGAR_ROOT"

ensure_host_tools
ensure_node_deps
log "building the guest image"
bash scripts/build-guest-image.sh >/dev/null
build_all
log "booting a demo guest through vmm-core"
exec node scripts/demo.mjs "$@"
