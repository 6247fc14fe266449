#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 30), seeded from
# fixtures/fuzz/TARGET. Inputs the fuzzer finds go to target/fuzz-corpus/TARGET, never into
# the fixtures; a crash stops the run and leaves its input in fuzz/artifacts/TARGET, to be
# turned into a named regression test (tests/fuzz_checks.rs, or beside the parser). Needs a
# nightly toolchain and cargo-fuzz (scripts/setup.sh installs it when nightly is present).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-30}
# One build of every target first, so that each target's SECONDS are spent fuzzing.
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    corpus=target/fuzz-corpus/$target
    mkdir -p "$corpus"
    echo "fuzz: $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "$corpus" "fixtures/fuzz/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=1024 -timeout=10
done
