#!/usr/bin/env bash
# Benchmark of `diskc build` when a Dockerfile's last line changes (issue 16): the bench image
# of scripts/bench-convert.sh (diskc-bench/convert, 12 layers, 2.5 GiB) plus one RUN line, a
# new one each run, so that BuildKit builds a new top layer and nothing else.
#
#   diskc-build-cold         diskc build into a fresh store (every layer read)
#   diskc-build-incremental  diskc build into a store that built the previous line (the twelve
#                            lower layers saved): goal, its conversion <= 10% of a cold one's
#   docker-build+save        docker build, then docker save > /dev/null: what a peer starts from
#
# Runs alternate (incremental, cold, docker) BENCH_RUNS times (default 2); the script prints
# each run's wall time and conversion time (`timings.total` in `--json`), the medians, and the
# ratio of the conversions. A cold and an incremental build of the same line must give the
# same image id.
#
#   scripts/bench-build.sh          (as root, after scripts/bench-convert.sh built the image)
#
# Environment: DISKC (a diskc binary; default: cargo build --release), BENCH_RUNS, BENCH_WORK
# (scratch space; default target/bench-build).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DOCKER=/usr/bin/docker
IMAGE=diskc-bench/convert:latest
RUNS=${BENCH_RUNS:-2}
WORK=${BENCH_WORK:-$REPO/target/bench-build}

say() { printf 'bench-build: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for tool in jq "$DOCKER"; do command -v "$tool" >/dev/null || die "$tool missing: run scripts/setup.sh"; done
"$DOCKER" info >/dev/null 2>&1 || die "the Docker daemon does not answer: run scripts/setup.sh"
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "$IMAGE missing: run scripts/bench-convert.sh first"
if [ -z "${DISKC:-}" ]; then
  say "building diskc (release)"
  cargo build --locked --release >&2
  DISKC=${CARGO_TARGET_DIR:-$REPO/target}/release/diskc
fi

rm -rf "$WORK"
mkdir -p "$WORK/context"
context=$WORK/context
line=0
# Writes a Dockerfile whose last line is new.
next_line() {
  line=$((line + 1))
  printf 'FROM %s\nRUN echo "%s %s" > /srv/line\n' "$IMAGE" "$$" "$line" >"$context/Dockerfile"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# diskc build into STORE of the current Dockerfile: prints "WALL CONVERSION ID".
diskc_build() {
  local store=$1 started out
  sync
  started=$(now)
  out=$(DISKC_STORE="$store" "$DISKC" --json build "$context" 2>"$WORK/build.err") ||
    die "diskc build failed: $(tail -n 1 "$WORK/build.err")"
  echo "$(since "$started") $(jq -r '.timings.total' <<<"$out") $(jq -r '.id' <<<"$out")"
}

# The store the incremental builds go to: it built the line before each one.
next_line
diskc_build "$WORK/warm" >/dev/null
cold_conv=() incr_conv=() cold_wall=() incr_wall=() docker_wall=()
same=yes
for run in $(seq "$RUNS"); do
  next_line
  # The incremental build first: its wall time includes BuildKit running the new line; the
  # cold build of the same line that follows finds it in BuildKit's cache.
  result=$(diskc_build "$WORK/warm")
  read -r wall conv warm_id <<<"$result"
  incr_wall+=("$wall") incr_conv+=("$conv")
  rm -rf "$WORK/cold"
  result=$(diskc_build "$WORK/cold")
  read -r wall conv cold_id <<<"$result"
  cold_wall+=("$wall") cold_conv+=("$conv")
  [ "$cold_id" = "$warm_id" ] || same=NO
  echo "run $run: incremental ${incr_wall[-1]} s (conversion ${incr_conv[-1]} s), cold ${cold_wall[-1]} s (conversion ${cold_conv[-1]} s), ids $([ "$cold_id" = "$warm_id" ] && echo equal || echo DIFFER)"
  next_line
  sync
  started=$(now)
  "$DOCKER" build -q -t diskc-bench/build-next "$context" >/dev/null
  "$DOCKER" save diskc-bench/build-next >/dev/null
  docker_wall+=("$(since "$started")")
  echo "run $run: docker build + docker save ${docker_wall[-1]} s"
done
"$DOCKER" image rm diskc-bench/build-next >/dev/null 2>&1 || true

cold=$(echo "${cold_conv[*]}" | median)
incr=$(echo "${incr_conv[*]}" | median)
echo
echo "# medians of $RUNS runs"
echo "  diskc build, cold:        $(echo "${cold_wall[*]}" | median) s (conversion $cold s)"
echo "  diskc build, incremental: $(echo "${incr_wall[*]}" | median) s (conversion $incr s)"
echo "  docker build + save:      $(echo "${docker_wall[*]}" | median) s"
ratio=$(awk -v a="$incr" -v b="$cold" 'BEGIN { printf "%.3f", a / b }')
echo "  incremental / cold conversion: $ratio"
echo
echo "# goals (issue 16)"
if awk -v r="$ratio" 'BEGIN { exit !(r <= 0.1) }'; then verdict=met; else verdict="NOT met"; fi
echo "  incremental conversion <= 10% of a cold one: $verdict"
echo "  incremental image id equal to the cold build's: $same"
rm -rf "$WORK"
[ "$same" = yes ]
