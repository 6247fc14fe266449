#!/usr/bin/env bash
# Measures `diskc boot`: wall time from starting it to the guest program's first output
# line, and to its exit (the guest has powered off and QEMU has ended). Each IMAGE is one
# built image with a boot part: an OUTDIR of `diskc build`/`convert`, or an image in the
# store (id, prefix or name; its boot then includes exporting it from the store). The guest
# runs `echo first-line` instead of the image's CMD so that only booting is measured.
#
#   scripts/bench-boot.sh [-n RUNS] IMAGE...
#
# Prints one line per IMAGE: the median and the fastest run of both figures, in seconds.
set -euo pipefail

DISKC=${DISKC:-$(dirname "$0")/../target/release/diskc}
RUNS=5
if [ "${1:-}" = "-n" ]; then RUNS=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: $0 [-n RUNS] IMAGE..." >&2; exit 1; }
[ -x "$DISKC" ] || { echo "bench-boot: $DISKC missing (cargo build --release, or set DISKC)" >&2; exit 1; }

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
min() { sort -n | head -1; }
secs() { awk '{printf "%.2f", $1/1e9}'; }

printf '%-40s %8s %8s %8s %8s\n' image first-med first-min exit-med exit-min
for dir in "$@"; do
  firsts=(); exits=()
  for _ in $(seq "$RUNS"); do
    start=$(now); first=""
    while IFS= read -r line; do
      if [ -z "$first" ] && [ "$line" = first-line ]; then first=$(now); fi
    done < <("$DISKC" boot "$dir" --timeout 300 -- echo first-line)
    end=$(now)
    [ -n "$first" ] || { echo "bench-boot: $dir: no output from the guest" >&2; exit 1; }
    firsts+=($((first - start))); exits+=($((end - start)))
  done
  printf '%-40s %8s %8s %8s %8s\n' "$(basename "$dir")" \
    "$(printf '%s\n' "${firsts[@]}" | median | secs)" "$(printf '%s\n' "${firsts[@]}" | min | secs)" \
    "$(printf '%s\n' "${exits[@]}" | median | secs)" "$(printf '%s\n' "${exits[@]}" | min | secs)"
done
