//! Test data for the store: bytes that compress about like a rootfs, and sparse files.
//! Shared by the store tests and `benches/store.rs` (which includes it by path).
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Deterministic bytes, half random and half text in alternating 4 KiB blocks, so that they
/// compress about as well as real files.
pub fn sample_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        if (out.len() / 4096) % 2 == 0 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        } else {
            out.extend_from_slice(b"compressible");
        }
    }
    out.truncate(len);
    out
}

/// A sparse file of `size` bytes holding `pieces` (offset, bytes) and holes elsewhere.
pub fn sparse_file<T: AsRef<[u8]>>(path: &Path, size: u64, pieces: &[(u64, T)]) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, data) in pieces {
        file.write_all_at(data.as_ref(), *offset).unwrap();
    }
    file.sync_all().unwrap();
}
