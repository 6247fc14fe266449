#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 30), seeded from
# fixtures/fuzz/TARGET. Inputs the fuzzer finds go to target/fuzz-corpus/TARGET, never into
# the fixtures; a crash leaves its input in fuzz/artifacts/TARGET, to be turned into a named
# regression test (tests/fuzz_checks.rs, or beside the parser). Every target runs even when
# one fails; the run fails if any did, and names them. Needs a nightly toolchain and
# cargo-fuzz (scripts/setup.sh installs it when nightly is present).
#
# DISKC_FUZZ_SEED (default 1) seeds libFuzzer's mutations, so that a run, CI's included, can
# be repeated here from the same corpus; 0 draws a new seed each run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-30}
seed=${DISKC_FUZZ_SEED:-1}
# The crate's dependencies first, on their own: a registry that cannot be reached is then
# reported as that, not as a failed build.
(cd fuzz && cargo +nightly fetch --locked)
# One build of every target first, so that each target's SECONDS are spent fuzzing.
cargo +nightly fuzz build
failed=()
logs=target/fuzz-logs
mkdir -p "$logs"
for target in $(cargo +nightly fuzz list); do
    corpus=target/fuzz-corpus/$target
    mkdir -p "$corpus"
    echo "fuzz: $target for ${seconds}s, seed $seed (log: $logs/$target.log)"
    if ! cargo +nightly fuzz run "$target" "$corpus" "fixtures/fuzz/$target" -- \
        -max_total_time="$seconds" -seed="$seed" -max_len=65536 -rss_limit_mb=1024 -timeout=10 \
        >"$logs/$target.log" 2>&1; then
        failed+=("$target")
    fi
    grep -E '^(Done|#[0-9]+ *DONE)' "$logs/$target.log" | tail -n 1 || true
done
if [ ${#failed[@]} -gt 0 ]; then
    # Each failed target's report, from the first line of libFuzzer's or the panic's report on
    # (the panic, the limit it hit, the input as base64), after every target's summary, so
    # the end of this script's output is what a reader needs.
    for target in "${failed[@]}"; do
        echo "fuzz: $target failed; its report:"
        awk '/panicked at|==[0-9]+==|ERROR: libFuzzer|out-of-memory|ALARM|SUMMARY|Test unit written|Base64/ { on = 1 }
             on' "$logs/$target.log" | awk '!/^ *#[0-9]+ 0x/ || /diskc/' | cut -c1-3000 | tail -n 60
        [ -n "$(awk '/panicked at|ERROR: libFuzzer|out-of-memory|ALARM/' "$logs/$target.log")" ] ||
            tail -n 20 "$logs/$target.log"
    done
    echo "fuzz: failed: ${failed[*]} (their inputs are in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a failure"
