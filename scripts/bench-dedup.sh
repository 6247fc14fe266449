#!/usr/bin/env bash
# How well the store deduplicates a family of images. Builds, from diskc-test/debian:bookworm,
# a base image of at least 500 MiB and seven variants on it — five that each add a different
# small app layer, one that rewrites a single 100 MiB file, one that deletes a directory —
# converts them all into one fresh store and prints, per image: its logical rootfs size, the
# bytes the store grew by, what the image's new layer adds (uncompressed, as Docker counts
# it), their ratio, and whether the growth meets the goal (≤ 1.1 × new + 2 MiB). Then the
# whole family: store size against the unique content (base + every new layer), goal ≤ 1.2×,
# and the time of a second convert of the base (a cache hit, with and without -o).
#
#   scripts/bench-dedup.sh [WORKDIR]     (default: target/bench-dedup; it is emptied first)
#
# Environment: DISKC (the binary; default target/release/diskc), DOCKER (/usr/bin/docker).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DISKC=${DISKC:-$ROOT/target/release/diskc}
DOCKER=${DOCKER:-/usr/bin/docker}
WORK=${1:-$ROOT/target/bench-dedup}
STORE=$WORK/store
PREFIX=diskc-bench/dedup
MIB=1048576

[ -x "$DISKC" ] || { echo "bench-dedup: $DISKC missing (cargo build --release, or set DISKC)" >&2; exit 1; }
"$ROOT/scripts/make-base-images.sh" debian >/dev/null
rm -rf "$WORK"
mkdir -p "$WORK/ctx" "$STORE"

# build NAME: builds $PREFIX-NAME from the Dockerfile on stdin (empty context).
build() {
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -t "$PREFIX-$1" -f - "$WORK/ctx" >/dev/null
}

# The base: Debian plus ~440 MiB of data shaped like an installed system: a few thousand
# small and medium files (half random, half text, so they compress like real ones), a
# 100 MiB file and a directory that a variant deletes.
build base <<'EOF'
FROM diskc-test/debian:bookworm
SHELL ["/bin/bash", "-c"]
RUN set -e; mkdir -p /opt/base/lib /opt/base/share /opt/base/removable; \
    fill() { head -c $(($2 / 2)) /dev/urandom > "$1"; yes "line of text $1" | head -c $(($2 - $2 / 2)) >> "$1"; }; \
    for i in $(seq 1 3000); do fill /opt/base/lib/f$i $(( (RANDOM % 64 + 1) * 1024 )); done; \
    for i in $(seq 1 60); do fill /opt/base/share/m$i $(( (RANDOM % 3 + 1) * 1048576 )); done; \
    for i in $(seq 1 400); do fill /opt/base/removable/r$i $(( (RANDOM % 96 + 1) * 1024 )); done; \
    head -c 100M /dev/urandom > /opt/base/big.bin; \
    head -c 80M /dev/urandom > /opt/base/share/blob.bin
EOF

for n in 1 2 3 4 5; do
  build "app$n" <<EOF
FROM $PREFIX-base
SHELL ["/bin/bash", "-c"]
RUN set -e; mkdir -p /srv/app$n; \
    for i in \$(seq 1 $((150 * n))); do head -c \$(( (RANDOM % 32 + 1) * 1024 )) /dev/urandom > /srv/app$n/f\$i; done
EOF
done
build bigchange <<EOF
FROM $PREFIX-base
RUN head -c 100M /dev/urandom > /opt/base/big.bin
EOF
build rmdir <<EOF
FROM $PREFIX-base
RUN rm -rf /opt/base/removable
EOF

store_bytes() { find "$STORE" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
# Uncompressed bytes of an image's top layer as Docker counts them; for the base, the whole image.
new_bytes() {
  if [ "$1" = base ]; then
    "$DOCKER" image inspect -f '{{.Size}}' "$PREFIX-base"
  else
    "$DOCKER" history --no-trunc --human=false --format '{{.Size}}' "$PREFIX-$1" | head -1
  fi
}
convert() {
  "$DISKC" convert "docker-daemon:$PREFIX-$1" -o "$WORK/out-$1" --store "$STORE" --json -q
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

printf '%-10s %12s %12s %12s %7s %7s  %s\n' image "size MiB" "grew MiB" "new MiB" ratio secs goal
unique=0
failed=0
for name in base app1 app2 app3 app4 app5 bigchange rmdir; do
  before=$(store_bytes)
  start=$(date +%s.%N)
  out=$(convert "$name")
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
  id=$(printf '%s' "$out" | sed -n 's/.*"id":"\([0-9a-f]\{64\}\)".*/\1/p')
  [ -n "$id" ] || { echo "bench-dedup: convert of $name printed no id: $out" >&2; exit 1; }
  [ "$name" != base ] || base_id=$id
  grew=$(( $(store_bytes) - before ))
  size=$(stat -c %s "$WORK/out-$name/rootfs.ext4")
  new=$(new_bytes "$name")
  unique=$((unique + new))
  ratio=$(awk -v g="$grew" -v n="$new" 'BEGIN {if (n > 0) printf "%.2f", g / n; else print "-"}')
  goal=ok
  if [ "$name" != base ] && [ "$grew" -gt $(( new * 11 / 10 + 2 * MIB )) ]; then goal=MISSED; failed=1; fi
  printf '%-10s %12s %12s %12s %7s %7s  %s\n' "$name" "$(mib "$size")" "$(mib "$grew")" "$(mib "$new")" "$ratio" "$secs" "$goal"
done

total=$(store_bytes)
family_goal=ok
[ "$total" -le $(( unique * 12 / 10 )) ] || { family_goal=MISSED; failed=1; }
printf '\nfamily: store %s MiB, unique content %s MiB, ratio %s (goal <= 1.20): %s\n' \
  "$(mib "$total")" "$(mib "$unique")" "$(awk -v t="$total" -v u="$unique" 'BEGIN {printf "%.2f", t / u}')" "$family_goal"

# A repeat is answered from the cache: timed without -o (which would export the rootfs), by
# diskc's own clock and with process start, and once with -o.
start=$(date +%s%N)
again=$("$DISKC" convert "docker-daemon:$PREFIX-base" --store "$STORE" --json -q)
wall=$(( ($(date +%s%N) - start) / 1000000 ))
own=$(printf '%s' "$again" | sed -n 's/.*"total":\([0-9.e-]*\).*/\1/p' | awk '{printf "%.1f", $1 * 1000}')
case $again in
  *'"cache_hit":true'*"\"id\":\"$base_id\""* | *"\"id\":\"$base_id\""*'"cache_hit":true'*) ;;
  *) echo "bench-dedup: the second convert of base was not a cache hit with id $base_id: $again" >&2; failed=1 ;;
esac
echo "second convert of base: cache hit, ${own} ms in diskc, ${wall} ms with process start, id ${base_id:0:12}"
start=$(date +%s%N)
convert base >/dev/null
echo "the same with -o (exports the $(mib "$(stat -c %s "$WORK/out-base/rootfs.ext4")") MiB rootfs): $(( ($(date +%s%N) - start) / 1000000 )) ms"
"$DISKC" verify --store "$STORE" -q || { echo "bench-dedup: verify found damage" >&2; exit 2; }
exit $failed
