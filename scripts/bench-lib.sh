# shellcheck shell=bash
# Timing helpers shared by diskc's benchmark scripts (bench-convert.sh, bench-mkfs.sh,
# bench-dedup.sh, bench-boot.sh). Source it; it defines two functions and two tables:
#
#   bench_time LABEL CMD...
#       Runs CMD BENCH_RUNS times (default 1) and prints one line `LABEL seconds peak_rss_mib`:
#       the median wall time and the largest peak RSS over the runs, measured by GNU time
#       (`/usr/bin/time -f '%e %M'`). Before each run, untimed, it evals BENCH_PREPARE when set
#       (e.g. `BENCH_PREPARE='rm -rf out' bench_time ...` to start each run from scratch), then
#       syncs, so no earlier write is written back during the run.
#       A failing CMD prints `LABEL FAILED (exit N)` and returns N.
#       Peak RSS is that of the largest single process CMD ran (for `bash -c 'a | b'`, the
#       larger of a and b); work done inside a daemon, such as dockerd, is not counted.
#
#   bench_alternate LABEL_A LABEL_B CMD_A... -- CMD_B...
#       bench_time for two commands that are compared with each other, run in alternation
#       (A, B, A, B, ...) so that drift in a part both share reaches both alike: the Docker
#       daemon's own save time varies by a fifth from one run to the next here.
#
#   bench_ratio A B
#       Prints how the run labelled A compares with the run labelled B: A's time over B's
#       (and how many times faster or slower that is) and A's peak RSS over B's.
#
#   BENCH_SECONDS[LABEL], BENCH_RSS_MIB[LABEL]
#       What bench_time measured, for scripts that check goals.
#
# Labels are single words (no spaces), so the lines stay easy to parse.

declare -gA BENCH_SECONDS=()
declare -gA BENCH_RSS_MIB=()
BENCH_TIME_BIN=${BENCH_TIME_BIN:-/usr/bin/time}

_bench_header() {
  if [ -z "${_bench_header_done:-}" ]; then
    printf '%-36s %10s %13s\n' label seconds peak_rss_mib
    _bench_header_done=1
  fi
}

# _bench_once LABEL CMD...: one timed run (after BENCH_PREPARE); appends its seconds to
# _bench_seconds[LABEL] (space-separated) and raises _bench_rss_kib[LABEL] to its peak RSS.
declare -gA _bench_seconds=() _bench_rss_kib=()
_bench_once() {
  local label=$1 out status=0 line
  shift
  if [ -n "${BENCH_PREPARE:-}" ]; then
    eval "$BENCH_PREPARE"
  fi
  # What the preparation or the run before wrote (gigabytes, here) is written back now, not
  # during the timed run.
  sync
  out=$(mktemp)
  "$BENCH_TIME_BIN" -f '%e %M' -o "$out" "$@" || status=$?
  # The format line is GNU time's last (a note about a signal may come before it).
  line=$(tail -n 1 "$out")
  rm -f "$out"
  if [ "$status" -ne 0 ]; then
    printf '%-36s FAILED (exit %d)\n' "$label" "$status"
    return "$status"
  fi
  _bench_seconds[$label]+="${line% *} "
  [ "${line#* }" -gt "${_bench_rss_kib[$label]:-0}" ] && _bench_rss_kib[$label]=${line#* }
  return 0
}

# _bench_report LABEL: the median of LABEL's runs and its largest peak RSS.
_bench_report() {
  local label=$1 median
  median=$(tr ' ' '\n' <<<"${_bench_seconds[$label]}" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  BENCH_SECONDS[$label]=$median
  BENCH_RSS_MIB[$label]=$(awk -v k="${_bench_rss_kib[$label]}" 'BEGIN { printf "%.1f", k / 1024 }')
  printf '%-36s %10.2f %13.1f\n' "$label" "$median" "${BENCH_RSS_MIB[$label]}"
}

bench_time() {
  local label=$1 i
  shift
  [ -x "$BENCH_TIME_BIN" ] || { echo "bench: $BENCH_TIME_BIN missing (apt-get install time)" >&2; return 3; }
  _bench_header
  _bench_seconds[$label]="" _bench_rss_kib[$label]=0
  for ((i = 0; i < ${BENCH_RUNS:-1}; i++)); do
    _bench_once "$label" "$@" || return
  done
  _bench_report "$label"
}

bench_alternate() {
  local label_a=$1 label_b=$2 i arg in_b=0 cmd_a=() cmd_b=()
  shift 2
  for arg; do
    if [ "$in_b" = 0 ] && [ "$arg" = -- ]; then in_b=1; elif [ "$in_b" = 0 ]; then cmd_a+=("$arg"); else cmd_b+=("$arg"); fi
  done
  [ -x "$BENCH_TIME_BIN" ] || { echo "bench: $BENCH_TIME_BIN missing (apt-get install time)" >&2; return 3; }
  _bench_header
  _bench_seconds[$label_a]="" _bench_rss_kib[$label_a]=0 _bench_seconds[$label_b]="" _bench_rss_kib[$label_b]=0
  for ((i = 0; i < ${BENCH_RUNS:-1}; i++)); do
    _bench_once "$label_a" "${cmd_a[@]}" || return
    _bench_once "$label_b" "${cmd_b[@]}" || return
  done
  _bench_report "$label_a"
  _bench_report "$label_b"
}

bench_ratio() {
  local a=$1 b=$2
  if [ -z "${BENCH_SECONDS[$a]:-}" ] || [ -z "${BENCH_SECONDS[$b]:-}" ]; then
    printf 'ratio %s / %s: not measured\n' "$a" "$b"
    return 0
  fi
  awk -v a="$a" -v b="$b" -v ta="${BENCH_SECONDS[$a]}" -v tb="${BENCH_SECONDS[$b]}" \
    -v ra="${BENCH_RSS_MIB[$a]}" -v rb="${BENCH_RSS_MIB[$b]}" 'BEGIN {
      if (ta <= 0) ta = 0.01  # GNU time rounds to 10 ms
      if (tb <= 0) tb = 0.01
      speed = (ta <= tb) ? sprintf("%.2fx faster", tb / ta) : sprintf("%.2fx slower", ta / tb)
      printf "ratio %s / %s: time %.3f (%s), peak RSS %.2f\n", a, b, ta / tb, speed, (rb > 0 ? ra / rb : 0)
    }'
}
