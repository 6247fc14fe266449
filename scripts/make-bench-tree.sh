#!/usr/bin/env bash
# Makes the large tree the mkfs and convert benchmarks run on: a Debian bookworm root made
# with debootstrap from Debian's packages, with enough packages (compilers, Go, Rust, Node,
# Boost and kernel headers) to pass 1 GiB and 40k files. Downloaded packages are kept in
# $(dirname DIR)/debs so a rerun does not fetch them again. Idempotent: an existing complete tree is reused.
# Prints the tree's path.
#
#   scripts/make-bench-tree.sh [DIR]      (default /var/cache/diskc-bench/rootfs)
set -euo pipefail

DIR=${1:-/var/cache/diskc-bench/rootfs}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=build-essential,git,python3,python3-pip,perl,vim-nox,golang-go,nodejs,libboost-dev,curl,ca-certificates,rustc,linux-headers-amd64

if [ -e "$DIR/.diskc-bench-complete" ]; then
  echo "$DIR"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "make-bench-tree: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$(dirname "$DIR")"
tmp="$DIR.tmp"
rm -rf "$tmp"
log="$(dirname "$DIR")/debootstrap.log"
debs="$(dirname "$DIR")/debs"
mkdir -p "$debs"
debootstrap --variant=minbase --cache-dir="$debs" --include="$PACKAGES" bookworm "$tmp" "$MIRROR" >"$log" 2>&1 \
  || { echo "make-bench-tree: debootstrap failed, see $log" >&2; exit 1; }
rm -rf "$tmp"/var/cache/apt/archives/*.deb
bytes=$(du -sb "$tmp" | cut -f1)
files=$(find "$tmp" | wc -l)
if [ "$bytes" -lt $((1 << 30)) ] || [ "$files" -lt 40000 ]; then
  echo "make-bench-tree: tree has $bytes bytes and $files files; the benchmark wants >= 1 GiB and >= 40k" >&2
  exit 1
fi
touch "$tmp/.diskc-bench-complete"
rm -rf "$DIR"
mv "$tmp" "$DIR"
echo "$DIR"
