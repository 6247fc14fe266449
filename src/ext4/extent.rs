//! Extent trees: how an inode maps logical blocks to physical ones.
//!
//! The root lives in the inode's 60-byte `i_block` (a 12-byte header and up to 4 entries);
//! deeper nodes live in blocks of their own (up to 340 entries and a checksum tail). diskc
//! builds the shallowest tree that holds the extents, bottom up: leaves first, then as many
//! index levels as it takes to fit 4 entries at the root.
//!
//! Spec: Documentation/filesystems/ext4/ifork.rst.

use super::checksum::crc32c_raw;
use super::disk::{put_u16, put_u32};

/// ifork.rst: `eh_magic`.
pub const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// The longest initialized extent (ee_len values above it mean "uninitialized").
pub const EXT_INIT_MAX_LEN: u64 = 32768;
/// Entries in the root node (60 bytes - 12-byte header) / 12.
pub const ROOT_ENTRIES: usize = 4;
/// Entries in a block node: (4096 - 12-byte header - 4-byte tail) / 12.
pub const BLOCK_ENTRIES: usize = 340;
const HEADER: usize = 12;
const ENTRY: usize = 12;
/// `struct ext4_extent_tail` sits right after `eh_max` entries.
const TAIL_OFFSET: usize = HEADER + ENTRY * BLOCK_ENTRIES;

/// One run of contiguous blocks: `len` logical blocks from `logical` map to `physical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u32,
    pub len: u16,
    pub physical: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entries {
    Leaf(Vec<Extent>),
    /// (first logical block covered, block of the child node).
    Index(Vec<(u32, u64)>),
}

impl Entries {
    fn first_logical(&self) -> u32 {
        match self {
            Entries::Leaf(e) => e.first().map_or(0, |e| e.logical),
            Entries::Index(e) => e.first().map_or(0, |e| e.0),
        }
    }
}

/// A node stored in a block of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub block: u64,
    pub depth: u16,
    pub entries: Entries,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentTree {
    pub depth: u16,
    pub root: Entries,
    pub nodes: Vec<Node>,
}

/// Blocks the tree over `extents` extents needs outside the inode.
pub fn node_blocks_needed(extents: usize) -> u64 {
    if extents <= ROOT_ENTRIES {
        return 0;
    }
    let mut level = extents.div_ceil(BLOCK_ENTRIES);
    let mut total = level;
    while level > ROOT_ENTRIES {
        level = level.div_ceil(BLOCK_ENTRIES);
        total += level;
    }
    total as u64
}

/// Builds the tree, placing its nodes in `node_blocks` (as many as [`node_blocks_needed`]),
/// leaves first.
pub fn build(extents: Vec<Extent>, node_blocks: &[u64]) -> ExtentTree {
    debug_assert_eq!(node_blocks.len() as u64, node_blocks_needed(extents.len()));
    if extents.len() <= ROOT_ENTRIES {
        return ExtentTree { depth: 0, root: Entries::Leaf(extents), nodes: Vec::new() };
    }
    let mut blocks = node_blocks.iter().copied();
    let mut nodes = Vec::new();
    let mut level: Vec<Entries> = extents.chunks(BLOCK_ENTRIES).map(|c| Entries::Leaf(c.to_vec())).collect();
    let mut depth = 0u16;
    loop {
        let mut parents = Vec::with_capacity(level.len());
        for entries in level {
            let block = blocks.next().expect("node_blocks_needed blocks");
            parents.push((entries.first_logical(), block));
            nodes.push(Node { block, depth, entries });
        }
        depth += 1;
        if parents.len() <= ROOT_ENTRIES {
            return ExtentTree { depth, root: Entries::Index(parents), nodes };
        }
        level = parents.chunks(BLOCK_ENTRIES).map(|c| Entries::Index(c.to_vec())).collect();
    }
}

fn write_node(buf: &mut [u8], entries: &Entries, max: usize, depth: u16) {
    let count = match entries {
        Entries::Leaf(e) => e.len(),
        Entries::Index(e) => e.len(),
    };
    put_u16(buf, 0, EXT4_EXT_MAGIC);
    put_u16(buf, 2, count as u16);
    put_u16(buf, 4, max as u16);
    put_u16(buf, 6, depth);
    match entries {
        Entries::Leaf(extents) => {
            for (i, e) in extents.iter().enumerate() {
                let at = HEADER + ENTRY * i;
                put_u32(buf, at, e.logical);
                put_u16(buf, at + 4, e.len);
                put_u16(buf, at + 6, (e.physical >> 32) as u16);
                put_u32(buf, at + 8, e.physical as u32);
            }
        }
        Entries::Index(children) => {
            for (i, &(logical, block)) in children.iter().enumerate() {
                let at = HEADER + ENTRY * i;
                put_u32(buf, at, logical);
                put_u32(buf, at + 4, block as u32);
                put_u16(buf, at + 8, (block >> 32) as u16);
            }
        }
    }
}

impl ExtentTree {
    /// The 60 bytes of `i_block`.
    pub fn root_bytes(&self) -> [u8; 60] {
        let mut b = [0u8; 60];
        write_node(&mut b, &self.root, ROOT_ENTRIES, self.depth);
        b
    }
}

/// A node block with its checksum tail (crc32c of the node under the inode's seed).
pub fn node_block(node: &Node, inode_seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    write_node(&mut b, &node.entries, BLOCK_ENTRIES, node.depth);
    let crc = crc32c_raw(inode_seed, &b[..TAIL_OFFSET]);
    put_u32(&mut b, TAIL_OFFSET, crc);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extents(n: usize) -> Vec<Extent> {
        (0..n).map(|i| Extent { logical: 2 * i as u32, len: 1, physical: 1000 + 2 * i as u64 }).collect()
    }

    #[test]
    fn small_trees_stay_in_the_inode() {
        assert_eq!(node_blocks_needed(0), 0);
        assert_eq!(node_blocks_needed(4), 0);
        let t = build(extents(4), &[]);
        assert_eq!(t.depth, 0);
    }

    #[test]
    fn index_levels_grow_with_the_extent_count() {
        assert_eq!(node_blocks_needed(5), 1);
        assert_eq!(node_blocks_needed(340 * 4), 4);
        assert_eq!(node_blocks_needed(340 * 4 + 1), 5 + 1);
        let n = 340 * 5;
        let need = node_blocks_needed(n);
        let blocks: Vec<u64> = (0..need).map(|i| 10 + i).collect();
        let t = build(extents(n), &blocks);
        assert_eq!(t.depth, 2);
        assert_eq!(t.nodes.len() as u64, need);
        let Entries::Index(root) = &t.root else { panic!("index root") };
        assert_eq!(root.len(), 1);
        assert_eq!(root[0], (0, 15));
    }
}
