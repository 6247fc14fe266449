//! A layer blob from any bytes: compression sniffed and undone (gzip, zstd or none), the tar
//! parsed, file data spooled. An error is fine; a panic is a bug.
#![no_main]

use diskc::layer::{index_layer, LayerExpect, SpoolFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fresh spool each time: a spool file only grows.
    let spool = SpoolFile::temp_in(&std::env::temp_dir()).expect("a temporary spool file");
    let writer = spool.slot(0).expect("slot 0");
    let _ = index_layer(data, &LayerExpect::default(), 0, writer);
});
