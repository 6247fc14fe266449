//! The on-disk inode (`struct ext4_inode`), 256 bytes: the 128-byte base, 32 bytes of extra
//! fields (nanosecond and post-2038 timestamps, checksum high half), and 96 bytes of in-inode
//! extended attributes.
//!
//! Spec: Documentation/filesystems/ext4/inodes.rst.

use super::checksum::{crc32c_raw, inode_seed};
use super::disk::{put_u16, put_u32};
use crate::tree::{NodeKind, Timestamp};

pub const INODE_SIZE: usize = 256;
/// `i_extra_isize`: every extra field up to and including `i_projid`.
pub const EXTRA_ISIZE: u16 = 32;
/// Where the in-inode xattr area begins (128 + i_extra_isize).
pub const IBODY_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;

// inodes.rst, `i_mode` file types.
pub const S_IFIFO: u16 = 0x1000;
pub const S_IFCHR: u16 = 0x2000;
pub const S_IFDIR: u16 = 0x4000;
pub const S_IFBLK: u16 = 0x6000;
pub const S_IFREG: u16 = 0x8000;
pub const S_IFLNK: u16 = 0xA000;
pub const S_IFSOCK: u16 = 0xC000;

/// The `i_mode` file type of a tree node.
pub fn file_type_bits<C>(kind: &NodeKind<C>) -> u16 {
    match kind {
        NodeKind::Directory(_) => S_IFDIR,
        NodeKind::File(_) => S_IFREG,
        NodeKind::Symlink(_) => S_IFLNK,
        NodeKind::CharDevice(_) => S_IFCHR,
        NodeKind::BlockDevice(_) => S_IFBLK,
        NodeKind::Fifo => S_IFIFO,
        NodeKind::Socket => S_IFSOCK,
    }
}

/// inodes.rst, `i_flags`: a directory with a hash index.
pub const EXT4_INDEX_FL: u32 = 0x1000;
/// inodes.rst, `i_flags`: the inode uses extents.
pub const EXT4_EXTENTS_FL: u32 = 0x80000;
/// The most links `i_links_count` holds; a directory with more subdirectories stores 1
/// (dir_nlink).
pub const EXT4_LINK_MAX: u32 = 65000;

/// inodes.rst: `i_block` is 60 bytes (15 32-bit words).
pub const I_BLOCK_LEN: usize = 60;

const I_CHECKSUM_LO: usize = 0x7C;
const I_CHECKSUM_HI: usize = 0x82;

#[derive(Clone, Debug)]
pub struct Inode {
    pub i_mode: u16,
    pub i_uid: u32,
    pub i_gid: u32,
    pub i_size: u64,
    pub i_atime: Timestamp,
    pub i_ctime: Timestamp,
    pub i_mtime: Timestamp,
    pub i_crtime: Timestamp,
    pub i_links_count: u16,
    /// In 512-byte sectors (huge_file without EXT4_HUGE_FILE_FL).
    pub i_blocks: u64,
    pub i_flags: u32,
    /// Extent tree root, fast symlink target or device number.
    pub i_block: [u8; I_BLOCK_LEN],
    pub i_file_acl: u64,
}

impl Default for Inode {
    fn default() -> Self {
        Inode {
            i_mode: 0,
            i_uid: 0,
            i_gid: 0,
            i_size: 0,
            i_atime: Timestamp::default(),
            i_ctime: Timestamp::default(),
            i_mtime: Timestamp::default(),
            i_crtime: Timestamp::default(),
            i_links_count: 0,
            i_blocks: 0,
            i_flags: 0,
            i_block: [0; I_BLOCK_LEN],
            i_file_acl: 0,
        }
    }
}

impl Inode {
    /// The 256 on-disk bytes of inode `ino`, with `ibody_xattrs` (the area after the extra
    /// fields, at most 96 bytes) and the checksum.
    pub fn to_bytes(&self, ino: u32, fs_seed: u32, ibody_xattrs: &[u8]) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put_u16(&mut b, 0x00, self.i_mode);
        put_u16(&mut b, 0x02, self.i_uid as u16);
        put_u32(&mut b, 0x04, self.i_size as u32);
        let (atime, atime_extra) = encode_time(self.i_atime);
        let (ctime, ctime_extra) = encode_time(self.i_ctime);
        let (mtime, mtime_extra) = encode_time(self.i_mtime);
        let (crtime, crtime_extra) = encode_time(self.i_crtime);
        put_u32(&mut b, 0x08, atime);
        put_u32(&mut b, 0x0C, ctime);
        put_u32(&mut b, 0x10, mtime);
        put_u16(&mut b, 0x18, self.i_gid as u16);
        put_u16(&mut b, 0x1A, self.i_links_count);
        put_u32(&mut b, 0x1C, self.i_blocks as u32);
        put_u32(&mut b, 0x20, self.i_flags);
        b[0x28..0x64].copy_from_slice(&self.i_block);
        put_u32(&mut b, 0x68, self.i_file_acl as u32);
        put_u32(&mut b, 0x6C, (self.i_size >> 32) as u32);
        put_u16(&mut b, 0x74, (self.i_blocks >> 32) as u16);
        put_u16(&mut b, 0x76, (self.i_file_acl >> 32) as u16);
        put_u16(&mut b, 0x78, (self.i_uid >> 16) as u16);
        put_u16(&mut b, 0x7A, (self.i_gid >> 16) as u16);
        put_u16(&mut b, 0x80, EXTRA_ISIZE);
        put_u32(&mut b, 0x84, ctime_extra);
        put_u32(&mut b, 0x88, mtime_extra);
        put_u32(&mut b, 0x8C, atime_extra);
        put_u32(&mut b, 0x90, crtime);
        put_u32(&mut b, 0x94, crtime_extra);
        b[IBODY_XATTR_OFFSET..IBODY_XATTR_OFFSET + ibody_xattrs.len()].copy_from_slice(ibody_xattrs);
        // checksums.rst: crc32c(inode seed, whole inode with both checksum fields zero).
        let crc = crc32c_raw(inode_seed(fs_seed, ino, 0), &b);
        put_u16(&mut b, I_CHECKSUM_LO, crc as u16);
        put_u16(&mut b, I_CHECKSUM_HI, (crc >> 16) as u16);
        b
    }
}

/// inodes.rst, "Inode Timestamps": the low 32 bits of seconds as a signed value, and in the
/// extra field two epoch bits (added as multiples of 2^32) and the nanoseconds << 2.
/// Representable: 1901-12-13 to 2446-05-10; times outside are clamped.
pub fn encode_time(t: Timestamp) -> (u32, u32) {
    const MIN: i64 = i32::MIN as i64;
    const MAX: i64 = (i32::MAX as i64) + (3 << 32);
    let sec = t.sec.clamp(MIN, MAX);
    let low = sec as u32;
    let epoch = ((sec - i64::from(low as i32)) >> 32) as u32 & 3;
    (low, (t.nsec.min(999_999_999) << 2) | epoch)
}

/// inodes.rst, "Device numbers": the old 16-bit form in `i_block[0]` when both parts fit a
/// byte, else the new 32-bit form in `i_block[1]`.
pub fn encode_device(major: u32, minor: u32) -> [u8; I_BLOCK_LEN] {
    let mut i_block = [0u8; I_BLOCK_LEN];
    if major < 256 && minor < 256 {
        i_block[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
        i_block[4..8].copy_from_slice(&new.to_le_bytes());
    }
    i_block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(low: u32, extra: u32) -> Timestamp {
        let sec = i64::from(low as i32) + (i64::from(extra & 3) << 32);
        Timestamp::new(sec, extra >> 2)
    }

    #[test]
    fn timestamps_round_trip_before_1970_and_after_2038() {
        for t in [
            Timestamp::new(0, 0),
            Timestamp::new(-1, 999_999_999),
            Timestamp::new(-2_000_000_000, 5),
            Timestamp::new(2_147_483_648, 1),
            Timestamp::new(4_102_444_800, 123_456_789),
            Timestamp::new(15_000_000_000, 7),
        ] {
            let (low, extra) = encode_time(t);
            assert_eq!(decode(low, extra), t, "{t:?}");
        }
    }

    #[test]
    fn devices_use_the_old_form_when_they_fit() {
        assert_eq!(&encode_device(1, 3)[..8], &[3, 1, 0, 0, 0, 0, 0, 0]);
        let big = encode_device(259, 70000);
        assert_eq!(&big[..4], &[0; 4]);
        let v = u32::from_le_bytes(big[4..8].try_into().unwrap());
        assert_eq!((v & 0xfff00) >> 8, 259);
        assert_eq!((v & 0xff) | ((v >> 12) & 0xfff00), 70000);
    }
}
