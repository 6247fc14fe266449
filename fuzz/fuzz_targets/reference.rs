//! Image references (the SOURCE argument) and digests: see checks/reference.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/mod.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| checks::reference::check(data));
