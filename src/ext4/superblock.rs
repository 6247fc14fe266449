//! The ext4 superblock (`struct ext4_super_block`): 1024 bytes at byte 1024 of the image, and
//! a copy at the start of the backup group (sparse_super2).
//!
//! Spec: Documentation/filesystems/ext4/super.rst. Only the fields diskc sets are modelled;
//! every other byte is zero, which the spec defines as "not used" for a fresh filesystem.

use super::checksum::crc32c_raw;
use super::disk::{put_u16, put_u32, put_u64, put_u8};

/// super.rst: `s_magic`.
pub const EXT4_SUPER_MAGIC: u16 = 0xEF53;
/// Byte offset of the primary superblock in the image.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;

// super.rst, "Compatible feature set".
pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_EXT_ATTR: u32 = 0x8;
pub const COMPAT_DIR_INDEX: u32 = 0x20;
pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
// "Incompatible feature set".
pub const INCOMPAT_FILETYPE: u32 = 0x2;
pub const INCOMPAT_EXTENTS: u32 = 0x40;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_FLEX_BG: u32 = 0x200;
// "Readonly-compatible feature set".
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// `s_state`: cleanly unmounted.
pub const EXT4_VALID_FS: u16 = 0x1;
/// `s_errors`: continue on errors (mke2fs's default).
pub const EXT4_ERRORS_CONTINUE: u16 = 1;
/// `s_rev_level`: dynamic inode sizes.
pub const EXT4_DYNAMIC_REV: u32 = 1;
/// `s_flags`: directory hashes use signed chars (what mke2fs writes on x86).
pub const EXT2_FLAGS_SIGNED_HASH: u32 = 0x1;
/// `s_def_hash_version`: half MD4.
pub const DX_HASH_HALF_MD4: u8 = 1;
/// `s_default_mount_opts`: user_xattr and acl, as mke2fs sets them.
pub const EXT4_DEFM_XATTR_USER: u32 = 0x4;
pub const EXT4_DEFM_ACL: u32 = 0x8;
/// `s_jnl_backup_type`: `s_jnl_blocks` holds a copy of the journal inode's i_block.
pub const EXT3_JNL_BACKUP_BLOCKS: u8 = 1;
/// `s_checksum_type`: crc32c.
pub const EXT4_CRC32C_CHKSUM: u8 = 1;
/// Offset of `s_checksum`, which covers every byte before it.
const S_CHECKSUM: usize = 0x3FC;

#[derive(Clone, Debug, Default)]
pub struct Superblock {
    pub s_inodes_count: u32,
    pub s_blocks_count: u64,
    pub s_free_blocks_count: u64,
    pub s_free_inodes_count: u32,
    pub s_first_data_block: u32,
    pub s_log_block_size: u32,
    pub s_blocks_per_group: u32,
    pub s_inodes_per_group: u32,
    pub s_wtime: i64,
    pub s_lastcheck: i64,
    pub s_mkfs_time: i64,
    pub s_first_ino: u32,
    pub s_inode_size: u16,
    pub s_block_group_nr: u16,
    pub s_feature_compat: u32,
    pub s_feature_incompat: u32,
    pub s_feature_ro_compat: u32,
    pub s_uuid: [u8; 16],
    pub s_volume_name: [u8; 16],
    pub s_journal_inum: u32,
    pub s_hash_seed: [u8; 16],
    pub s_jnl_blocks: [u32; 17],
    pub s_desc_size: u16,
    pub s_min_extra_isize: u16,
    pub s_want_extra_isize: u16,
    pub s_log_groups_per_flex: u8,
    /// Groups holding the backups (sparse_super2); 0: none.
    pub s_backup_bgs: [u32; 2],
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put_u32(&mut b, 0x00, self.s_inodes_count);
        put_u32(&mut b, 0x04, self.s_blocks_count as u32);
        put_u32(&mut b, 0x0C, self.s_free_blocks_count as u32);
        put_u32(&mut b, 0x10, self.s_free_inodes_count);
        put_u32(&mut b, 0x14, self.s_first_data_block);
        put_u32(&mut b, 0x18, self.s_log_block_size);
        put_u32(&mut b, 0x1C, self.s_log_block_size); // s_log_cluster_size: no bigalloc
        put_u32(&mut b, 0x20, self.s_blocks_per_group);
        put_u32(&mut b, 0x24, self.s_blocks_per_group); // s_clusters_per_group
        put_u32(&mut b, 0x28, self.s_inodes_per_group);
        put_u32(&mut b, 0x30, self.s_wtime as u32);
        put_u16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count: -1, no forced checks
        put_u16(&mut b, 0x38, EXT4_SUPER_MAGIC);
        put_u16(&mut b, 0x3A, EXT4_VALID_FS);
        put_u16(&mut b, 0x3C, EXT4_ERRORS_CONTINUE);
        put_u32(&mut b, 0x40, self.s_lastcheck as u32);
        put_u32(&mut b, 0x4C, EXT4_DYNAMIC_REV);
        put_u32(&mut b, 0x54, self.s_first_ino);
        put_u16(&mut b, 0x58, self.s_inode_size);
        put_u16(&mut b, 0x5A, self.s_block_group_nr);
        put_u32(&mut b, 0x5C, self.s_feature_compat);
        put_u32(&mut b, 0x60, self.s_feature_incompat);
        put_u32(&mut b, 0x64, self.s_feature_ro_compat);
        b[0x68..0x78].copy_from_slice(&self.s_uuid);
        b[0x78..0x88].copy_from_slice(&self.s_volume_name);
        put_u32(&mut b, 0xE0, self.s_journal_inum);
        b[0xEC..0xFC].copy_from_slice(&self.s_hash_seed);
        put_u8(&mut b, 0xFC, DX_HASH_HALF_MD4);
        if self.s_journal_inum != 0 {
            put_u8(&mut b, 0xFD, EXT3_JNL_BACKUP_BLOCKS);
        }
        put_u16(&mut b, 0xFE, self.s_desc_size);
        put_u32(&mut b, 0x100, EXT4_DEFM_XATTR_USER | EXT4_DEFM_ACL);
        put_u32(&mut b, 0x108, self.s_mkfs_time as u32);
        for (i, v) in self.s_jnl_blocks.iter().enumerate() {
            put_u32(&mut b, 0x10C + 4 * i, *v);
        }
        put_u32(&mut b, 0x150, (self.s_blocks_count >> 32) as u32);
        put_u32(&mut b, 0x158, (self.s_free_blocks_count >> 32) as u32);
        put_u16(&mut b, 0x15C, self.s_min_extra_isize);
        put_u16(&mut b, 0x15E, self.s_want_extra_isize);
        put_u32(&mut b, 0x160, EXT2_FLAGS_SIGNED_HASH);
        put_u8(&mut b, 0x174, self.s_log_groups_per_flex);
        put_u8(&mut b, 0x175, EXT4_CRC32C_CHKSUM);
        put_u64(&mut b, 0x178, 0); // s_kbytes_written
                                   // The *_hi bytes extend the 32-bit times past 2106 (super.rst, s_wtime_hi...).
        put_u8(&mut b, 0x274, time_hi(self.s_wtime));
        put_u8(&mut b, 0x276, time_hi(self.s_mkfs_time));
        put_u8(&mut b, 0x277, time_hi(self.s_lastcheck));
        put_u32(&mut b, 0x24C, self.s_backup_bgs[0]);
        put_u32(&mut b, 0x250, self.s_backup_bgs[1]);
        let csum = crc32c_raw(!0, &b[..S_CHECKSUM]);
        put_u32(&mut b, S_CHECKSUM, csum);
        b
    }
}

fn time_hi(t: i64) -> u8 {
    (t.max(0) >> 32) as u8
}
