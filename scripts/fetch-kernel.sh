#!/usr/bin/env bash
# Fetches Debian's cloud kernel for booting diskc images: downloads the package that
# linux-image-cloud-amd64 (a metapackage) depends on with `apt-get download` and unpacks it
# with `dpkg-deb -x` into DIR, installing nothing. Idempotent: a kernel already unpacked in
# DIR is reused. Prints the two settings `diskc build`/`convert`/`boot` read:
#
#   DISKC_KERNEL=DIR/boot/vmlinuz-<version>
#   DISKC_MODULES=DIR/lib/modules/<version>
#
#   scripts/fetch-kernel.sh [DIR]          (default /var/cache/diskc-kernel)
#   eval "$(scripts/fetch-kernel.sh)"      (to export them)
set -euo pipefail

DIR=${1:-/var/cache/diskc-kernel}
META=linux-image-cloud-amd64

# The versioned package the metapackage points at, e.g. linux-image-6.1.0-27-cloud-amd64.
pkg=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  echo "fetch-kernel: cannot resolve $META (run apt-get update?)" >&2
  exit 1
fi
version=${pkg#linux-image-}

if [ ! -s "$DIR/boot/vmlinuz-$version" ] || [ ! -s "$DIR/lib/modules/$version/modules.dep" ]; then
  mkdir -p "$DIR"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt downloads as the _apt user when it can write the directory.
  chown _apt "$work" 2>/dev/null || true
  (cd "$work" && apt-get download "$pkg" >/dev/null) \
    || { echo "fetch-kernel: apt-get download $pkg failed" >&2; exit 1; }
  dpkg-deb -x "$work"/"$pkg"_*.deb "$DIR"
  # The package ships no modules.dep (its postinst runs depmod); make it in DIR.
  if [ ! -s "$DIR/lib/modules/$version/modules.dep" ]; then
    depmod -b "$DIR" "$version"
  fi
fi

echo "DISKC_KERNEL=$DIR/boot/vmlinuz-$version"
echo "DISKC_MODULES=$DIR/lib/modules/$version"
