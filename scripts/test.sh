#!/usr/bin/env bash
# Runs every test of diskc on a Debian or Ubuntu machine: sets up what is missing
# (scripts/setup.sh: packages, toolchain, dockerd, loop devices, kernel, base images), builds
# every target, then runs the unit, integration and doc tests, and prints how long each phase
# took. Exits nonzero when any phase or any test fails. CI runs it through .ci/run.
#
#   scripts/test.sh [ARGS...]      ARGS go to `cargo test` (e.g. a test name filter)
#
# Tests that need Docker, root or QEMU are ordinary tests here: the setup provides those parts,
# and a missing part makes the test fail, not skip. Not root: the test binaries run via sudo.
#
# Environment: RUST_TEST_THREADS (default: the number of cores) sets how many tests of one
# binary run at once; binaries run one after another. CARGO_TARGET_DIR is honoured.
# DISKC_FUZZ_SECONDS (default 30) bounds each fuzz target, run when a nightly toolchain is present.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

PHASES=()
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
record() { PHASES+=("$(printf '%-8s %7ss  %s' "$1" "$2" "$3")"); }

started=$(now)

t=$(now)
# shellcheck source=scripts/setup.sh
. "$REPO/scripts/setup.sh"
record setup "$(elapsed "$t")" ok

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
# Tests and the tools they run write images of several GiB; keep them on the target dir's disk
# (where tests/common puts its temp dirs too), never on a small or memory-backed /tmp.
export TMPDIR="$TARGET/tmp"
# Not root: the previous run's tests ran via sudo (below) and left root-owned files.
if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
"${as_root[@]}" rm -rf --one-file-system "$TMPDIR" "$TARGET/test-tmp" 2>/dev/null \
  || echo "test: could not clear old temp files under $TARGET (a test mount left behind?)" >&2
mkdir -p "$TMPDIR"

# One test binary runs at a time; within it, one test per core: the heavy tests (QEMU under
# TCG, BuildKit builds, image writes) are CPU-bound, so more threads only stretch each test.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-$(nproc)}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if [ ${#as_root[@]} -gt 0 ]; then
  # Tests mount images and talk to the root-owned Docker socket: run the binaries as root.
  host=$(rustc -vV | awk '/^host:/ { print $2 }')
  runner_var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$host")_RUNNER"
  export "$runner_var=sudo -E"
fi

status=0

t=$(now)
if cargo build --locked --all-targets; then
  record build "$(elapsed "$t")" ok
else
  record build "$(elapsed "$t")" FAILED
  status=1
fi

passed=0
failed=0
if [ "$status" -eq 0 ]; then
  log="$TARGET/test-output.log"
  t=$(now)
  set +e
  cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log"
  test_status=${PIPESTATUS[0]}
  set -e
  read -r passed failed < <(awk '
    /^test result:/ {
      for (i = 1; i <= NF; i++) {
        if ($(i + 1) ~ /^passed;?$/) p += $i
        if ($(i + 1) ~ /^failed;?$/) f += $i
      }
    }
    END { printf "%d %d\n", p, f }' "$log")
  if [ "$test_status" -eq 0 ]; then
    record test "$(elapsed "$t")" "ok (log: $log)"
  else
    record test "$(elapsed "$t")" "FAILED, cargo exited $test_status (log: $log)"
    status=1
  fi
else
  record test 0.0 "not run: the build failed"
fi

# The fuzz targets, each for a bounded time, wherever a nightly toolchain is at hand (setup
# installs cargo-fuzz then; scripts/fuzz.sh); the property tests above cover the same
# parsers on stable. Without nightly the phase list says that fuzzing did not run.
if [ "$status" -ne 0 ]; then
  record fuzz 0.0 "not run: an earlier phase failed"
elif ! cargo +nightly --version >/dev/null 2>&1; then
  record fuzz 0.0 "not run: no nightly toolchain"
else
  t=$(now)
  if scripts/fuzz.sh "${DISKC_FUZZ_SECONDS:-30}" >"$TARGET/fuzz-output.log" 2>&1; then
    record fuzz "$(elapsed "$t")" "ok (log: $TARGET/fuzz-output.log)"
  else
    record fuzz "$(elapsed "$t")" "FAILED (log: $TARGET/fuzz-output.log)"
    status=1
    # What CI keeps is this script's output: the fuzzer's report (the failing target, the
    # panic or limit it hit, the input as base64) must be in it, not only in the log.
    echo "test: the fuzz phase failed; its report:"
    if grep -q '^fuzz: .* failed; its report:' "$TARGET/fuzz-output.log"; then
      sed -n '/^fuzz: .* failed; its report:/,$p' "$TARGET/fuzz-output.log" | tail -n 200
    else
      tail -n 60 "$TARGET/fuzz-output.log"
    fi
  fi
fi

echo
echo "test: phases (total $(elapsed "$started")s)"
for line in "${PHASES[@]}"; do echo "  $line"; done
if [ -s "${log:-}" ]; then
  # Where the test time went: each test binary's own "finished in", slowest first.
  echo "test: binaries, slowest first"
  awk '
    /^ *Running / { name = $2 == "unittests" ? $3 : $2 }
    /^ *Doc-tests / { name = "doc-tests " $2 }
    /^test result:/ { t = $NF; sub(/s$/, "", t); printf "  %8.1fs  %s\n", t, name }' "$log" \
    | sort -rn | head -n 15
fi
echo "tests: $passed passed, $failed failed"
exit "$status"
