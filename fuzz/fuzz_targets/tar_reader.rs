//! The tar reader on any bytes: every entry and all its data read. An error is fine; a
//! panic, a hang or memory out of proportion to the input is a bug.
#![no_main]

use std::io::Read;

use diskc::layer::tar::TarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = TarReader::new(data);
    let mut bytes = Vec::new();
    while let Ok(Some(_)) = reader.next_entry() {
        bytes.clear();
        if reader.data().read_to_end(&mut bytes).is_err() {
            break;
        }
    }
});
