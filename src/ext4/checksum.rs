//! metadata_csum checksums: CRC32C as the kernel computes it (`ext4_chksum`), i.e. without
//! the customary pre- and post-inversion, so a running value can be threaded through pieces.
//!
//! Spec: Documentation/filesystems/ext4/checksums.rst.

/// The kernel's `crc32c_le(seed, data)`: a raw CRC32C register update.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    // The crc32c crate inverts on the way in and out; undo both to expose the raw register.
    !crc32c::crc32c_append(!seed, data)
}

/// `s_csum_seed`: the seed every metadata checksum starts from, derived from the UUID
/// (checksums.rst: "crc32c(~0, $uuid)").
pub fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc32c_raw(!0, uuid)
}

/// Per-inode seed for the inode itself, its extent blocks and directory blocks:
/// crc32c(fs seed, inode number, generation).
pub fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let s = crc32c_raw(fs_seed, &ino.to_le_bytes());
    crc32c_raw(s, &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_register_matches_the_standard_crc() {
        // Standard CRC32C("123456789") = 0xE3069283; raw with ~0 seed, then inverted.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
        // Threading pieces equals one pass.
        let whole = crc32c_raw(7, b"hello world");
        let parts = crc32c_raw(crc32c_raw(7, b"hello "), b"world");
        assert_eq!(whole, parts);
    }
}
