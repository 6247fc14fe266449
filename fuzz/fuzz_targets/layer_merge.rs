//! The layer merge against a small model applier: see checks/layer_merge.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/mod.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| checks::layer_merge::check(data));
