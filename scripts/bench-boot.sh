#!/usr/bin/env bash
# Measures `diskc boot`: wall time from starting it to the guest program's first output
# line, and to its exit (the guest has powered off and QEMU has ended). Each IMAGE is one
# built image with a boot part: an OUTDIR of `diskc build`/`convert`, or an image in the
# store (id, prefix or name; its boot then includes exporting it from the store). The guest
# runs `echo first-line` instead of the image's CMD so that only booting is measured.
#
# Each image boots with the network (the default) and with `--net none`, in alternation and
# in turns of which goes first (ABBA), so that a change in the machine's load and whatever
# one boot leaves the next affect both alike; the last column is what the network adds to
# the first line (difference of the medians).
#
# With --store-vs-outdir, each IMAGE must be an OUTDIR whose manifest.json names its stored
# id: the OUTDIR (its rootfs file) and the same image from the store (its rootfs over NBD
# from the store's chunks) boot in alternation, with the network, and one line per image
# gives both first-line medians and their ratio (store / OUTDIR).
#
#   scripts/bench-boot.sh [-n RUNS] IMAGE...
#   scripts/bench-boot.sh [-n RUNS] --store-vs-outdir OUTDIR...
#
# Prints two lines per IMAGE: the median and the fastest run of both figures, in seconds.
set -euo pipefail

DISKC=${DISKC:-$(dirname "$0")/../target/release/diskc}
RUNS=5
if [ "${1:-}" = "-n" ]; then RUNS=$2; shift 2; fi
COMPARE=0
if [ "${1:-}" = "--store-vs-outdir" ]; then COMPARE=1; shift; fi
[ $# -gt 0 ] || { echo "usage: $0 [-n RUNS] IMAGE..." >&2; exit 1; }
[ -x "$DISKC" ] || { echo "bench-boot: $DISKC missing (cargo build --release, or set DISKC)" >&2; exit 1; }

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
min() { sort -n | head -1; }
secs() { awk '{printf "%.2f", $1/1e9}'; }

# One boot of $1 with the options after it; sets $first and $end (ns since $start).
boot_once() {
  local image=$1; shift
  local start line
  start=$(now); first=""
  while IFS= read -r line; do
    if [ -z "$first" ] && [ "$line" = first-line ]; then first=$(($(now) - start)); fi
  done < <("$DISKC" boot "$image" --timeout 300 "$@" -- echo first-line)
  end=$(($(now) - start))
  [ -n "$first" ] || { echo "bench-boot: $image: no output from the guest" >&2; exit 1; }
}

if [ "$COMPARE" = 1 ]; then
  printf '%-34s %12s %12s %12s %12s %7s\n' image outdir-first store-first outdir-exit store-exit ratio
  for outdir in "$@"; do
    id=$(jq -r '.id // empty' "$outdir/manifest.json")
    [ -n "$id" ] || { echo "bench-boot: $outdir/manifest.json names no stored id" >&2; exit 1; }
    o_first=(); o_exit=(); s_first=(); s_exit=()
    for run in $(seq "$RUNS"); do
      if [ $((run % 2)) = 1 ]; then
        boot_once "$outdir"; o_first+=("$first"); o_exit+=("$end")
        boot_once "$id"; s_first+=("$first"); s_exit+=("$end")
      else
        boot_once "$id"; s_first+=("$first"); s_exit+=("$end")
        boot_once "$outdir"; o_first+=("$first"); o_exit+=("$end")
      fi
    done
    o_med=$(printf '%s\n' "${o_first[@]}" | median)
    s_med=$(printf '%s\n' "${s_first[@]}" | median)
    printf '%-34s %12s %12s %12s %12s %7s\n' "$(basename "$outdir")" "$(echo "$o_med" | secs)" \
      "$(echo "$s_med" | secs)" "$(printf '%s\n' "${o_exit[@]}" | median | secs)" \
      "$(printf '%s\n' "${s_exit[@]}" | median | secs)" "$(awk -v s="$s_med" -v o="$o_med" 'BEGIN { printf "%.2f", s / o }')"
  done
  exit 0
fi

printf '%-34s %-9s %9s %9s %9s %9s %9s\n' image net first-med first-min exit-med exit-min net-adds
for image in "$@"; do
  user_first=(); user_exit=(); none_first=(); none_exit=()
  for run in $(seq "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then
      boot_once "$image"; user_first+=("$first"); user_exit+=("$end")
      boot_once "$image" --net none; none_first+=("$first"); none_exit+=("$end")
    else
      boot_once "$image" --net none; none_first+=("$first"); none_exit+=("$end")
      boot_once "$image"; user_first+=("$first"); user_exit+=("$end")
    fi
  done
  name=$(basename "$image")
  user_med=$(printf '%s\n' "${user_first[@]}" | median)
  none_med=$(printf '%s\n' "${none_first[@]}" | median)
  printf '%-34s %-9s %9s %9s %9s %9s %9s\n' "$name" user "$(echo "$user_med" | secs)" \
    "$(printf '%s\n' "${user_first[@]}" | min | secs)" "$(printf '%s\n' "${user_exit[@]}" | median | secs)" \
    "$(printf '%s\n' "${user_exit[@]}" | min | secs)" "$(echo $((user_med - none_med)) | secs)"
  printf '%-34s %-9s %9s %9s %9s %9s\n' "$name" none "$(echo "$none_med" | secs)" \
    "$(printf '%s\n' "${none_first[@]}" | min | secs)" "$(printf '%s\n' "${none_exit[@]}" | median | secs)" \
    "$(printf '%s\n' "${none_exit[@]}" | min | secs)"
done
