//! The layout planner: from a tree and options to every block's and inode's place, as plain
//! data, before a byte is written.
//!
//! Two steps. [`shape`] is independent of the image size: inode numbers (root 2, lost+found
//! 11, then the tree's walk order), link counts, directory sizes, xattr placement.
//! [`allocate`] then lays the image out for one block count, whose [`geometry`] (groups,
//! descriptors, inode tables) follows from it:
//!
//! ```text
//! block 0       superblock + group descriptors
//! 1 MiB         file data, lower layers first; files >= 1 MiB start on a MiB
//! next MiB      bitmaps, inode tables, the journal, directory / extent-index / symlink /
//!               xattr blocks
//! then          free space; one backup superblock at the last group's start
//! ```
//!
//! Data goes first, from a fixed offset, so its placement depends only on the files (not on
//! the inode count or the directory sizes): images that share a base share their leading
//! blocks, which is what lets the chunk store deduplicate them. flex_bg lets the metadata of
//! every group live after it, and sparse_super2 keeps the backup superblock out of the data.
//!
//! The data is either placed here, sorted by (layer, inode number), or already in the image
//! (`Options::data_in_place`: layers spooled into the image file), where it stays.

use std::ops::Range;

use super::extent::{self, Extent, ExtentTree, EXT_INIT_MAX_LEN};
use super::inode::I_BLOCK_LEN;
use super::{Ext4Error, Options, SizeSpec};
use crate::tree::{Content, FsTree, NodeId};

mod allocate;
mod geometry;
mod shape;

pub use geometry::{Geometry, BLOCKS_PER_GROUP, BLOCK_SIZE};
use geometry::{ALIGN_BLOCKS, DATA_START, INODES_PER_BLOCK};
use shape::TreeShape;

/// super.rst, `s_first_ino`: the first inode number not reserved for the filesystem itself.
pub const EXT4_FIRST_INO: u32 = 11;
/// special_inodes.rst: the root directory.
pub const ROOT_INO: u32 = 2;
/// special_inodes.rst: the journal.
pub const JOURNAL_INO: u32 = 8;

/// What an inode stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node(NodeId),
    /// lost+found made by diskc because the tree has none.
    LostFound,
    Journal,
}

/// Where an inode's `i_block` content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Fifos, sockets: nothing.
    None,
    /// Fast symlinks and device numbers, stored in `i_block` as is.
    Inline([u8; I_BLOCK_LEN]),
    Extents(ExtentTree),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrPlace {
    None,
    Inode,
    Block(u64),
}

#[derive(Clone, Debug)]
pub struct InodePlan {
    pub ino: u32,
    pub role: Role,
    /// File type and permission bits.
    pub mode: u16,
    pub links: u16,
    pub size: u64,
    pub map: Mapping,
    pub xattr: XattrPlace,
    /// 4 KiB blocks charged to the inode: data, extent nodes, xattr block.
    pub blocks: u64,
    /// The file's data is already in the image where its extents say.
    pub data_in_place: bool,
    /// A directory with a hash index (htree).
    pub indexed: bool,
}

/// Every leaf extent of an inode, in logical order, whatever the tree depth.
pub fn all_extents(inode: &InodePlan) -> Vec<Extent> {
    let Mapping::Extents(tree) = &inode.map else { return Vec::new() };
    let leaves = |entries: &extent::Entries| match entries {
        extent::Entries::Leaf(extents) => extents.clone(),
        extent::Entries::Index(_) => Vec::new(),
    };
    if tree.depth == 0 {
        leaves(&tree.root)
    } else {
        tree.nodes.iter().flat_map(|node| leaves(&node.entries)).collect()
    }
}

/// The whole layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub geo: Geometry,
    /// Every inode in use from 11 up (and root, journal), by inode number.
    pub inodes: Vec<InodePlan>,
    /// The inode number of each tree node (0: unreachable).
    pub ino_of: Vec<u32>,
    /// The parent directory's inode number, for directory nodes.
    pub parent_of: Vec<u32>,
    pub lost_found: Role,
    pub block_bitmaps: Vec<u64>,
    pub inode_bitmaps: Vec<u64>,
    pub inode_tables: Vec<u64>,
    /// Used blocks, sorted and merged, including superblocks and descriptors.
    pub used: Vec<Range<u64>>,
    /// The highest inode number in use; every inode up to it is in use.
    pub max_ino: u32,
    pub journal_blocks: u64,
}

impl Plan {
    pub fn blocks_used(&self) -> u64 {
        self.used.iter().map(|r| r.end - r.start).sum()
    }

    pub fn inode(&self, ino: u32) -> Option<&InodePlan> {
        self.inodes.binary_search_by_key(&ino, |p| p.ino).ok().map(|i| &self.inodes[i])
    }
}

/// Plans the image for `tree` under `options`.
pub fn plan<C: Content>(
    tree: &FsTree<C>,
    options: &Options,
    hash_seed: &[u32; 4],
) -> Result<Plan, Ext4Error> {
    let shape = shape::shape(tree, hash_seed, options.data_in_place)?;
    match options.size {
        SizeSpec::Bytes(bytes) => plan_exact_size(tree, &shape, options, bytes / BLOCK_SIZE),
        SizeSpec::Auto { headroom_percent, min_free_bytes } => {
            plan_auto_size(tree, &shape, options, headroom_percent, min_free_bytes)
        }
    }
}

fn plan_exact_size<C: Content>(
    tree: &FsTree<C>,
    shape: &TreeShape,
    options: &Options,
    blocks_count: u64,
) -> Result<Plan, Ext4Error> {
    match allocate::allocate(tree, shape, blocks_count, options.journal, options.inode_headroom_percent) {
        // Name the smallest size that works, not just the first shortfall found.
        Err(Ext4Error::TooSmall { size, .. }) => {
            let smallest = plan_auto_size(tree, shape, options, 0, 0)?;
            Err(Ext4Error::TooSmall { size, needed: smallest.geo.blocks_count * BLOCK_SIZE })
        }
        other => other,
    }
}

/// The image sized to what the layout uses, grown by `headroom_percent` and by at least
/// `min_free_bytes`, in whole MiB.
fn plan_auto_size<C: Content>(
    tree: &FsTree<C>,
    shape: &TreeShape,
    options: &Options,
    headroom_percent: u32,
    min_free_bytes: u64,
) -> Result<Plan, Ext4Error> {
    let wanted_blocks = |used: u64| {
        let grown = used * (100 + u64::from(headroom_percent)) / 100;
        grown.max(used + min_free_bytes.div_ceil(BLOCK_SIZE)).next_multiple_of(ALIGN_BLOCKS)
    };
    // A first guess from the content (inode tables counted twice, for the headroom); each
    // round sizes the image from what the previous layout used, growing monotonically, so
    // it settles in a few rounds.
    let inode_table_blocks = u64::from(shape.max_ino).div_ceil(INODES_PER_BLOCK) * 2;
    let mut blocks_count = wanted_blocks(
        DATA_START.max(shape.placed_end) + shape.data_blocks + shape.meta_blocks + inode_table_blocks,
    );
    loop {
        match allocate::allocate(tree, shape, blocks_count, options.journal, options.inode_headroom_percent) {
            Ok(plan) if blocks_count >= wanted_blocks(plan.blocks_used()) => return Ok(plan),
            Ok(plan) => blocks_count = wanted_blocks(plan.blocks_used()).max(blocks_count + ALIGN_BLOCKS),
            Err(Ext4Error::TooSmall { needed, .. }) => {
                blocks_count = wanted_blocks(needed.div_ceil(BLOCK_SIZE)).max(blocks_count + ALIGN_BLOCKS)
            }
            Err(e) => return Err(e),
        }
    }
}

/// The path of a node, for error messages only (it walks the tree).
pub fn path_of<C>(tree: &FsTree<C>, id: NodeId) -> String {
    tree.path_of(id)
        .map(|p| format!("/{}", String::from_utf8_lossy(&p)))
        .unwrap_or_else(|| format!("node {}", id.0))
}

/// Appends the mapping of `len` logical blocks at `logical` to `physical`, merging with the
/// previous extent when both continue it and splitting at the extent length limit.
fn push_extents(extents: &mut Vec<Extent>, mut logical: u64, mut physical: u64, mut len: u64) {
    while len > 0 {
        if let Some(last) = extents.last_mut() {
            let last_len = u64::from(last.len);
            let continues =
                u64::from(last.logical) + last_len == logical && last.physical + last_len == physical;
            if continues && last_len < EXT_INIT_MAX_LEN {
                let take = len.min(EXT_INIT_MAX_LEN - last_len);
                last.len += take as u16;
                (logical, physical, len) = (logical + take, physical + take, len - take);
                continue;
            }
        }
        let take = len.min(EXT_INIT_MAX_LEN);
        // ee_len 32768 is the initialized maximum and encodes as 0x8000.
        extents.push(Extent { logical: logical as u32, len: take as u16, physical });
        (logical, physical, len) = (logical + take, physical + take, len - take);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_merge_and_split_at_the_length_limit() {
        let mut e = Vec::new();
        push_extents(&mut e, 0, 100, 10);
        push_extents(&mut e, 10, 110, 32768);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].len, e[1].logical, e[1].len), (32768, 32768, 10));
    }
}
