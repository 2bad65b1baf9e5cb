#!/usr/bin/env bash
# Hangar's main job, as the README names it: the cluster of scripts/up.sh (same arguments:
# one host by default, `--hosts N` for N hosts in network namespaces on this machine; `--vm-only`
# keeps the first demo, one guest through vmm-core without a cluster).
set -euo pipefail
exec bash "$(dirname "$0")/up.sh" "$@"
