#!/usr/bin/env bash
# Runs every check and test of Hangar. Installs what is missing first (npm deps; Debian packages
# when root). Usage: bash scripts/test.sh [vitest filters...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HANGAR_ROOT"

ensure_host_tools
ensure_node_deps
log "building the guest image"
bash scripts/build-guest-image.sh >/dev/null
build_all

log "type-checking tests and benchmarks"
node_modules/.bin/tsc -p tsconfig.json --noEmit
log "linting (Biome) and checking the protos (buf)"
node_modules/.bin/biome check .
npm run --silent -w @hangar/proto lint:proto

log "running tests"
report="$(mktemp -t hangar-vitest-XXXXXX.json)"
trap 'rm -f "$report"' EXIT
set +e
node_modules/.bin/vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
status=$?
set -e
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed`);
' "$report" || true
exit "$status"
