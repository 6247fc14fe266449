//! Block group descriptors (`struct ext4_group_desc`, 64 bytes with the 64bit feature) and
//! the checksums of the bitmaps they point at.
//!
//! Spec: Documentation/filesystems/ext4/group_descr.rst and checksums.rst.

use super::checksum::crc32c_raw;
use super::disk::{put_u16, put_u32};

/// `s_desc_size` with 64bit.
pub const DESC_SIZE: usize = 64;
/// group_descr.rst, `bg_flags`: the inode table is zeroed (it is: the image starts sparse).
pub const EXT4_BG_INODE_ZEROED: u16 = 0x4;
/// Offset of `bg_checksum`, which the descriptor checksum skips.
const BG_CHECKSUM: usize = 0x1E;

#[derive(Clone, Debug, Default)]
pub struct GroupDesc {
    pub bg_block_bitmap: u64,
    pub bg_inode_bitmap: u64,
    pub bg_inode_table: u64,
    pub bg_free_blocks_count: u32,
    pub bg_free_inodes_count: u32,
    pub bg_used_dirs_count: u32,
    pub bg_flags: u16,
    pub bg_block_bitmap_csum: u32,
    pub bg_inode_bitmap_csum: u32,
    pub bg_itable_unused: u32,
}

impl GroupDesc {
    /// The descriptor of group `group`, checksummed with the filesystem seed.
    pub fn to_bytes(&self, fs_seed: u32, group: u32) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        put_u32(&mut b, 0x00, self.bg_block_bitmap as u32);
        put_u32(&mut b, 0x04, self.bg_inode_bitmap as u32);
        put_u32(&mut b, 0x08, self.bg_inode_table as u32);
        put_u16(&mut b, 0x0C, self.bg_free_blocks_count as u16);
        put_u16(&mut b, 0x0E, self.bg_free_inodes_count as u16);
        put_u16(&mut b, 0x10, self.bg_used_dirs_count as u16);
        put_u16(&mut b, 0x12, self.bg_flags);
        put_u16(&mut b, 0x18, self.bg_block_bitmap_csum as u16);
        put_u16(&mut b, 0x1A, self.bg_inode_bitmap_csum as u16);
        put_u16(&mut b, 0x1C, self.bg_itable_unused as u16);
        put_u32(&mut b, 0x20, (self.bg_block_bitmap >> 32) as u32);
        put_u32(&mut b, 0x24, (self.bg_inode_bitmap >> 32) as u32);
        put_u32(&mut b, 0x28, (self.bg_inode_table >> 32) as u32);
        put_u16(&mut b, 0x2C, (self.bg_free_blocks_count >> 16) as u16);
        put_u16(&mut b, 0x2E, (self.bg_free_inodes_count >> 16) as u16);
        put_u16(&mut b, 0x30, (self.bg_used_dirs_count >> 16) as u16);
        put_u16(&mut b, 0x32, (self.bg_itable_unused >> 16) as u16);
        put_u16(&mut b, 0x38, (self.bg_block_bitmap_csum >> 16) as u16);
        put_u16(&mut b, 0x3A, (self.bg_inode_bitmap_csum >> 16) as u16);
        // checksums.rst: crc32c(fs seed, group number, descriptor without bg_checksum) & 0xFFFF.
        let crc = crc32c_raw(fs_seed, &group.to_le_bytes());
        let crc = crc32c_raw(crc, &b[..BG_CHECKSUM]);
        let crc = crc32c_raw(crc, &[0, 0]);
        let crc = crc32c_raw(crc, &b[BG_CHECKSUM + 2..]);
        put_u16(&mut b, BG_CHECKSUM, crc as u16);
        b
    }
}

/// checksums.rst: a bitmap's checksum covers the bits that describe the group
/// (`blocks_per_group / 8` or `inodes_per_group / 8` bytes).
pub fn bitmap_csum(fs_seed: u32, bitmap: &[u8]) -> u32 {
    crc32c_raw(fs_seed, bitmap)
}
