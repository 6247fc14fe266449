//! The OCI and Docker JSON documents (index, manifest, config, archive manifest.json): see checks/oci_json.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/mod.rs"]
#[allow(dead_code)]
mod checks;

fuzz_target!(|data: &[u8]| checks::oci_json::check(data));
