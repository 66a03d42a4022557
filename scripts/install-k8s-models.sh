#!/usr/bin/env bash
# Install the JSON-schema validators of the custom kinds the operator creates (Gateway API
# HTTPRoute, cert-manager Certificate) into tools/node (git-ignored), for the builder tests.
# They come from the npm packages @kubernetes-models/*, generated from the projects' CRDs.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="$(pwd)/tools/node"
PACKAGES=(@kubernetes-models/gateway-api@2.0.0 @kubernetes-models/cert-manager@6.0.0)

if [ -d "$DEST/node_modules/@kubernetes-models/gateway-api" ] \
    && [ -d "$DEST/node_modules/@kubernetes-models/cert-manager" ] && [ "${FORCE:-}" != "1" ]; then
    echo "kubernetes-models already installed in $DEST"
    exit 0
fi
command -v npm >/dev/null || { echo "install-k8s-models: npm is required" >&2; exit 1; }
mkdir -p "$DEST"
[ -f "$DEST/package.json" ] || echo '{"private": true}' > "$DEST/package.json"
npm install --prefix "$DEST" --silent --no-audit --no-fund "${PACKAGES[@]}"
echo "installed ${PACKAGES[*]} into $DEST"
