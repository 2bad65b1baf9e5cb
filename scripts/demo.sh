#!/usr/bin/env bash
# Hangar's main job, as the README names it: the single-host cluster of scripts/up.sh (same
# arguments; `--vm-only` keeps the first demo, one guest through vmm-core without a cluster).
set -euo pipefail
exec bash "$(dirname "$0")/up.sh" "$@"
