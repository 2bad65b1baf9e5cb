#!/usr/bin/env bash
# Makes the cluster's mTLS certificates (cluster CA, one certificate per agent host, the control
# plane's server certificate) with Debian's openssl. Wraps apps/agent/src/tls/certs-cli.ts.
#   bash scripts/gen-certs.sh ca --dir /etc/hangar/pki
#   bash scripts/gen-certs.sh host --ca-dir /etc/hangar/pki --name hv1 --out /etc/hangar/tls
#   bash scripts/gen-certs.sh control-plane --ca-dir /etc/hangar/pki --out /etc/hangar/api-tls --dns api.example
# Run without arguments for the full usage.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v openssl >/dev/null 2>&1; then
  ensure_apt_packages openssl:openssl
fi
cli="$HANGAR_ROOT/apps/agent/dist/tls/certs-cli.js"
if [ ! -f "$cli" ]; then
  build_all >/dev/null
fi
exec node "$cli" "$@"
