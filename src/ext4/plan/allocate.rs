//! The allocator: lays a [`TreeShape`] out in an image of one block count. One cursor moves
//! forward from the data area's start, stepping over the superblock copies: file data
//! (lower layers first), then each group's bitmaps and inode table, the journal, and each
//! inode's directory, symlink, extent-index and xattr blocks, by inode number.

use std::ops::Range;

use super::super::extent::{self, Extent, ExtentTree};
use super::super::inode;
use super::super::journal;
use super::super::Ext4Error;
use super::geometry::{self, Geometry, ALIGN_BLOCKS, ALIGN_FILES_FROM_BYTES, BLOCK_SIZE, DATA_START};
use super::shape::{InodeShape, Need, TreeShape, XattrNeed};
use super::{push_extents, InodePlan, Mapping, Plan, Role, XattrPlace, JOURNAL_INO};
use crate::fileio::merge_ranges;
use crate::tree::{Content, FsTree, NodeId, NodeKind};

/// Lays out `shape` in an image of `blocks_count` blocks, with a journal or not.
pub(super) fn allocate<C: Content>(
    tree: &FsTree<C>,
    shape: &TreeShape,
    blocks_count: u64,
    journal: bool,
    inode_headroom_percent: u32,
) -> Result<Plan, Ext4Error> {
    let geo = Geometry::new(blocks_count, shape.max_ino, inode_headroom_percent, shape.placed_end)?;
    let superblocks = geo.superblock_ranges();
    let mut allocator = Allocator::new(&geo, shape.placed_end, superblocks.clone());

    let mut file_extents = place_file_data(tree, shape, &mut allocator);
    let groups = place_group_metadata(&geo, &mut allocator);
    let journal_blocks = if journal { journal::default_blocks(blocks_count) } else { 0 };
    let journal_inode = journal.then(|| journal_inode(&mut allocator, journal_blocks));
    let mut inodes = Vec::with_capacity(shape.inodes.len() + 2);
    for (index, inode) in shape.inodes.iter().enumerate() {
        inodes.push(place_inode(inode, file_extents[index].take(), &mut allocator));
    }
    inodes.extend(journal_inode);
    inodes.sort_by_key(|p| p.ino);
    if allocator.cursor > blocks_count {
        return Err(geometry::too_small(blocks_count, allocator.cursor));
    }

    let mut used = allocator.used;
    used.extend(superblocks);
    Ok(Plan {
        geo,
        inodes,
        ino_of: shape.ino_of.clone(),
        parent_of: shape.parent_of.clone(),
        lost_found: shape.lost_found,
        block_bitmaps: groups.block_bitmaps,
        inode_bitmaps: groups.inode_bitmaps,
        inode_tables: groups.inode_tables,
        used: merge_ranges(used),
        max_ino: shape.max_ino,
        journal_blocks,
    })
}

/// Hands out blocks from a cursor that only moves forward, stepping over the superblock
/// copies.
struct Allocator {
    cursor: u64,
    /// Blocks never handed out: superblocks and group descriptors.
    reserved: Vec<Range<u64>>,
    /// Blocks handed out or marked, in the order they were.
    used: Vec<Range<u64>>,
}

impl Allocator {
    /// Starts at the data area, past the group descriptors and any data already in the
    /// image.
    fn new(geo: &Geometry, placed_end: u64, reserved: Vec<Range<u64>>) -> Self {
        let after_descriptors = (1 + geo.gdt_blocks).next_multiple_of(ALIGN_BLOCKS);
        Allocator { cursor: DATA_START.max(after_descriptors).max(placed_end), reserved, used: Vec::new() }
    }

    /// Records `range` as used.
    fn mark(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        match self.used.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.used.push(range),
        }
    }

    /// The reserved range that the cursor sits in or that starts next.
    fn next_reserved(&self) -> Option<Range<u64>> {
        self.reserved.iter().find(|r| r.end > self.cursor).cloned()
    }

    fn align(&mut self, to: u64) {
        self.cursor = self.cursor.next_multiple_of(to);
    }

    /// `count` blocks, in as few pieces as the reserved ranges allow.
    fn alloc(&mut self, mut count: u64) -> Vec<Range<u64>> {
        let mut pieces = Vec::new();
        while count > 0 {
            let limit = match self.next_reserved() {
                Some(r) if r.start <= self.cursor => {
                    self.cursor = r.end;
                    continue;
                }
                Some(r) => r.start,
                None => u64::MAX,
            };
            let take = count.min(limit - self.cursor);
            let piece = self.cursor..self.cursor + take;
            self.mark(piece.clone());
            pieces.push(piece);
            self.cursor += take;
            count -= take;
        }
        pieces
    }

    /// `count` contiguous blocks; returns the first.
    fn alloc_contiguous(&mut self, count: u64) -> u64 {
        while let Some(r) = self.next_reserved() {
            if r.start >= self.cursor + count {
                break;
            }
            self.cursor = r.end;
        }
        let start = self.cursor;
        self.mark(start..start + count);
        self.cursor += count;
        start
    }

    /// Allocates `count` blocks and maps logical blocks from `logical` to them.
    fn map_run(&mut self, extents: &mut Vec<Extent>, mut logical: u64, count: u64) {
        for piece in self.alloc(count) {
            push_extents(extents, logical, piece.start, piece.end - piece.start);
            logical += piece.end - piece.start;
        }
    }

    /// Maps logical blocks `0..count` to freshly allocated blocks.
    fn fresh_extents(&mut self, count: u64) -> Vec<Extent> {
        let mut extents = Vec::new();
        self.map_run(&mut extents, 0, count);
        extents
    }

    /// The extent tree over `extents`, its nodes allocated; and how many blocks they take.
    fn extent_tree(&mut self, extents: Vec<Extent>) -> (ExtentTree, u64) {
        let node_blocks = extent::node_blocks_needed(extents.len());
        let blocks: Vec<u64> = self.alloc(node_blocks).into_iter().flatten().collect();
        (extent::build(extents, &blocks), node_blocks)
    }
}

/// Places the data of every file not already in the image, lower layers first, then by
/// inode number (the walk order); files of 1 MiB or more start on a MiB. Returns each
/// inode's data extents, by its index in `shape.inodes`.
fn place_file_data<C: Content>(
    tree: &FsTree<C>,
    shape: &TreeShape,
    allocator: &mut Allocator,
) -> Vec<Option<Vec<Extent>>> {
    let mut files: Vec<(u32, u32, NodeId, usize)> = shape
        .inodes
        .iter()
        .enumerate()
        .filter_map(|(index, inode)| match inode.need {
            Need::File(id) => Some((inode.layer, inode.ino, id, index)),
            _ => None,
        })
        .collect();
    files.sort_unstable();
    let mut file_extents = vec![None; shape.inodes.len()];
    for (_, _, id, index) in files {
        let NodeKind::File(file) = &tree.get(id).kind else { unreachable!("file need on a file") };
        if file.size >= ALIGN_FILES_FROM_BYTES && !file.data_blocks.is_empty() {
            allocator.align(ALIGN_BLOCKS);
        }
        let mut extents = Vec::new();
        for run in &file.data_blocks {
            allocator.map_run(&mut extents, run.start, run.end - run.start);
        }
        file_extents[index] = Some(extents);
    }
    file_extents
}

/// Each group's bitmaps and inode table, all of them after the data (flex_bg).
struct GroupMetadata {
    block_bitmaps: Vec<u64>,
    inode_bitmaps: Vec<u64>,
    inode_tables: Vec<u64>,
}

fn place_group_metadata(geo: &Geometry, allocator: &mut Allocator) -> GroupMetadata {
    allocator.align(ALIGN_BLOCKS);
    let block_bitmaps = (0..geo.groups).map(|_| allocator.alloc_contiguous(1)).collect();
    let inode_bitmaps = (0..geo.groups).map(|_| allocator.alloc_contiguous(1)).collect();
    let inode_tables = (0..geo.groups).map(|_| allocator.alloc_contiguous(geo.itable_blocks)).collect();
    GroupMetadata { block_bitmaps, inode_bitmaps, inode_tables }
}

/// The journal inode (8), its `journal_blocks` allocated.
fn journal_inode(allocator: &mut Allocator, journal_blocks: u64) -> InodePlan {
    let extents = allocator.fresh_extents(journal_blocks);
    let (tree, node_blocks) = allocator.extent_tree(extents);
    InodePlan {
        ino: JOURNAL_INO,
        role: Role::Journal,
        mode: inode::S_IFREG | 0o600,
        links: 1,
        size: journal_blocks * BLOCK_SIZE,
        map: Mapping::Extents(tree),
        xattr: XattrPlace::None,
        blocks: journal_blocks + node_blocks,
        indexed: false,
        data_in_place: false,
    }
}

/// Places one inode's metadata blocks; `file_extents` are its file data, already placed.
fn place_inode(
    inode: &InodeShape,
    file_extents: Option<Vec<Extent>>,
    allocator: &mut Allocator,
) -> InodePlan {
    let (map, mut blocks) = match &inode.need {
        Need::Nothing => (Mapping::None, 0),
        Need::Inline(bytes) => (Mapping::Inline(*bytes), 0),
        Need::File(_) => {
            let extents = file_extents.expect("file extents planned");
            let data_blocks = extent_blocks(&extents);
            let (tree, node_blocks) = allocator.extent_tree(extents);
            (Mapping::Extents(tree), data_blocks + node_blocks)
        }
        Need::Placed(_, extents) => {
            for e in extents {
                allocator.mark(e.physical..e.physical + u64::from(e.len));
            }
            let (tree, node_blocks) = allocator.extent_tree(extents.clone());
            (Mapping::Extents(tree), extent_blocks(extents) + node_blocks)
        }
        Need::Blocks(count) => {
            let extents = allocator.fresh_extents(*count);
            let (tree, node_blocks) = allocator.extent_tree(extents);
            (Mapping::Extents(tree), count + node_blocks)
        }
    };
    let xattr = match inode.xattr {
        XattrNeed::None => XattrPlace::None,
        XattrNeed::InInode => XattrPlace::Inode,
        XattrNeed::Block => {
            blocks += 1;
            XattrPlace::Block(allocator.alloc_contiguous(1))
        }
    };
    InodePlan {
        ino: inode.ino,
        role: inode.role,
        mode: inode.mode,
        links: inode.links,
        size: inode.size,
        map,
        xattr,
        blocks,
        indexed: inode.indexed,
        data_in_place: matches!(inode.need, Need::Placed(..)),
    }
}

fn extent_blocks(extents: &[Extent]) -> u64 {
    extents.iter().map(|e| u64::from(e.len)).sum()
}

#[cfg(test)]
mod tests {
    use super::super::geometry::BLOCKS_PER_GROUP;
    use super::super::shape::shape;
    use super::*;

    #[test]
    fn the_backup_is_in_the_last_group_unless_data_in_place_is_there() {
        let tree = FsTree::<Vec<u8>>::new(crate::tree::Metadata::with_mode(
            0o755,
            crate::tree::Timestamp::default(),
        ));
        let shapes = shape(&tree, &[0; 4], false).unwrap();
        let plan = allocate(&tree, &shapes, 5 * BLOCKS_PER_GROUP, false, 0).unwrap();
        assert_eq!(plan.geo.backup_group, Some(4));
        let one_group = allocate(&tree, &shapes, BLOCKS_PER_GROUP, false, 0).unwrap();
        assert_eq!(one_group.geo.backup_group, None);
        let over =
            TreeShape { placed_end: 4 * BLOCKS_PER_GROUP + 1, ..shape(&tree, &[0; 4], false).unwrap() };
        let plan = allocate(&tree, &over, 6 * BLOCKS_PER_GROUP, false, 0).unwrap();
        assert_eq!(plan.geo.backup_group, Some(5));
        let plan = allocate(&tree, &over, 5 * BLOCKS_PER_GROUP, false, 0).unwrap();
        assert_eq!(plan.geo.backup_group, None);
    }
}
