//! The ext4 writer, read back through ext4-view: see checks/ext4_write.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/mod.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| checks::ext4_write::check(data));
