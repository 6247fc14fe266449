#!/usr/bin/env bash
# Makes the local base images that examples and tests build FROM. There is no registry to
# pull from, so bases are imported: a busybox image from Debian's busybox-static, and a
# Debian image made with debootstrap. Idempotent: an image that exists is left alone.
#
#   scripts/make-base-images.sh [busybox] [debian]     (default: both)
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
CACHE=${DISKC_TEST_CACHE:-/var/cache/diskc-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUSYBOX_IMAGE=diskc-test/busybox:latest
DEBIAN_IMAGE=diskc-test/debian:bookworm
# A fixed time so that the imported layers are the same bytes on every machine.
EPOCH=1700000000

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

make_busybox() {
  have_image "$BUSYBOX_IMAGE" && return 0
  [ -x /bin/busybox ] || { echo "make-base-images: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root"/{bin,sbin,etc,tmp,root,home,proc,sys,dev,run,var/tmp,usr/bin,usr/sbin}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  tar --sort=name --mtime=@$EPOCH --owner=0 --group=0 --numeric-owner -C "$root" -cf - . \
    | "$DOCKER" import - "$BUSYBOX_IMAGE" >/dev/null
  echo "made $BUSYBOX_IMAGE"
}

make_debian() {
  have_image "$DEBIAN_IMAGE" && return 0
  mkdir -p "$CACHE"
  local tarball="$CACHE/debian-bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "make-base-images: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
    local root
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { echo "make-base-images: debootstrap failed, see $CACHE/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --sort=name --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  "$DOCKER" import "$tarball" "$DEBIAN_IMAGE" >/dev/null
  echo "made $DEBIAN_IMAGE"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(busybox debian)
for t in "${targets[@]}"; do
  case "$t" in
    busybox) make_busybox ;;
    debian) make_debian ;;
    *) echo "make-base-images: unknown image $t (busybox, debian)" >&2; exit 1 ;;
  esac
done
