//! A layer blob from any bytes: compression sniffed and undone (gzip, zstd or none), the tar
//! parsed, file data spooled. An error is fine; a panic is a bug.
#![no_main]

use std::io::Read;

use diskc::layer::{index_layer, LayerExpect, SpoolFile, ZSTD_WINDOW_LOG_MAX};
use libfuzzer_sys::fuzz_target;

/// Indexing is linear in what a layer unpacks to, and 64 KiB of zstd unpacks to 2 GiB: such
/// inputs are left out, so that the fuzzer's timeout finds slow code, not big layers.
const MAX_UNPACKED: u64 = 256 << 20;

fuzz_target!(|data: &[u8]| {
    if unpacked_len(data) > MAX_UNPACKED {
        return;
    }
    // A fresh spool each time: a spool file only grows.
    let spool = SpoolFile::temp_in(&std::env::temp_dir()).expect("a temporary spool file");
    let writer = spool.slot(0).expect("slot 0");
    let _ = index_layer(data, &LayerExpect::default(), 0, writer);
});

/// How many bytes `data` unpacks to, counted up to just past MAX_UNPACKED; up to the first
/// error when it is corrupt.
fn unpacked_len(data: &[u8]) -> u64 {
    let mut reader: Box<dyn Read + '_> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(data))
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let Ok(mut decoder) = zstd::stream::read::Decoder::new(data) else { return 0 };
        if decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).is_err() {
            return 0;
        }
        Box::new(decoder)
    } else {
        return data.len() as u64;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    while total <= MAX_UNPACKED {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    total
}
