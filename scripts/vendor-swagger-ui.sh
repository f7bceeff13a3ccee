#!/usr/bin/env bash
# Refreshes the Swagger UI files that `GET /docs` serves (embedded in the binary, never fetched at
# run time). They come from the npm registry's swagger-ui-dist package at the pinned version;
# the checksum guards against a changed tarball. Run it only to upgrade; the files are committed.
set -euo pipefail
VERSION=${SWAGGER_UI_VERSION:-5.35.0}
SHA256=${SWAGGER_UI_SHA256:-}
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/assets/vendor/swagger-ui"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null)
tarball="$work/swagger-ui-dist-$VERSION.tgz"
if [[ -n "$SHA256" ]]; then
  echo "$SHA256  $tarball" | sha256sum -c -
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
# The bundle's last line points at a source map we do not ship; drop it.
sed '/^\/\/# sourceMappingURL=/d' "$work/package/swagger-ui-bundle.js" >"$dest/swagger-ui-bundle.js"
sed '/sourceMappingURL=/d' "$work/package/swagger-ui.css" >"$dest/swagger-ui.css"
cp "$work/package/LICENSE" "$work/package/NOTICE" "$dest/"
echo "$VERSION" >"$dest/VERSION"
sha256sum "$tarball" | cut -d' ' -f1 >"$dest/TARBALL_SHA256"
echo "swagger-ui-dist $VERSION vendored into $dest"
