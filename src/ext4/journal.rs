//! The jbd2 journal (inode 8): an empty, clean journal is its superblock in the first block
//! and zeros after it, so a VM can mount the image read-write and replay after a crash.
//!
//! Spec: Documentation/filesystems/ext4/journal.rst. jbd2 structures are big-endian.

/// journal.rst: `h_magic`.
pub const JBD2_MAGIC_NUMBER: u32 = 0xC03B_3998;
/// journal.rst, `h_blocktype`: superblock version 2.
pub const JBD2_SUPERBLOCK_V2: u32 = 4;
/// jbd2 refuses journals shorter than this many blocks.
pub const JBD2_MIN_JOURNAL_BLOCKS: u64 = 1024;

/// Journal blocks for a filesystem of `blocks` 4 KiB blocks: the sizes mke2fs picks
/// (lib/ext2fs/mkjournal.c, ext2fs_default_journal_size), so a diskc image journals like a
/// mkfs.ext4 one.
pub fn default_blocks(blocks: u64) -> u64 {
    match blocks {
        0..32_768 => JBD2_MIN_JOURNAL_BLOCKS,
        32_768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16_384,
        4_194_304..8_388_608 => 32_768,
        8_388_608..16_777_216 => 65_536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

/// The first block of the journal: a v2 superblock for an empty journal of `maxlen` blocks.
pub fn superblock(maxlen: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    put(0x0, JBD2_MAGIC_NUMBER);
    put(0x4, JBD2_SUPERBLOCK_V2);
    put(0xC, 4096); // s_blocksize
    put(0x10, maxlen as u32); // s_maxlen
    put(0x14, 1); // s_first: the log starts after this superblock
    put(0x18, 1); // s_sequence
    put(0x40, 1); // s_nr_users: this filesystem
    b[0x30..0x40].copy_from_slice(uuid);
    b
}
