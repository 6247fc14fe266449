#!/usr/bin/env bash
# diskc's quick start, on a Debian or Ubuntu machine: sets up what is missing
# (scripts/setup.sh), builds diskc, compiles examples/hello (a Dockerfile) into a bootable VM
# image with `diskc build`, boots it under QEMU with `diskc boot`, and checks that the VM
# printed the example's greeting — the first line the same image prints under `docker run`.
#
#   scripts/quickstart.sh
#
# Environment: DISKC_QUICKSTART_OUT (default target/quickstart) is where the image goes;
# QUICKSTART_EXPECT replaces the expected greeting.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

PHASES=()
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
record() { PHASES+=("$(printf '%-8s %7ss  %s' "$1" "$2" "$3")"); }
die() { echo "quickstart: $*" >&2; exit 1; }
started=$(now)

# The example builds FROM the busybox base; the Debian base is for the tests only.
export DISKC_BASE_IMAGES=${DISKC_BASE_IMAGES:-busybox}
t=$(now)
# shellcheck source=scripts/setup.sh
. "$REPO/scripts/setup.sh"
record setup "$(elapsed "$t")" ok

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${DISKC_QUICKSTART_OUT:-$TARGET/quickstart}
DOCKER=/usr/bin/docker

t=$(now)
cargo build --locked --release
record cargo "$(elapsed "$t")" "$TARGET/release/diskc"

# `diskc build` talks to the Docker daemon: a user outside the docker group goes through sudo.
diskc=("$TARGET/release/diskc")
docker=("$DOCKER")
if [ "$(id -u)" -ne 0 ] && ! "$DOCKER" info >/dev/null 2>&1; then
  diskc=(sudo -E "${diskc[@]}")
  docker=(sudo "$DOCKER")
fi

rm -rf "$OUT/hello"
mkdir -p "$OUT"
t=$(now)
"${diskc[@]}" build examples/hello -t hello -o "$OUT/hello"
record build "$(elapsed "$t")" "$OUT/hello"

if [ -n "${QUICKSTART_EXPECT:-}" ]; then
  expected=$QUICKSTART_EXPECT
else
  expected=$("${docker[@]}" run --rm hello | awk 'NF && !seen { print; seen = 1 }') \
    || die "docker run hello failed: cannot learn the greeting to expect"
fi
[ -n "$expected" ] || die "the hello image printed nothing under docker run"

t=$(now)
set +e
"${diskc[@]}" boot "$OUT/hello" | tee "$OUT/hello-boot.log"
boot_status=${PIPESTATUS[0]}
set -e
record boot "$(elapsed "$t")" "exit status $boot_status (console: $OUT/hello-boot.log)"

echo
echo "quickstart: phases (total $(elapsed "$started")s)"
for line in "${PHASES[@]}"; do echo "  $line"; done
[ "$boot_status" -eq 0 ] || die "diskc boot exited $boot_status"
grep -qF -- "$expected" "$OUT/hello-boot.log" \
  || die "the VM's console lacks the greeting \"$expected\" (see $OUT/hello-boot.log)"
echo "quickstart: the VM printed \"$expected\" — it works."
echo "quickstart: the image is in $OUT/hello; boot it again with: $TARGET/release/diskc boot $OUT/hello"
