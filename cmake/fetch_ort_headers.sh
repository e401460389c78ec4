#!/usr/bin/env bash
# Fetch the onnxruntime C/C++ headers (Debian package libonnxruntime-dev, suite trixie) into
# DEST_DIR/include without touching the system: apt runs with a private sources.list, state
# dir, status file and cache, and the package is only unpacked (dpkg-deb -x), never installed.
# The download is authenticated by apt (Release signature checked against the Debian archive
# keyring, .deb checked against the signed index hashes).
#
# Usage: fetch_ort_headers.sh DEST_DIR
# Result: DEST_DIR/include/onnxruntime_c_api.h, onnxruntime_lite_custom_op.h, ...
#         DEST_DIR/SOURCE (which .deb they came from), DEST_DIR/copyright
#
# Environment (all optional):
#   N6ONNX_DEBIAN_MIRROR   default http://deb.debian.org/debian
#   N6ONNX_DEBIAN_SUITE    default trixie
#   N6ONNX_DEBIAN_KEYRING  default /usr/share/keyrings/debian-archive-keyring.gpg
set -euo pipefail

dest=${1:?usage: fetch_ort_headers.sh DEST_DIR}
mirror=${N6ONNX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${N6ONNX_DEBIAN_SUITE:-trixie}
keyring=${N6ONNX_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
pkg=libonnxruntime-dev

die() {
  {
    echo "fetch_ort_headers: ERROR: $*"
    echo "fetch_ort_headers: could not download the onnxruntime headers ($pkg from Debian $suite)."
    echo "fetch_ort_headers: Set ONNXRUNTIME_INCLUDE_DIR (environment variable or -DONNXRUNTIME_INCLUDE_DIR=...)"
    echo "fetch_ort_headers: to a directory containing onnxruntime_c_api.h and onnxruntime_lite_custom_op.h"
    echo "fetch_ort_headers: (onnxruntime >= 1.17) to build without downloading anything."
  } >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || die "apt-get not found (this fetcher needs a Debian/Ubuntu host)"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"
[ -r "$keyring" ] || die "Debian archive keyring $keyring not readable (apt-get install debian-archive-keyring)"
arch=$(dpkg --print-architecture 2>/dev/null) || die "dpkg --print-architecture failed"

mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
work=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/etc" "$work/deb" "$work/x"
: >"$work/state/status"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/etc/sources.list"

apt_opts=(
  -q
  -o "Dir::Etc::SourceList=$work/etc/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State=$work/state"
  -o "Dir::State::status=$work/state/status"
  -o "Dir::Cache=$work/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Architecture=$arch"
  -o "APT::Architectures=$arch"
  -o "Acquire::Languages=none"
)
# As root apt drops to the _apt user for downloads, which cannot write our private dirs
# (harmless warning); download as root instead.
if [ "$(id -u)" = 0 ]; then apt_opts+=(-o "APT::Sandbox::User=root"); fi

echo "fetch_ort_headers: downloading $pkg ($suite, $arch) from $mirror"
if ! apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1; then
  cat "$work/update.log" >&2
  die "apt-get update (private config, suite $suite) failed"
fi
if grep -qE '^(W|E): ' "$work/update.log"; then grep -E '^(W|E): ' "$work/update.log" >&2 || true; fi
if ! (cd "$work/deb" && apt-get "${apt_opts[@]}" download "$pkg") >"$work/download.log" 2>&1; then
  cat "$work/download.log" >&2
  die "apt-get download $pkg failed"
fi

debs=("$work"/deb/"$pkg"_*.deb)
[ -f "${debs[0]}" ] || die "no $pkg .deb was downloaded"
dpkg-deb -x "${debs[0]}" "$work/x" || die "dpkg-deb -x ${debs[0]} failed"

inc="$work/x/usr/include/onnxruntime"
for h in onnxruntime_c_api.h onnxruntime_cxx_api.h onnxruntime_lite_custom_op.h; do
  [ -f "$inc/$h" ] || die "$(basename "${debs[0]}") does not contain $h"
done

# Publish atomically-ish: headers appear under DEST_DIR/include only once complete.
rm -rf "$dest/include" "$dest/include.new"
mv "$inc" "$dest/include.new"
cp -f "$work/x/usr/share/doc/$pkg/copyright" "$dest/copyright" 2>/dev/null || true
basename "${debs[0]}" >"$dest/SOURCE"
mv "$dest/include.new" "$dest/include"
echo "fetch_ort_headers: headers from $(cat "$dest/SOURCE") in $dest/include"
