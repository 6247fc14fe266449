//! What each inode needs, whatever the image size: its number (root 2, lost+found 11, then
//! the tree's walk order), link count, `i_size`, the blocks its content takes (file data,
//! directory blocks, a slow symlink's target) and where its xattrs go. The allocator then
//! places all of it for one image size.

use super::super::dir::{self, LOST_FOUND};
use super::super::extent::Extent;
use super::super::htree;
use super::super::inode::{self, EXT4_LINK_MAX, I_BLOCK_LEN};
use super::super::xattr;
use super::super::Ext4Error;
use super::geometry::{ALIGN_BLOCKS, BLOCK_SIZE, DATA_START, MAX_FILE_SIZE};
use super::{path_of, push_extents, Role, EXT4_FIRST_INO, ROOT_INO};
use crate::tree::{Content, FileData, FsTree, Node, NodeId, NodeKind};

/// The longest symlink target: ext4_symlink() refuses one that does not fit a block with
/// its NUL.
const MAX_SYMLINK_LEN: usize = BLOCK_SIZE as usize - 1;

/// What an inode's content needs, before blocks are placed.
#[derive(Clone, Debug)]
pub(super) enum Need {
    Nothing,
    Inline([u8; I_BLOCK_LEN]),
    /// A regular file: its data runs come from the tree.
    File(NodeId),
    /// A regular file whose data is already in the image, at these extents.
    Placed(NodeId, Vec<Extent>),
    /// Blocks 0..n of metadata content (directories, slow symlinks).
    Blocks(u64),
}

/// Where an inode's xattrs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum XattrNeed {
    None,
    /// In the space after the inode's extra fields.
    InInode,
    /// In a block of their own.
    Block,
}

/// One inode, before blocks are placed.
#[derive(Clone, Debug)]
pub(super) struct InodeShape {
    pub ino: u32,
    pub role: Role,
    /// File type and permission bits.
    pub mode: u16,
    pub links: u16,
    pub size: u64,
    pub need: Need,
    pub xattr: XattrNeed,
    /// The image layer the file data comes from: lower layers' data is placed first.
    pub layer: u32,
    /// A directory with a hash index (htree).
    pub indexed: bool,
}

/// Everything about the tree the layout needs, computed once.
#[derive(Clone, Debug)]
pub(super) struct TreeShape {
    /// By inode number.
    pub inodes: Vec<InodeShape>,
    /// The inode number of each tree node (0: unreachable).
    pub ino_of: Vec<u32>,
    /// The parent directory's inode number, for directory nodes.
    pub parent_of: Vec<u32>,
    pub lost_found: Role,
    pub max_ino: u32,
    /// File data blocks to place.
    pub data_blocks: u64,
    /// Directory, symlink and xattr blocks to place.
    pub meta_blocks: u64,
    /// The end of the data already in the image (0: none), a multiple of [`ALIGN_BLOCKS`].
    pub placed_end: u64,
}

/// Shapes every inode of `tree`. With `data_in_place`, files whose data knows its place in
/// the image keep it.
pub(super) fn shape<C: Content>(
    tree: &FsTree<C>,
    hash_seed: &[u32; 4],
    data_in_place: bool,
) -> Result<TreeShape, Ext4Error> {
    let walk: Vec<NodeId> = tree.walk_ids();
    let Numbering { ino_of, lost_found, max_ino } = number_inodes(tree, &walk)?;
    let parent_of = parent_inodes(tree, &walk, &ino_of);
    let shaper = Shaper {
        tree,
        ino_of: &ino_of,
        parent_of: &parent_of,
        lost_found,
        link_counts: tree.link_counts(),
        hash_seed,
        data_in_place,
    };
    let mut inodes = Vec::with_capacity(max_ino as usize);
    if lost_found == Role::LostFound {
        inodes.push(fresh_lost_found());
    }
    for (ino, id) in nodes_by_inode(&walk, &ino_of) {
        inodes.push(shaper.shape_node(ino, id)?);
    }
    inodes.sort_by_key(|s| s.ino);
    let placed_end = keep_placed_apart(&mut inodes);
    let (data_blocks, meta_blocks) = blocks_to_place(tree, &inodes);
    Ok(TreeShape { inodes, ino_of, parent_of, lost_found, max_ino, data_blocks, meta_blocks, placed_end })
}

struct Numbering {
    ino_of: Vec<u32>,
    lost_found: Role,
    max_ino: u32,
}

/// Root is inode 2 and a lost+found of the tree inode 11 (the first one not reserved);
/// every other node takes the next number in walk order, hard links the number of their
/// first path.
fn number_inodes<C>(tree: &FsTree<C>, walk: &[NodeId]) -> Result<Numbering, Ext4Error> {
    let mut ino_of = vec![0u32; tree.arena_len()];
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
    for id in walk {
        let ino = &mut ino_of[id.0 as usize];
        if *ino == 0 {
            *ino = next;
            next = next.checked_add(1).ok_or(Ext4Error::TooManyInodes(u64::MAX))?;
        }
    }
    Ok(Numbering { ino_of, lost_found, max_ino: next - 1 })
}

/// The inode number of each directory's parent (the root is its own parent).
fn parent_inodes<C>(tree: &FsTree<C>, walk: &[NodeId], ino_of: &[u32]) -> Vec<u32> {
    let mut parent_of = vec![0u32; ino_of.len()];
    parent_of[FsTree::<C>::ROOT.0 as usize] = ROOT_INO;
    for &id in walk {
        let Some(dir) = tree.get(id).as_dir() else { continue };
        for &child in dir.entries.values() {
            if tree.get(child).is_dir() {
                parent_of[child.0 as usize] = ino_of[id.0 as usize];
            }
        }
    }
    parent_of
}

/// Each node once (hard links are one node), by inode number.
fn nodes_by_inode(walk: &[NodeId], ino_of: &[u32]) -> Vec<(u32, NodeId)> {
    let mut seen = vec![false; ino_of.len()];
    let mut by_ino: Vec<(u32, NodeId)> = Vec::with_capacity(walk.len());
    for &id in walk {
        if !std::mem::replace(&mut seen[id.0 as usize], true) {
            by_ino.push((ino_of[id.0 as usize], id));
        }
    }
    by_ino.sort_unstable();
    by_ino
}

/// The lost+found diskc makes when the tree has none: an empty directory of one block.
fn fresh_lost_found() -> InodeShape {
    InodeShape {
        ino: EXT4_FIRST_INO,
        role: Role::LostFound,
        mode: inode::S_IFDIR | 0o700,
        links: 2,
        size: BLOCK_SIZE,
        need: Need::Blocks(1),
        xattr: XattrNeed::None,
        layer: 0,
        indexed: false,
    }
}

/// An inode's content: what it needs, its `i_size`, where its data comes from.
struct ContentShape {
    need: Need,
    size: u64,
    layer: u32,
    indexed: bool,
}

impl ContentShape {
    fn metadata(need: Need, size: u64) -> Self {
        ContentShape { need, size, layer: 0, indexed: false }
    }
}

/// What shaping one node needs to know about the whole tree.
struct Shaper<'t, C> {
    tree: &'t FsTree<C>,
    ino_of: &'t [u32],
    parent_of: &'t [u32],
    lost_found: Role,
    link_counts: Vec<u32>,
    hash_seed: &'t [u32; 4],
    data_in_place: bool,
}

impl<C: Content> Shaper<'_, C> {
    fn shape_node(&self, ino: u32, id: NodeId) -> Result<InodeShape, Ext4Error> {
        let node = self.tree.get(id);
        let links = self.links_count(id, node)?;
        let content = match &node.kind {
            NodeKind::File(file) => self.file(id, file)?,
            NodeKind::Directory(_) => self.directory(id),
            NodeKind::Symlink(target) => self.symlink(id, target)?,
            NodeKind::CharDevice(d) | NodeKind::BlockDevice(d) => {
                ContentShape::metadata(Need::Inline(inode::encode_device(d.major, d.minor)), 0)
            }
            NodeKind::Fifo | NodeKind::Socket => ContentShape::metadata(Need::Nothing, 0),
        };
        Ok(InodeShape {
            ino,
            role: Role::Node(id),
            mode: inode::file_type_bits(&node.kind) | (node.meta.mode & 0o7777),
            links,
            size: content.size,
            need: content.need,
            xattr: self.xattr(id, node)?,
            layer: content.layer,
            indexed: content.indexed,
        })
    }

    fn path(&self, id: NodeId) -> String {
        path_of(self.tree, id)
    }

    /// `i_links_count`: a fresh lost+found adds its `..` to the root's links.
    fn links_count(&self, id: NodeId, node: &Node<C>) -> Result<u16, Ext4Error> {
        let mut count = self.link_counts[id.0 as usize];
        if id == FsTree::<C>::ROOT && self.lost_found == Role::LostFound {
            count += 1;
        }
        if node.is_dir() {
            // dir_nlink: a directory with too many subdirectories counts 1.
            Ok(if count >= EXT4_LINK_MAX { 1 } else { count as u16 })
        } else if count > EXT4_LINK_MAX {
            Err(Ext4Error::TooManyLinks { path: self.path(id), links: count })
        } else {
            Ok(count as u16)
        }
    }

    fn file(&self, id: NodeId, file: &FileData<C>) -> Result<ContentShape, Ext4Error> {
        if file.size > MAX_FILE_SIZE {
            return Err(Ext4Error::FileTooLarge { path: self.path(id), size: file.size });
        }
        let blocks = file.size.div_ceil(BLOCK_SIZE);
        if file.data_blocks.iter().any(|run| run.start >= run.end || run.end > blocks) {
            return Err(Ext4Error::BadDataRuns(self.path(id)));
        }
        let placed = if self.data_in_place { file.content.placed() } else { None };
        let need = match placed {
            Some(starts) if starts.len() == file.data_blocks.len() => {
                let mut extents = Vec::new();
                for (run, start) in file.data_blocks.iter().zip(starts) {
                    push_extents(&mut extents, run.start, start, run.end - run.start);
                }
                Need::Placed(id, extents)
            }
            _ => Need::File(id),
        };
        Ok(ContentShape { need, size: file.size, layer: file.content.layer(), indexed: false })
    }

    fn directory(&self, id: NodeId) -> ContentShape {
        let entries = dir::entries(self.tree, self.ino_of, self.parent_of, self.lost_found, Role::Node(id));
        let linear_blocks = dir::pack(entries.iter().map(|e| e.name.len())).len() as u64;
        // Like the kernel, index a directory once it outgrows one block.
        let indexed_blocks =
            if linear_blocks > 1 { htree::indexed_block_count(&entries[2..], self.hash_seed) } else { None };
        let (blocks, indexed) = match indexed_blocks {
            Some(blocks) => (blocks, true),
            None => (linear_blocks, false),
        };
        ContentShape { need: Need::Blocks(blocks), size: blocks * BLOCK_SIZE, layer: 0, indexed }
    }

    fn symlink(&self, id: NodeId, target: &[u8]) -> Result<ContentShape, Ext4Error> {
        let len = target.len();
        if len == 0 || len > MAX_SYMLINK_LEN {
            return Err(Ext4Error::SymlinkLength { path: self.path(id), len });
        }
        let need = if len < I_BLOCK_LEN {
            // inodes.rst: a target shorter than 60 bytes lives in i_block (a fast symlink).
            let mut inline = [0u8; I_BLOCK_LEN];
            inline[..len].copy_from_slice(target);
            Need::Inline(inline)
        } else {
            Need::Blocks(1)
        };
        Ok(ContentShape::metadata(need, len as u64))
    }

    fn xattr(&self, id: NodeId, node: &Node<C>) -> Result<XattrNeed, Ext4Error> {
        let entries = xattr::entries(&node.meta.xattrs)
            .map_err(|source| Ext4Error::Xattr { path: self.path(id), source })?;
        if entries.is_empty() {
            Ok(XattrNeed::None)
        } else if xattr::fits_in_inode(&entries) {
            Ok(XattrNeed::InInode)
        } else if xattr::fits_in_block(&entries) {
            Ok(XattrNeed::Block)
        } else {
            Err(Ext4Error::XattrsTooLarge(self.path(id)))
        }
    }
}

/// Files already in the image keep their blocks, unless two claim the same block or one
/// lies before the data area: those are placed and copied like any other file. Returns
/// where the data in place ends.
fn keep_placed_apart(inodes: &mut [InodeShape]) -> u64 {
    let refused = overlapping_claims(inodes);
    let mut placed_end = 0;
    for (inode, refused) in inodes.iter_mut().zip(refused) {
        if let Need::Placed(id, extents) = &inode.need {
            if refused {
                inode.need = Need::File(*id);
            } else {
                let end = extents.iter().map(|e| e.physical + u64::from(e.len)).max().unwrap_or(0);
                placed_end = placed_end.max(end);
            }
        }
    }
    placed_end.next_multiple_of(ALIGN_BLOCKS)
}

/// For each inode, whether its data in place lies before the data area or shares a block
/// with another's.
fn overlapping_claims(inodes: &[InodeShape]) -> Vec<bool> {
    let mut claims: Vec<(u64, u64, usize)> = Vec::new();
    for (index, inode) in inodes.iter().enumerate() {
        if let Need::Placed(_, extents) = &inode.need {
            claims.extend(extents.iter().map(|e| (e.physical, e.physical + u64::from(e.len), index)));
        }
    }
    claims.sort_unstable();
    let mut refused = vec![false; inodes.len()];
    // The claim reaching furthest so far: (its end, its inode).
    let mut furthest: Option<(u64, usize)> = None;
    for &(start, end, index) in &claims {
        if start < DATA_START {
            refused[index] = true;
        }
        match furthest {
            Some((reach, other)) if start < reach => {
                refused[index] = true;
                refused[other] = true;
                if end > reach {
                    furthest = Some((end, index));
                }
            }
            _ => furthest = Some((end, index)),
        }
    }
    refused
}

/// The file data and the metadata blocks the allocator will place: (data, metadata).
fn blocks_to_place<C>(tree: &FsTree<C>, inodes: &[InodeShape]) -> (u64, u64) {
    let (mut data_blocks, mut meta_blocks) = (0, 0);
    for inode in inodes {
        match inode.need {
            Need::File(id) => {
                let NodeKind::File(file) = &tree.get(id).kind else { unreachable!("file need on a file") };
                data_blocks += file.data_block_count();
            }
            Need::Blocks(blocks) => meta_blocks += blocks,
            Need::Nothing | Need::Inline(_) | Need::Placed(..) => {}
        }
        if inode.xattr == XattrNeed::Block {
            meta_blocks += 1;
        }
    }
    (data_blocks, meta_blocks)
}
