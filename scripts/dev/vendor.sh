#!/usr/bin/env bash
# Refreshes a browser library the binary embeds (never fetched at run time) from the npm
# registry, checked against a SHA-256 of its tarball: the one committed beside the files for a
# refresh of the same version, the one given for an upgrade (required: without it, nothing is
# written). The files are committed; run it only to refresh or upgrade.
#   bash scripts/dev/vendor.sh uplot                              # 1.6.32, the committed checksum
#   bash scripts/dev/vendor.sh swagger-ui 5.36.0 <sha256-of-the-tarball>
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
what=${1:?usage: vendor.sh uplot|swagger-ui [VERSION SHA256]}
case "$what" in
  uplot) package=uplot; dest="$root/assets/vendor/uplot" ;;
  swagger-ui) package=swagger-ui-dist; dest="$root/assets/vendor/swagger-ui" ;;
  *) echo "vendor.sh: unknown library '$what' (uplot or swagger-ui)" >&2; exit 2 ;;
esac
committed=$(cat "$dest/VERSION")
version=${2:-$committed}
if [ -n "${3:-}" ]; then
  sha256=$3
elif [ "$version" = "$committed" ]; then
  sha256=$(cat "$dest/TARBALL_SHA256")
else
  echo "vendor.sh: $package $version is not the committed $committed: give its tarball's SHA-256 as the third argument" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package@$version" >/dev/null)
tarball="$work/$package-$version.tgz"
echo "$sha256  $tarball" | sha256sum -c --quiet - || { echo "vendor.sh: $package $version's tarball does not match $sha256" >&2; exit 1; }
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
# The bundles' last line points at a source map we do not ship; drop it.
case "$what" in
  uplot)
    sed '/^\/\/# sourceMappingURL=/d' "$work/package/dist/uPlot.iife.min.js" >"$dest/uPlot.iife.min.js"
    cp "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/" ;;
  swagger-ui)
    sed '/^\/\/# sourceMappingURL=/d' "$work/package/swagger-ui-bundle.js" >"$dest/swagger-ui-bundle.js"
    sed '/sourceMappingURL=/d' "$work/package/swagger-ui.css" >"$dest/swagger-ui.css"
    cp "$work/package/LICENSE" "$work/package/NOTICE" "$dest/" ;;
esac
echo "$version" >"$dest/VERSION"
echo "$sha256" >"$dest/TARBALL_SHA256"
echo "$package $version vendored into $dest (tarball SHA-256 $sha256)"
