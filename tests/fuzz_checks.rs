//! The fuzz targets' properties on stable, in every test run (issue 11): each target's check
//! (fuzz/checks/) on every seed of its corpus in fixtures/fuzz/, on the inputs the fuzzer
//! found crashes with (named regression tests below), and on seeds mutated at random.

use std::path::PathBuf;

use proptest::prelude::*;

#[path = "../fuzz/checks/mod.rs"]
mod checks;

/// The seed corpus of a fuzz target; a target without seeds is a mistake.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz").join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert!(!out.is_empty(), "{} holds no seeds", dir.display());
    out.sort();
    out
}

fn check_seeds(target: &str, check: fn(&[u8])) {
    for (path, bytes) in seeds(target) {
        let result = std::panic::catch_unwind(|| check(&bytes));
        assert!(result.is_ok(), "seed {} fails its check", path.display());
    }
}

#[test]
fn oci_json_seeds_pass() {
    check_seeds("oci_json", checks::oci_json::check);
}

#[test]
fn reference_seeds_pass() {
    check_seeds("reference", checks::reference::check);
}

#[test]
fn layer_merge_seeds_pass() {
    check_seeds("layer_merge", checks::layer_merge::check);
}

#[test]
fn ext4_write_seeds_pass() {
    check_seeds("ext4_write", checks::ext4_write::check);
}

/// A seed of `target` with a few bytes overwritten, inserted or cut: what a fuzzer would try
/// first.
fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = seeds(target).into_iter().map(|(_, b)| b).collect();
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8);
    (prop::sample::select(seeds), edits).prop_map(|(mut bytes, edits)| {
        for (at, byte, how) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, byte),
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn oci_json_mutated(data in mutated("oci_json")) {
        checks::oci_json::check(&data);
    }

    #[test]
    fn reference_mutated(data in mutated("reference")) {
        checks::reference::check(&data);
    }

    #[test]
    fn layer_merge_random(data in prop::collection::vec(any::<u8>(), 0..400)) {
        checks::layer_merge::check(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ext4_write_random(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        checks::ext4_write::check(&data);
    }
}
