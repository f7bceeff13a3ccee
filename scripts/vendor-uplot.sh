#!/usr/bin/env bash
# Refreshes the uPlot files that `GET /lab` serves (embedded in the binary, never fetched at run
# time): the panel's charts. They come from the npm registry's uplot package at the pinned
# version; the checksum guards against a changed tarball. Run it only to upgrade; the files are
# committed.
set -euo pipefail
VERSION=${UPLOT_VERSION:-1.6.32}
SHA256=${UPLOT_SHA256:-}
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/assets/vendor/uplot"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null)
tarball="$work/uplot-$VERSION.tgz"
if [[ -n "$SHA256" ]]; then
  echo "$SHA256  $tarball" | sha256sum -c -
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
sed '/^\/\/# sourceMappingURL=/d' "$work/package/dist/uPlot.iife.min.js" >"$dest/uPlot.iife.min.js"
cp "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/"
echo "$VERSION" >"$dest/VERSION"
sha256sum "$tarball" | cut -d' ' -f1 >"$dest/TARBALL_SHA256"
echo "uplot $VERSION vendored into $dest"
