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
for target in $(cargo +nightly fuzz list); do
    corpus=target/fuzz-corpus/$target
    mkdir -p "$corpus"
    echo "fuzz: $target for ${seconds}s, seed $seed"
    if ! cargo +nightly fuzz run "$target" "$corpus" "fixtures/fuzz/$target" -- \
        -max_total_time="$seconds" -seed="$seed" -max_len=65536 -rss_limit_mb=1024 -timeout=10; then
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (their inputs are in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a failure"
