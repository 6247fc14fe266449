//! The layout planner: from a tree and options to every block's and inode's place, as plain
//! data, before a byte is written.
//!
//! Two steps. `shape` is independent of the image size: inode numbers (root 2, lost+found
//! 11, then the tree's walk order), link counts, directory sizes, xattr placement.
//! `allocate` then lays the image out for one block count:
//!
//! ```text
//! block 0       superblock + group descriptors
//! 1 MiB         file data, lower layers first; files >= 1 MiB start on a MiB
//! next MiB      bitmaps, inode tables, directory / extent-index / symlink / xattr blocks
//! then          the journal, free space; one backup superblock at the last group's start
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

use super::dir::{self, DirEntry};
use super::extent::{self, Extent, ExtentTree, EXT_INIT_MAX_LEN};
use super::htree;
use super::inode::{self, EXT4_LINK_MAX};
use super::journal;
use super::xattr;
use super::{Ext4Error, Options, SizeSpec};
use crate::tree::{Content, FsTree, NodeId, NodeKind};

pub const BLOCK_SIZE: u64 = 4096;
/// One block bitmap (4096 bytes = 32768 bits) covers a group.
pub const BLOCKS_PER_GROUP: u64 = 32768;
pub const INODES_PER_BLOCK: u64 = BLOCK_SIZE / inode::INODE_SIZE as u64;
/// super.rst: the first inode number not reserved for the filesystem itself.
pub const EXT4_FIRST_INO: u32 = 11;
pub const ROOT_INO: u32 = 2;
pub const JOURNAL_INO: u32 = 8;
/// Data starts at 1 MiB, whatever the image size, and large files are aligned to a MiB.
const DATA_START: u64 = 256;
pub const DATA_START_BYTES: u64 = DATA_START * BLOCK_SIZE;
const ALIGN: u64 = 256;
const ALIGN_FILES_FROM: u64 = 1 << 20;
/// 2^32 logical blocks of 4 KiB: the largest ext4 file with extents.
const MAX_FILE_SIZE: u64 = (1 << 32) * BLOCK_SIZE;
/// 64bit block numbers reach far beyond this; diskc keeps descriptors below 1 MiB.
const MAX_BLOCKS: u64 = (DATA_START - 1) * (BLOCK_SIZE / 64) * BLOCKS_PER_GROUP;

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
    Inline([u8; 60]),
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

fn leaf_extents(t: &ExtentTree) -> &[Extent] {
    match &t.root {
        extent::Entries::Leaf(e) => e,
        extent::Entries::Index(_) => &[],
    }
}

/// Every leaf extent of an inode, in logical order, whatever the tree depth.
pub fn all_extents(p: &InodePlan) -> Vec<Extent> {
    match &p.map {
        Mapping::Extents(t) if t.depth == 0 => leaf_extents(t).to_vec(),
        Mapping::Extents(t) => t
            .nodes
            .iter()
            .filter_map(|n| match &n.entries {
                extent::Entries::Leaf(e) => Some(e.iter().copied()),
                extent::Entries::Index(_) => None,
            })
            .flatten()
            .collect(),
        _ => Vec::new(),
    }
}

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
    pub fn inodes_count(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.inodes_per_group)
    }

    pub fn backup_groups(&self) -> Vec<u32> {
        self.backup_group.into_iter().collect()
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

/// What an inode needs, before blocks are placed.
#[derive(Clone, Debug)]
enum Need {
    Nothing,
    Inline([u8; 60]),
    /// A regular file: its data runs come from the tree.
    File(NodeId),
    /// A regular file whose data is already in the image, at these extents.
    Placed(NodeId, Vec<Extent>),
    /// Blocks 0..n of metadata content (directories, slow symlinks).
    Blocks(u64),
}

#[derive(Clone, Debug)]
struct Shape {
    ino: u32,
    role: Role,
    mode: u16,
    links: u16,
    size: u64,
    need: Need,
    xattr_block: bool,
    xattr_inode: bool,
    layer: u32,
    indexed: bool,
}

/// Everything about the tree the layout needs, computed once.
struct Shapes {
    shapes: Vec<Shape>,
    ino_of: Vec<u32>,
    parent_of: Vec<u32>,
    lost_found: Role,
    max_ino: u32,
    data_blocks: u64,
    meta_blocks: u64,
    /// The end of the data already in the image (0: none), a multiple of ALIGN.
    placed_end: u64,
}

/// Plans the image for `tree` under `options`.
pub fn plan<C: Content>(
    tree: &FsTree<C>,
    options: &Options,
    hash_seed: &[u32; 4],
) -> Result<Plan, Ext4Error> {
    let shapes = shape(tree, hash_seed, options.data_in_place)?;
    let journal = options.journal;
    match options.size {
        SizeSpec::Bytes(bytes) => {
            let blocks = bytes / BLOCK_SIZE;
            match allocate(tree, &shapes, blocks, journal, options.inode_headroom_percent) {
                // Name the smallest size that works, not just the first shortfall found.
                Err(Ext4Error::TooSmall { size, .. }) => {
                    let fit = Options {
                        size: SizeSpec::Auto { headroom_percent: 0, min_free_bytes: 0 },
                        ..options.clone()
                    };
                    let needed = plan(tree, &fit, hash_seed)?.geo.blocks_count * BLOCK_SIZE;
                    Err(Ext4Error::TooSmall { size, needed })
                }
                other => other,
            }
        }
        SizeSpec::Auto { headroom_percent, min_free_bytes } => {
            let want = |used: u64| {
                let grown = used * (100 + u64::from(headroom_percent)) / 100;
                grown.max(used + min_free_bytes.div_ceil(BLOCK_SIZE)).next_multiple_of(ALIGN)
            };
            // A first guess from the content; each round sizes the image from what the
            // previous layout used, growing monotonically, so it settles in a few rounds.
            let inode_blocks = u64::from(shapes.max_ino).div_ceil(INODES_PER_BLOCK) * 2;
            let mut blocks = want(
                DATA_START.max(shapes.placed_end) + shapes.data_blocks + shapes.meta_blocks + inode_blocks,
            );
            loop {
                match allocate(tree, &shapes, blocks, journal, options.inode_headroom_percent) {
                    Ok(plan) if blocks >= want(plan.blocks_used()) => return Ok(plan),
                    Ok(plan) => blocks = want(plan.blocks_used()).max(blocks + ALIGN),
                    Err(Ext4Error::TooSmall { needed, .. }) => {
                        blocks = want(needed.div_ceil(BLOCK_SIZE)).max(blocks + ALIGN)
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

fn file_type_bits<C>(kind: &NodeKind<C>) -> u16 {
    match kind {
        NodeKind::Directory(_) => inode::S_IFDIR,
        NodeKind::File(_) => inode::S_IFREG,
        NodeKind::Symlink(_) => inode::S_IFLNK,
        NodeKind::CharDevice(_) => inode::S_IFCHR,
        NodeKind::BlockDevice(_) => inode::S_IFBLK,
        NodeKind::Fifo => inode::S_IFIFO,
        NodeKind::Socket => inode::S_IFSOCK,
    }
}

pub fn dir_file_type<C>(kind: &NodeKind<C>) -> u8 {
    match kind {
        NodeKind::Directory(_) => dir::EXT4_FT_DIR,
        NodeKind::File(_) => dir::EXT4_FT_REG_FILE,
        NodeKind::Symlink(_) => dir::EXT4_FT_SYMLINK,
        NodeKind::CharDevice(_) => dir::EXT4_FT_CHRDEV,
        NodeKind::BlockDevice(_) => dir::EXT4_FT_BLKDEV,
        NodeKind::Fifo => dir::EXT4_FT_FIFO,
        NodeKind::Socket => dir::EXT4_FT_SOCK,
    }
}

pub const LOST_FOUND: &[u8] = b"lost+found";

/// The entries of a directory inode in on-disk order: `.`, `..`, then by name (the root
/// gains lost+found when diskc makes it).
pub fn dir_entries<'t, C>(
    tree: &'t FsTree<C>,
    ino_of: &[u32],
    parent_of: &[u32],
    lost_found: Role,
    role: Role,
) -> Vec<DirEntry<'t>> {
    let dot = |ino| DirEntry { name: b".", ino, file_type: dir::EXT4_FT_DIR };
    let dotdot = |ino| DirEntry { name: b"..", ino, file_type: dir::EXT4_FT_DIR };
    let id = match role {
        Role::Node(id) => id,
        // A fresh lost+found is empty.
        _ => return vec![dot(EXT4_FIRST_INO), dotdot(ROOT_INO)],
    };
    let ino = ino_of[id.0 as usize];
    let dir = tree.get(id).as_dir().expect("directory role");
    let mut out = Vec::with_capacity(dir.entries.len() + 3);
    out.push(dot(ino));
    out.push(dotdot(parent_of[id.0 as usize]));
    let mut extra = (id == FsTree::<C>::ROOT && lost_found == Role::LostFound).then_some(DirEntry {
        name: LOST_FOUND,
        ino: EXT4_FIRST_INO,
        file_type: dir::EXT4_FT_DIR,
    });
    for (name, &child) in &dir.entries {
        if let Some(lf) = extra.filter(|lf| lf.name < name.as_slice()) {
            out.push(lf);
            extra = None;
        }
        let node = tree.get(child);
        out.push(DirEntry { name, ino: ino_of[child.0 as usize], file_type: dir_file_type(&node.kind) });
    }
    out.extend(extra);
    out
}

/// The path of a node, for error messages only (it walks the tree).
pub fn path_of<C>(tree: &FsTree<C>, id: NodeId) -> String {
    tree.path_of(id)
        .map(|p| format!("/{}", String::from_utf8_lossy(&p)))
        .unwrap_or_else(|| format!("node {}", id.0))
}

fn shape<C: Content>(
    tree: &FsTree<C>,
    hash_seed: &[u32; 4],
    data_in_place: bool,
) -> Result<Shapes, Ext4Error> {
    let walk = tree.walk_ids();
    let n = tree.arena_len();
    let mut ino_of = vec![0u32; n];
    let mut parent_of = vec![0u32; n];
    let root = FsTree::<C>::ROOT;
    ino_of[root.0 as usize] = ROOT_INO;
    let lost_found = match tree.child(root, LOST_FOUND) {
        Some(id) if tree.get(id).is_dir() => {
            ino_of[id.0 as usize] = EXT4_FIRST_INO;
            Role::Node(id)
        }
        Some(_) => return Err(Ext4Error::LostFoundNotDirectory),
        None => Role::LostFound,
    };
    let mut next = EXT4_FIRST_INO + 1;
    for id in &walk {
        let slot = &mut ino_of[id.0 as usize];
        if *slot == 0 {
            *slot = next;
            next = next.checked_add(1).ok_or(Ext4Error::TooManyInodes(u64::MAX))?;
        }
    }
    let max_ino = next - 1;
    parent_of[root.0 as usize] = ROOT_INO;
    for id in &walk {
        if let Some(d) = tree.get(*id).as_dir() {
            for &child in d.entries.values() {
                if tree.get(child).is_dir() {
                    parent_of[child.0 as usize] = ino_of[id.0 as usize];
                }
            }
        }
    }
    let links = tree.link_counts();
    let mut shapes = Vec::with_capacity(max_ino as usize);
    let mut data_blocks = 0u64;
    let mut meta_blocks = 0u64;
    let mut seen = vec![false; n];
    let mut by_ino: Vec<(u32, NodeId)> = Vec::with_capacity(max_ino as usize);
    for id in &walk {
        if !std::mem::replace(&mut seen[id.0 as usize], true) {
            by_ino.push((ino_of[id.0 as usize], *id));
        }
    }
    by_ino.sort_unstable();
    if lost_found == Role::LostFound {
        let need = Need::Blocks(1);
        meta_blocks += 1;
        shapes.push(Shape {
            ino: EXT4_FIRST_INO,
            role: Role::LostFound,
            mode: inode::S_IFDIR | 0o700,
            links: 2,
            size: BLOCK_SIZE,
            need,
            xattr_block: false,
            xattr_inode: false,
            layer: 0,
            indexed: false,
        });
    }
    for (ino, id) in by_ino {
        let node = tree.get(id);
        let path = || path_of(tree, id);
        let mut count = links[id.0 as usize];
        if id == root && lost_found == Role::LostFound {
            count += 1;
        }
        let links = if node.is_dir() {
            // dir_nlink: a directory with too many subdirectories counts 1.
            if count >= EXT4_LINK_MAX {
                1
            } else {
                count as u16
            }
        } else if count > EXT4_LINK_MAX {
            return Err(Ext4Error::TooManyLinks { path: path(), links: count });
        } else {
            count as u16
        };
        let mut indexed = false;
        let (need, size, layer) = match &node.kind {
            NodeKind::File(f) => {
                if f.size > MAX_FILE_SIZE {
                    return Err(Ext4Error::FileTooLarge { path: path(), size: f.size });
                }
                let blocks = f.size.div_ceil(BLOCK_SIZE);
                if f.data_blocks.iter().any(|r| r.start >= r.end || r.end > blocks) {
                    return Err(Ext4Error::BadDataRuns(path()));
                }
                let placed = if data_in_place { f.content.placed() } else { None };
                match placed {
                    Some(starts) if starts.len() == f.data_blocks.len() => {
                        let mut extents = Vec::new();
                        for (run, start) in f.data_blocks.iter().zip(starts) {
                            push_extents(&mut extents, run.start, start, run.end - run.start);
                        }
                        (Need::Placed(id, extents), f.size, f.content.layer())
                    }
                    _ => {
                        data_blocks += f.data_block_count();
                        (Need::File(id), f.size, f.content.layer())
                    }
                }
            }
            NodeKind::Directory(_) => {
                let entries = dir_entries(tree, &ino_of, &parent_of, lost_found, Role::Node(id));
                let mut blocks = dir::pack(entries.iter().map(|e| e.name.len())).len() as u64;
                // Like the kernel, index a directory once it outgrows one block.
                if blocks > 1 {
                    if let Some(n) = htree::indexed_block_count(&entries[2..], hash_seed) {
                        blocks = n;
                        indexed = true;
                    }
                }
                meta_blocks += blocks;
                (Need::Blocks(blocks), blocks * BLOCK_SIZE, 0)
            }
            NodeKind::Symlink(target) => {
                let len = target.len();
                if len == 0 || len > 4095 {
                    return Err(Ext4Error::SymlinkLength { path: path(), len });
                }
                if len < 60 {
                    // inodes.rst: a target shorter than 60 bytes lives in i_block.
                    let mut inline = [0u8; 60];
                    inline[..len].copy_from_slice(target);
                    (Need::Inline(inline), len as u64, 0)
                } else {
                    meta_blocks += 1;
                    (Need::Blocks(1), len as u64, 0)
                }
            }
            NodeKind::CharDevice(d) | NodeKind::BlockDevice(d) => {
                (Need::Inline(encode_device(d.major, d.minor)), 0, 0)
            }
            NodeKind::Fifo | NodeKind::Socket => (Need::Nothing, 0, 0),
        };
        let entries =
            xattr::entries(&node.meta.xattrs).map_err(|e| Ext4Error::Xattr { path: path(), source: e })?;
        let (xattr_inode, xattr_block) = if entries.is_empty() {
            (false, false)
        } else if xattr::fits_in_inode(&entries) {
            (true, false)
        } else if xattr::fits_in_block(&entries) {
            meta_blocks += 1;
            (false, true)
        } else {
            return Err(Ext4Error::XattrsTooLarge(path()));
        };
        shapes.push(Shape {
            ino,
            role: Role::Node(id),
            mode: file_type_bits(&node.kind) | (node.meta.mode & 0o7777),
            links,
            size,
            need,
            xattr_block,
            xattr_inode,
            layer,
            indexed,
        });
    }
    shapes.sort_by_key(|s| s.ino);
    let placed_end = keep_placed_apart(tree, &mut shapes, &mut data_blocks);
    Ok(Shapes { shapes, ino_of, parent_of, lost_found, max_ino, data_blocks, meta_blocks, placed_end })
}

/// Files already in the image keep their blocks, unless two claim the same block or one
/// lies before the data area: those are placed and copied like any other file. Returns
/// where the data in place ends.
fn keep_placed_apart<C: Content>(tree: &FsTree<C>, shapes: &mut [Shape], data_blocks: &mut u64) -> u64 {
    let mut claims: Vec<(u64, u64, usize)> = Vec::new();
    for (i, sh) in shapes.iter().enumerate() {
        if let Need::Placed(_, extents) = &sh.need {
            claims.extend(extents.iter().map(|e| (e.physical, e.physical + u64::from(e.len), i)));
        }
    }
    claims.sort_unstable();
    let mut refused = vec![false; shapes.len()];
    let mut furthest: Option<(u64, usize)> = None;
    for &(start, end, i) in &claims {
        if start < DATA_START {
            refused[i] = true;
        }
        match furthest {
            Some((reach, j)) if start < reach => {
                refused[i] = true;
                refused[j] = true;
                if end > reach {
                    furthest = Some((end, i));
                }
            }
            _ => furthest = Some((end, i)),
        }
    }
    let mut placed_end = 0;
    for (sh, refused) in shapes.iter_mut().zip(refused) {
        if let Need::Placed(id, extents) = &sh.need {
            if refused {
                let NodeKind::File(f) = &tree.get(*id).kind else { unreachable!("placed data of a file") };
                *data_blocks += f.data_block_count();
                sh.need = Need::File(*id);
            } else {
                let end = extents.iter().map(|e| e.physical + u64::from(e.len)).max().unwrap_or(0);
                placed_end = placed_end.max(end);
            }
        }
    }
    placed_end.next_multiple_of(ALIGN)
}

/// inodes.rst, "Device numbers": the old 16-bit form in i_block[0] when both parts fit a
/// byte, else the new 32-bit form in i_block[1].
fn encode_device(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        b[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
        b[4..8].copy_from_slice(&new.to_le_bytes());
    }
    b
}

/// Hands out blocks from a cursor that only moves forward, stepping over the superblock
/// backups.
struct Allocator {
    cursor: u64,
    reserved: Vec<Range<u64>>,
    used: Vec<Range<u64>>,
}

impl Allocator {
    fn mark(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        match self.used.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => self.used.push(r),
        }
    }

    /// The reserved range that the cursor sits in or that starts next.
    fn next_reserved(&self) -> Option<Range<u64>> {
        self.reserved.iter().find(|r| r.end > self.cursor).cloned()
    }

    fn align(&mut self, to: u64) {
        self.cursor = self.cursor.next_multiple_of(to);
    }

    /// `n` blocks, in as few pieces as the reserved ranges allow.
    fn alloc(&mut self, mut n: u64) -> Vec<Range<u64>> {
        let mut pieces = Vec::new();
        while n > 0 {
            let limit = match self.next_reserved() {
                Some(r) if r.start <= self.cursor => {
                    self.cursor = r.end;
                    continue;
                }
                Some(r) => r.start,
                None => u64::MAX,
            };
            let take = n.min(limit - self.cursor);
            let piece = self.cursor..self.cursor + take;
            self.mark(piece.clone());
            pieces.push(piece);
            self.cursor += take;
            n -= take;
        }
        pieces
    }

    /// `n` contiguous blocks.
    fn alloc_contiguous(&mut self, n: u64) -> u64 {
        while let Some(r) = self.next_reserved() {
            if r.start >= self.cursor + n {
                break;
            }
            self.cursor = r.end;
        }
        let start = self.cursor;
        self.mark(start..start + n);
        self.cursor += n;
        start
    }
}

/// Appends the mapping of `len` logical blocks at `logical` to `physical`, merging with the
/// previous extent when both continue it and splitting at the extent length limit.
fn push_extents(extents: &mut Vec<Extent>, mut logical: u64, mut physical: u64, mut len: u64) {
    while len > 0 {
        if let Some(last) = extents.last_mut() {
            let (l_end, p_end) =
                (u64::from(last.logical) + u64::from(last.len), last.physical + u64::from(last.len));
            if l_end == logical && p_end == physical && u64::from(last.len) < EXT_INIT_MAX_LEN {
                let take = len.min(EXT_INIT_MAX_LEN - u64::from(last.len));
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

/// Maps logical blocks 0..n to freshly allocated blocks.
fn alloc_blocks(a: &mut Allocator, n: u64) -> Vec<Extent> {
    let mut extents = Vec::new();
    let mut logical = 0;
    for piece in a.alloc(n) {
        push_extents(&mut extents, logical, piece.start, piece.end - piece.start);
        logical += piece.end - piece.start;
    }
    extents
}

fn build_tree(a: &mut Allocator, extents: Vec<Extent>) -> (ExtentTree, u64) {
    let need = extent::node_blocks_needed(extents.len());
    let blocks: Vec<u64> = a.alloc(need).into_iter().flatten().collect();
    (extent::build(extents, &blocks), need)
}

fn allocate<C: Content>(
    tree: &FsTree<C>,
    s: &Shapes,
    blocks_count: u64,
    journal: bool,
    inode_headroom_percent: u32,
) -> Result<Plan, Ext4Error> {
    let size = blocks_count * BLOCK_SIZE;
    if blocks_count > MAX_BLOCKS {
        return Err(Ext4Error::TooLarge { size, max: MAX_BLOCKS * BLOCK_SIZE });
    }
    let too_small = |needed_blocks: u64| Ext4Error::TooSmall { size, needed: needed_blocks * BLOCK_SIZE };
    if blocks_count < DATA_START + 64 {
        return Err(too_small(DATA_START + 64));
    }
    let groups = blocks_count.div_ceil(BLOCKS_PER_GROUP) as u32;
    let gdt_blocks = (u64::from(groups) * 64).div_ceil(BLOCK_SIZE);
    let used_inodes = u64::from(s.max_ino);
    let wanted = (used_inodes * (100 + u64::from(inode_headroom_percent)) / 100).max(blocks_count / 4);
    let max_ipg = BLOCKS_PER_GROUP; // one bitmap block
    let ipg = wanted
        .div_ceil(u64::from(groups))
        .next_multiple_of(INODES_PER_BLOCK)
        .clamp(INODES_PER_BLOCK, max_ipg);
    if ipg * u64::from(groups) < used_inodes {
        // Each group holds at most 32768 inodes: this many files need more groups.
        return Err(too_small(used_inodes.div_ceil(max_ipg) * BLOCKS_PER_GROUP));
    }
    if ipg * u64::from(groups) > u64::from(u32::MAX) {
        return Err(Ext4Error::TooManyInodes(ipg * u64::from(groups)));
    }
    // One backup, at the start of the last group, unless data already in the image is there.
    let last = groups - 1;
    let backup_group = (last > 0 && u64::from(last) * BLOCKS_PER_GROUP >= s.placed_end).then_some(last);
    let geo = Geometry {
        blocks_count,
        groups,
        gdt_blocks,
        inodes_per_group: ipg as u32,
        itable_blocks: ipg / INODES_PER_BLOCK,
        backup_group,
    };
    let mut reserved: Vec<Range<u64>> = std::iter::once(0..1 + gdt_blocks).collect();
    for g in geo.backup_groups() {
        let start = u64::from(g) * BLOCKS_PER_GROUP;
        reserved.push(start..start + 1 + gdt_blocks);
    }
    let mut a = Allocator {
        cursor: DATA_START.max((1 + gdt_blocks).next_multiple_of(ALIGN)).max(s.placed_end),
        reserved,
        used: Vec::new(),
    };
    let reserved = a.reserved.clone();

    // File data, lower layers first, then by inode number (the walk order).
    let mut files: Vec<(u32, u32, NodeId, usize)> = s
        .shapes
        .iter()
        .enumerate()
        .filter_map(|(i, sh)| match sh.need {
            Need::File(id) => Some((sh.layer, sh.ino, id, i)),
            _ => None,
        })
        .collect();
    files.sort_unstable();
    let mut file_extents: Vec<Option<Vec<Extent>>> = vec![None; s.shapes.len()];
    for &(_, _, id, i) in &files {
        let NodeKind::File(f) = &tree.get(id).kind else { unreachable!("file need on a file") };
        if f.size >= ALIGN_FILES_FROM && !f.data_blocks.is_empty() {
            a.align(ALIGN);
        }
        let mut extents = Vec::new();
        for run in &f.data_blocks {
            let mut logical = run.start;
            for piece in a.alloc(run.end - run.start) {
                push_extents(&mut extents, logical, piece.start, piece.end - piece.start);
                logical += piece.end - piece.start;
            }
        }
        file_extents[i] = Some(extents);
    }

    // Group metadata.
    a.align(ALIGN);
    let block_bitmaps: Vec<u64> = (0..groups).map(|_| a.alloc_contiguous(1)).collect();
    let inode_bitmaps: Vec<u64> = (0..groups).map(|_| a.alloc_contiguous(1)).collect();
    let inode_tables: Vec<u64> = (0..groups).map(|_| a.alloc_contiguous(geo.itable_blocks)).collect();

    // Per-inode metadata, by inode number.
    let journal_blocks = if journal { journal::default_blocks(blocks_count) } else { 0 };
    let mut inodes = Vec::with_capacity(s.shapes.len() + 2);
    let mut journal_plan = None;
    if journal {
        let extents = alloc_blocks(&mut a, journal_blocks);
        let (tree, nodes) = build_tree(&mut a, extents);
        journal_plan = Some(InodePlan {
            ino: JOURNAL_INO,
            role: Role::Journal,
            mode: inode::S_IFREG | 0o600,
            links: 1,
            size: journal_blocks * BLOCK_SIZE,
            map: Mapping::Extents(tree),
            xattr: XattrPlace::None,
            blocks: journal_blocks + nodes,
            indexed: false,
            data_in_place: false,
        });
    }
    for (i, sh) in s.shapes.iter().enumerate() {
        let (map, mut blocks) = match &sh.need {
            Need::Nothing => (Mapping::None, 0),
            Need::Inline(b) => (Mapping::Inline(*b), 0),
            Need::File(_) => {
                let extents = file_extents[i].take().expect("file extents planned");
                let data: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
                let (tree, nodes) = build_tree(&mut a, extents);
                (Mapping::Extents(tree), data + nodes)
            }
            Need::Placed(_, extents) => {
                for e in extents {
                    a.mark(e.physical..e.physical + u64::from(e.len));
                }
                let data: u64 = extents.iter().map(|e| u64::from(e.len)).sum();
                let (tree, nodes) = build_tree(&mut a, extents.clone());
                (Mapping::Extents(tree), data + nodes)
            }
            Need::Blocks(n) => {
                let extents = alloc_blocks(&mut a, *n);
                let (tree, nodes) = build_tree(&mut a, extents);
                (Mapping::Extents(tree), n + nodes)
            }
        };
        let xattr = if sh.xattr_block {
            blocks += 1;
            XattrPlace::Block(a.alloc_contiguous(1))
        } else if sh.xattr_inode {
            XattrPlace::Inode
        } else {
            XattrPlace::None
        };
        inodes.push(InodePlan {
            ino: sh.ino,
            role: sh.role,
            mode: sh.mode,
            links: sh.links,
            size: sh.size,
            map,
            xattr,
            blocks,
            indexed: sh.indexed,
            data_in_place: matches!(sh.need, Need::Placed(..)),
        });
    }
    inodes.extend(journal_plan);
    inodes.sort_by_key(|p| p.ino);
    if a.cursor > blocks_count {
        return Err(too_small(a.cursor));
    }

    let mut used = a.used;
    used.extend(reserved);
    used.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(used.len());
    for r in used {
        match merged.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    Ok(Plan {
        geo,
        inodes,
        ino_of: s.ino_of.clone(),
        parent_of: s.parent_of.clone(),
        lost_found: s.lost_found,
        block_bitmaps,
        inode_bitmaps,
        inode_tables,
        used: merged,
        max_ino: s.max_ino,
        journal_blocks,
    })
}

#[cfg(test)]
mod tests {
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
        let over = Shapes { placed_end: 4 * BLOCKS_PER_GROUP + 1, ..shape(&tree, &[0; 4], false).unwrap() };
        let plan = allocate(&tree, &over, 6 * BLOCKS_PER_GROUP, false, 0).unwrap();
        assert_eq!(plan.geo.backup_group, Some(5));
        let plan = allocate(&tree, &over, 5 * BLOCKS_PER_GROUP, false, 0).unwrap();
        assert_eq!(plan.geo.backup_group, None);
    }

    #[test]
    fn extents_merge_and_split_at_the_length_limit() {
        let mut e = Vec::new();
        push_extents(&mut e, 0, 100, 10);
        push_extents(&mut e, 10, 110, 32768);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].len, e[1].logical, e[1].len), (32768, 32768, 10));
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
