//! Linear directories: `struct ext4_dir_entry_2` records packed into blocks, each block
//! ending in a checksum tail (`struct ext4_dir_entry_tail`).
//!
//! Spec: Documentation/filesystems/ext4/directory.rst. Entries are written in name-byte
//! order, `.` and `..` first, so a directory's bytes depend only on its contents.

use super::checksum::crc32c_raw;
use super::disk::{put_u16, put_u32, put_u8};

const BLOCK: usize = 4096;
/// directory.rst: the tail is 12 bytes at the end of each leaf block.
const TAIL: usize = 12;
const USABLE: usize = BLOCK - TAIL;
/// directory.rst, tail `det_reserved_ft`.
const EXT4_FT_DIR_CSUM: u8 = 0xDE;

// directory.rst, `file_type`.
pub const EXT4_FT_REG_FILE: u8 = 1;
pub const EXT4_FT_DIR: u8 = 2;
pub const EXT4_FT_CHRDEV: u8 = 3;
pub const EXT4_FT_BLKDEV: u8 = 4;
pub const EXT4_FT_FIFO: u8 = 5;
pub const EXT4_FT_SOCK: u8 = 6;
pub const EXT4_FT_SYMLINK: u8 = 7;

#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub file_type: u8,
}

/// The smallest record for a name: 8 header bytes plus the name, rounded up to 4.
fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// How many entries go in each block, given every entry's name length in order
/// (`.` and `..` included). The planner counts blocks with it and the emitter fills them.
pub fn pack(name_lens: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut blocks = Vec::new();
    let (mut used, mut count) = (0, 0);
    for len in name_lens {
        let need = rec_len(len);
        if used + need > USABLE {
            blocks.push(count);
            used = 0;
            count = 0;
        }
        used += need;
        count += 1;
    }
    if count > 0 {
        blocks.push(count);
    }
    blocks
}

/// The directory's blocks, checksummed under its inode seed.
pub fn blocks(entries: &[DirEntry], inode_seed: u32) -> Vec<Vec<u8>> {
    let counts = pack(entries.iter().map(|e| e.name.len()));
    let mut out = Vec::with_capacity(counts.len());
    let mut rest = entries;
    for count in counts {
        let (these, after) = rest.split_at(count);
        rest = after;
        let mut b = vec![0u8; BLOCK];
        let mut at = 0;
        for (i, e) in these.iter().enumerate() {
            // The last record stretches to the tail, covering the block's free space.
            let len = if i + 1 == these.len() { USABLE - at } else { rec_len(e.name.len()) };
            put_u32(&mut b, at, e.ino);
            put_u16(&mut b, at + 4, len as u16);
            put_u8(&mut b, at + 6, e.name.len() as u8);
            put_u8(&mut b, at + 7, e.file_type);
            b[at + 8..at + 8 + e.name.len()].copy_from_slice(e.name);
            at += len;
        }
        put_u16(&mut b, USABLE + 4, TAIL as u16);
        put_u8(&mut b, USABLE + 7, EXT4_FT_DIR_CSUM);
        let crc = crc32c_raw(inode_seed, &b[..USABLE]);
        put_u32(&mut b, USABLE + 8, crc);
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_blocks_up_to_the_tail() {
        assert_eq!(pack([1, 2]), vec![2]);
        // 255-byte names take 264 bytes: 15 fit in 4084.
        assert_eq!(pack(std::iter::repeat_n(255, 31)), vec![15, 15, 1]);
    }

    #[test]
    fn last_record_reaches_the_tail() {
        let e = [
            DirEntry { name: b".", ino: 2, file_type: EXT4_FT_DIR },
            DirEntry { name: b"..", ino: 2, file_type: EXT4_FT_DIR },
        ];
        let b = &blocks(&e, 0)[0];
        assert_eq!(super::super::disk::get_u16(b, 4), 12);
        assert_eq!(super::super::disk::get_u16(b, 16), (USABLE - 12) as u16);
        assert_eq!(b[USABLE + 7], 0xDE);
    }
}
