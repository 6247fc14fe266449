//! The properties the structured fuzz targets check, shared with the stable test suite
//! (tests/fuzz_checks.rs), which runs them on every seed in fixtures/fuzz/, on the crashes
//! found so far and on random input, so that every `cargo test` covers the same parsers.
//! Each `check` takes any bytes and panics only where diskc is wrong.

pub mod bytes;
pub mod ext4_write;
pub mod layer_merge;
pub mod oci_json;
pub mod reference;
