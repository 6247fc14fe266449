//! The image's geometry: block size, block groups, where file data starts, the limits diskc
//! lays out within, and for one block count how many groups, descriptor blocks and inodes
//! the image has.
//!
//! Spec: Documentation/filesystems/ext4/overview.rst (blocks, block groups, flex_bg,
//! sparse_super2) and super.rst.

use std::ops::Range;

use super::super::group::DESC_SIZE;
use super::super::inode::INODE_SIZE;
use super::super::Ext4Error;

/// Where file data starts and the block size are the layout contract the spool shares.
pub use crate::layout::{BLOCK_SIZE, DATA_START};

/// One bitmap block holds a bit for each of this many blocks or inodes.
const BITS_PER_BITMAP: u64 = BLOCK_SIZE * 8;
/// overview.rst, "Blocks": one block bitmap covers a group, so a group is 32768 blocks.
pub const BLOCKS_PER_GROUP: u64 = BITS_PER_BITMAP;
/// One inode bitmap block covers a group's inodes.
const MAX_INODES_PER_GROUP: u64 = BITS_PER_BITMAP;
pub const INODES_PER_BLOCK: u64 = BLOCK_SIZE / INODE_SIZE as u64;
/// At least one inode per 16 KiB of image (4 blocks), mke2fs's default `inode_ratio`.
const BLOCKS_PER_INODE: u64 = 4;

/// Large files, the metadata area and automatic image sizes are aligned to 1 MiB.
pub use crate::layout::ALIGN as ALIGN_BLOCKS;
/// Files of at least this many bytes start on an [`ALIGN_BLOCKS`] boundary.
pub use crate::layout::ALIGN_FILES_FROM as ALIGN_FILES_FROM_BYTES;

/// ifork.rst: 2^32 logical blocks of 4 KiB, the largest ext4 file with extents.
pub const MAX_FILE_SIZE: u64 = (1 << 32) * BLOCK_SIZE;
/// 64bit block numbers reach far beyond this; diskc keeps the superblock and the group
/// descriptors below the data, in the first MiB.
const MAX_BLOCKS: u64 = (DATA_START - 1) * (BLOCK_SIZE / DESC_SIZE as u64) * BLOCKS_PER_GROUP;
/// The smallest image diskc lays out: the first MiB and a little room for metadata.
const MIN_BLOCKS: u64 = DATA_START + 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub blocks_count: u64,
    pub groups: u32,
    pub gdt_blocks: u64,
    pub inodes_per_group: u32,
    /// Inode table blocks per group.
    pub itable_blocks: u64,
    /// The group with the backup superblock and descriptors (sparse_super2), if any.
    pub backup_group: Option<u32>,
}

impl Geometry {
    /// The geometry of an image of `blocks_count` blocks holding inodes up to `max_ino`
    /// plus `inode_headroom_percent`, with data already in the image up to `placed_end`.
    pub(super) fn new(
        blocks_count: u64,
        max_ino: u32,
        inode_headroom_percent: u32,
        placed_end: u64,
    ) -> Result<Geometry, Ext4Error> {
        if blocks_count > MAX_BLOCKS {
            return Err(Ext4Error::TooLarge {
                size: blocks_count * BLOCK_SIZE,
                max: MAX_BLOCKS * BLOCK_SIZE,
            });
        }
        if blocks_count < MIN_BLOCKS {
            return Err(too_small(blocks_count, MIN_BLOCKS));
        }
        let groups = blocks_count.div_ceil(BLOCKS_PER_GROUP) as u32;
        let inodes_per_group = inodes_per_group(blocks_count, groups, max_ino, inode_headroom_percent)?;
        Ok(Geometry {
            blocks_count,
            groups,
            gdt_blocks: (u64::from(groups) * DESC_SIZE as u64).div_ceil(BLOCK_SIZE),
            inodes_per_group: inodes_per_group as u32,
            itable_blocks: inodes_per_group / INODES_PER_BLOCK,
            backup_group: backup_group(groups, placed_end),
        })
    }

    pub fn inodes_count(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.inodes_per_group)
    }

    pub fn backup_groups(&self) -> Vec<u32> {
        self.backup_group.into_iter().collect()
    }

    /// The superblock and group descriptors, at block 0 and at each backup group's start.
    pub(super) fn superblock_ranges(&self) -> Vec<Range<u64>> {
        let with_descriptors = 1 + self.gdt_blocks;
        let backups = self.backup_groups().into_iter().map(|g| u64::from(g) * BLOCKS_PER_GROUP);
        std::iter::once(0).chain(backups).map(|start| start..start + with_descriptors).collect()
    }
}

/// The error for an image of `blocks_count` blocks that needs `needed_blocks`.
pub(super) fn too_small(blocks_count: u64, needed_blocks: u64) -> Ext4Error {
    Ext4Error::TooSmall { size: blocks_count * BLOCK_SIZE, needed: needed_blocks * BLOCK_SIZE }
}

/// Enough inodes for the tree and its headroom, and one per 16 KiB, spread evenly over the
/// groups in whole inode table blocks.
fn inodes_per_group(
    blocks_count: u64,
    groups: u32,
    max_ino: u32,
    inode_headroom_percent: u32,
) -> Result<u64, Ext4Error> {
    let groups = u64::from(groups);
    let inodes_used = u64::from(max_ino);
    let wanted =
        (inodes_used * (100 + u64::from(inode_headroom_percent)) / 100).max(blocks_count / BLOCKS_PER_INODE);
    let per_group = wanted
        .div_ceil(groups)
        .next_multiple_of(INODES_PER_BLOCK)
        .clamp(INODES_PER_BLOCK, MAX_INODES_PER_GROUP);
    if per_group * groups < inodes_used {
        // A group holds at most 32768 inodes: this many files need more groups.
        return Err(too_small(blocks_count, inodes_used.div_ceil(MAX_INODES_PER_GROUP) * BLOCKS_PER_GROUP));
    }
    if per_group * groups > u64::from(u32::MAX) {
        return Err(Ext4Error::TooManyInodes(per_group * groups));
    }
    Ok(per_group)
}

/// One backup, at the start of the last group, unless data already in the image is there.
fn backup_group(groups: u32, placed_end: u64) -> Option<u32> {
    let last = groups - 1;
    (last > 0 && u64::from(last) * BLOCKS_PER_GROUP >= placed_end).then_some(last)
}
