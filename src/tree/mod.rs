//! The merged filesystem tree: what the root filesystem holds, before it is laid out as ext4.
//!
//! Every source ends here (a host directory, a tar stream, the flattened layers of an
//! image) and the ext4 writer starts here. Nodes live in an arena and directory entries
//! name nodes by [`NodeId`], so a hard link is simply a second entry naming the same node.
//! The tree is generic over where file bytes live (`C`): inline bytes in unit tests,
//! references into spooled layers or host files in production, so a tree of millions of
//! files never holds their content.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;

pub mod flatten;
pub(crate) mod host;
pub(crate) mod sparse;

/// ext4 and every filesystem we read limit a name to 255 bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Files are described in units of this many bytes when it comes to holes: the image's
/// block, so each data block of a file is one block of the image.
pub use crate::layout::BLOCK_SIZE;

/// Index of a node in its tree's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Seconds and nanoseconds since the Unix epoch; negative seconds are before 1970.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    /// The earliest and latest times ext4 stores, with its extra timestamp fields (the low
    /// 32 bits of seconds signed, two epoch bits more): 1901-12-13T20:45:52Z and
    /// 2446-05-10T22:38:55Z (Documentation/filesystems/ext4/inodes.rst, "Inode Timestamps").
    pub const EXT4_MIN: Timestamp = Timestamp { sec: i32::MIN as i64, nsec: 0 };
    pub const EXT4_MAX: Timestamp = Timestamp { sec: i32::MAX as i64 + (3 << 32), nsec: 999_999_999 };

    pub fn new(sec: i64, nsec: u32) -> Self {
        Timestamp { sec, nsec }
    }
}

/// Extended attributes by full name (`user.foo`, `security.capability`, ...); values are bytes.
pub type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// What every node has, whatever its kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits with setuid, setgid and sticky (`0o7777`); the file type is the node kind.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub xattrs: Xattrs,
}

impl Metadata {
    /// Brings every time into what ext4 stores ([`Timestamp::EXT4_MIN`] to
    /// [`Timestamp::EXT4_MAX`]); says whether one was outside, so the caller can warn once.
    pub fn clamp_times(&mut self) -> bool {
        let mut clamped = false;
        for t in [&mut self.atime, &mut self.mtime, &mut self.ctime] {
            let inside = (*t).clamp(Timestamp::EXT4_MIN, Timestamp::EXT4_MAX);
            clamped |= inside != *t;
            *t = inside;
        }
        clamped
    }

    /// Owner root, the given permissions, every time at `time`, no xattrs.
    pub fn with_mode(mode: u16, time: Timestamp) -> Self {
        Metadata {
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            atime: time,
            mtime: time,
            ctime: time,
            xattrs: Xattrs::new(),
        }
    }
}

/// A device number split the Linux way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    /// The kernel's dev_t has 12 bits of major and 20 of minor (include/linux/kdev_t.h,
    /// `MINORBITS`), and so has ext4's encoding of it: larger numbers name other devices.
    pub const MAX_MAJOR: u32 = (1 << 12) - 1;
    pub const MAX_MINOR: u32 = (1 << 20) - 1;
}

/// Where a regular file's bytes come from.
pub trait Content: Send + Sync {
    /// Fills all of `buf` with the file's bytes starting at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// The image layer these bytes came from (0 = the bottom layer). The layout contract
    /// ([`crate::layout`]) puts the data of lower layers first, so images that share a base
    /// share their leading blocks.
    fn layer(&self) -> u32 {
        0
    }

    /// A file on disk that holds these bytes, starting at the given offset, when there is
    /// one: whoever writes the bytes out can then copy them inside the kernel
    /// (copy_file_range) instead of through a buffer.
    fn source_file(&self) -> Option<(&std::path::Path, u64)> {
        None
    }

    /// Where the data already lies in the image being written, by the layout contract's rules
    /// for placed data ([`crate::layout`]), when it was put there before the layout was
    /// planned (a layer spooled into the image file): the first image block of each run of
    /// `data_blocks`. Only a writer told so relies on it.
    fn placed(&self) -> Option<Vec<u64>> {
        None
    }
}

impl Content for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice_at(self, offset, buf)
    }
}

impl Content for Arc<[u8]> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice_at(self, offset, buf)
    }
}

fn read_slice_at(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
    let src = bytes.get(start..start + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
    buf.copy_from_slice(src);
    Ok(())
}

/// A regular file: its size, where its bytes are, and which of its blocks hold data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileData<C> {
    pub size: u64,
    pub content: C,
    /// Runs of [`BLOCK_SIZE`] blocks (block indexes, half-open, sorted, disjoint) that hold
    /// data; every other block of the file reads as zeros and becomes a hole.
    pub data_blocks: Vec<Range<u64>>,
}

impl<C> FileData<C> {
    /// A file whose every block is taken to hold data.
    pub fn dense(size: u64, content: C) -> Self {
        let blocks = size.div_ceil(BLOCK_SIZE);
        let data_blocks = if blocks == 0 { Vec::new() } else { std::iter::once(0..blocks).collect() };
        FileData { size, content, data_blocks }
    }

    /// Blocks that hold data.
    pub fn data_block_count(&self) -> u64 {
        self.data_blocks.iter().map(|r| r.end - r.start).sum()
    }
}

impl FileData<Vec<u8>> {
    /// Inline bytes with their all-zero blocks found, as a source that scans would.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let data_blocks = sparse::data_blocks_of(&bytes);
        FileData { size: bytes.len() as u64, content: bytes, data_blocks }
    }
}

/// A directory's entries, sorted by name bytes. `.` and `..` are implicit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    pub entries: BTreeMap<Vec<u8>, NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind<C> {
    Directory(Directory),
    File(FileData<C>),
    Symlink(Vec<u8>),
    CharDevice(DeviceNumber),
    BlockDevice(DeviceNumber),
    Fifo,
    Socket,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node<C> {
    pub kind: NodeKind<C>,
    pub meta: Metadata,
}

impl<C> Node<C> {
    pub fn new(kind: NodeKind<C>, meta: Metadata) -> Self {
        Node { kind, meta }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Directory(_))
    }

    pub fn as_dir(&self) -> Option<&Directory> {
        match &self.kind {
            NodeKind::Directory(d) => Some(d),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("invalid file name {0:?}: names are 1 to 255 bytes, without '/' or NUL, and not . or ..")]
    InvalidName(String),
    #[error("{0:?} is not a directory")]
    NotADirectory(String),
    #[error("a directory cannot be hard-linked ({0:?})")]
    DirectoryHardLink(String),
}

/// Checks that `name` can be one directory entry.
pub fn validate_name(name: &[u8]) -> Result<(), TreeError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == b"."
        || name == b".."
        || name.iter().any(|&b| b == b'/' || b == 0);
    if bad {
        Err(TreeError::InvalidName(String::from_utf8_lossy(name).into_owned()))
    } else {
        Ok(())
    }
}

/// The filesystem tree. Node 0 is the root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsTree<C> {
    nodes: Vec<Node<C>>,
}

impl<C> FsTree<C> {
    pub const ROOT: NodeId = NodeId(0);

    /// A tree holding only its root directory.
    pub fn new(root: Metadata) -> Self {
        FsTree { nodes: vec![Node::new(NodeKind::Directory(Directory::default()), root)] }
    }

    pub fn get(&self, id: NodeId) -> &Node<C> {
        &self.nodes[id.0 as usize]
    }

    pub fn get_mut(&mut self, id: NodeId) -> &mut Node<C> {
        &mut self.nodes[id.0 as usize]
    }

    /// Adds a node that no directory names yet.
    pub fn add(&mut self, node: Node<C>) -> NodeId {
        let id = NodeId(u32::try_from(self.nodes.len()).expect("more than 2^32 nodes"));
        self.nodes.push(node);
        id
    }

    /// Names `child` as `name` in directory `dir`, returning what the name pointed at before.
    pub fn insert(&mut self, dir: NodeId, name: &[u8], child: NodeId) -> Result<Option<NodeId>, TreeError> {
        validate_name(name)?;
        match &mut self.nodes[dir.0 as usize].kind {
            NodeKind::Directory(d) => Ok(d.entries.insert(name.to_vec(), child)),
            _ => Err(TreeError::NotADirectory(String::from_utf8_lossy(name).into_owned())),
        }
    }

    /// Removes `name` from directory `dir`; the node stays in the arena, unreachable.
    pub fn remove(&mut self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &mut self.nodes[dir.0 as usize].kind {
            NodeKind::Directory(d) => d.entries.remove(name),
            _ => None,
        }
    }

    /// The entry `name` of directory `dir`.
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.get(dir).as_dir()?.entries.get(name).copied()
    }

    /// Follows a `/`-separated path from the root without resolving symlinks. Empty
    /// components and `.` are skipped; `..` is not resolved and fails the lookup.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let mut at = Self::ROOT;
        for part in path.split(|&b| b == b'/') {
            if part.is_empty() || part == b"." {
                continue;
            }
            at = self.child(at, part)?;
        }
        Some(at)
    }

    /// Calls `f` with every reachable entry's path and node, depth first, entries in name
    /// order, the root first with an empty path; a hard-linked node once per name. One path
    /// buffer serves the whole walk, so it costs the tree's size and its depth, never the
    /// sum of its paths (which grows with the square of the depth).
    pub fn visit(&self, mut f: impl FnMut(&[u8], NodeId)) {
        let mut path = Vec::new();
        f(&path, Self::ROOT);
        // Each open directory: its entries still to visit, and its path's length.
        let mut open = Vec::new();
        if let Some(root) = self.get(Self::ROOT).as_dir() {
            open.push((root.entries.iter(), 0));
        }
        while let Some((entries, dir_len)) = open.last_mut() {
            let Some((name, &child)) = entries.next() else {
                open.pop();
                continue;
            };
            let dir_len = *dir_len;
            path.truncate(dir_len);
            if dir_len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            f(&path, child);
            if let Some(dir) = self.get(child).as_dir() {
                open.push((dir.entries.iter(), path.len()));
            }
        }
    }

    /// The nodes [`visit`](Self::visit) meets, in its order, without their paths.
    pub fn walk_ids(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        self.visit(|_, id| out.push(id));
        out
    }

    /// What [`visit`](Self::visit) meets, each path copied out: for tests and small trees,
    /// since the paths together grow with the square of the tree's depth.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        self.visit(|path, id| out.push((path.to_vec(), id)));
        out
    }

    /// The first path [`visit`](Self::visit) meets `id` at, for messages.
    pub fn path_of(&self, id: NodeId) -> Option<Vec<u8>> {
        let mut found = None;
        self.visit(|path, n| {
            if n == id && found.is_none() {
                found = Some(path.to_vec());
            }
        });
        found
    }

    /// Every reachable regular file, once however many names it has, in no particular order.
    pub fn files(&self) -> impl Iterator<Item = &FileData<C>> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![Self::ROOT];
        std::iter::from_fn(move || {
            while let Some(id) = stack.pop() {
                if std::mem::replace(&mut seen[id.0 as usize], true) {
                    continue;
                }
                match &self.get(id).kind {
                    NodeKind::Directory(d) => stack.extend(d.entries.values().copied()),
                    NodeKind::File(f) => return Some(f),
                    _ => {}
                }
            }
            None
        })
    }

    /// Link counts as ext4 stores them: one per name for non-directories; for a directory,
    /// 2 plus one per subdirectory. Unreachable nodes count 0.
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        for id in self.walk_ids() {
            match self.get(id).as_dir() {
                Some(dir) => {
                    let subdirs = dir.entries.values().filter(|c| self.get(**c).is_dir()).count();
                    counts[id.0 as usize] = 2 + subdirs as u32;
                }
                None => counts[id.0 as usize] += 1,
            }
        }
        counts
    }

    /// Number of nodes in the arena, reachable or not.
    pub fn arena_len(&self) -> usize {
        self.nodes.len()
    }

    /// The same tree with each file's content mapped through `f`.
    pub fn map_content<D>(self, mut f: impl FnMut(C) -> D) -> FsTree<D> {
        let nodes = self
            .nodes
            .into_iter()
            .map(|n| {
                let kind = match n.kind {
                    NodeKind::File(fd) => NodeKind::File(FileData {
                        size: fd.size,
                        content: f(fd.content),
                        data_blocks: fd.data_blocks,
                    }),
                    NodeKind::Directory(d) => NodeKind::Directory(d),
                    NodeKind::Symlink(t) => NodeKind::Symlink(t),
                    NodeKind::CharDevice(d) => NodeKind::CharDevice(d),
                    NodeKind::BlockDevice(d) => NodeKind::BlockDevice(d),
                    NodeKind::Fifo => NodeKind::Fifo,
                    NodeKind::Socket => NodeKind::Socket,
                };
                Node { kind, meta: n.meta }
            })
            .collect();
        FsTree { nodes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u16) -> Metadata {
        Metadata::with_mode(mode, Timestamp::new(1_700_000_000, 5))
    }

    fn sample() -> FsTree<Vec<u8>> {
        let mut t = FsTree::new(meta(0o755));
        let etc = t.add(Node::new(NodeKind::Directory(Directory::default()), meta(0o755)));
        t.insert(FsTree::<Vec<u8>>::ROOT, b"etc", etc).unwrap();
        let f = t.add(Node::new(NodeKind::File(FileData::from_bytes(b"x".to_vec())), meta(0o644)));
        t.insert(etc, b"passwd", f).unwrap();
        t.insert(FsTree::<Vec<u8>>::ROOT, b"passwd-link", f).unwrap();
        let bin = t.add(Node::new(NodeKind::Directory(Directory::default()), meta(0o755)));
        t.insert(FsTree::<Vec<u8>>::ROOT, b"bin", bin).unwrap();
        t
    }

    #[test]
    fn walk_is_preorder_in_name_order() {
        let t = sample();
        let paths: Vec<_> = t.walk().into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
        assert_eq!(paths, ["", "bin", "etc", "etc/passwd", "passwd-link"]);
    }

    #[test]
    fn visit_lends_each_path_as_walk_lists_it() {
        let t = sample();
        let mut seen = Vec::new();
        t.visit(|path, id| seen.push((path.to_vec(), id)));
        assert_eq!(seen, t.walk());
        assert_eq!(t.walk_ids(), seen.iter().map(|(_, id)| *id).collect::<Vec<_>>());
        let passwd = t.lookup(b"etc/passwd").unwrap();
        assert_eq!(t.path_of(passwd), Some(b"etc/passwd".to_vec()), "the first of its names");
        assert_eq!(t.path_of(NodeId(99)), None);
    }

    #[test]
    fn link_counts_follow_ext4_rules() {
        let t = sample();
        let c = t.link_counts();
        assert_eq!(c[0], 4, "root: 2 + bin + etc");
        assert_eq!(c[t.lookup(b"etc").unwrap().0 as usize], 2);
        assert_eq!(c[t.lookup(b"etc/passwd").unwrap().0 as usize], 2, "two names");
    }

    #[test]
    fn rejects_bad_names() {
        let mut t = sample();
        let f = t.lookup(b"etc/passwd").unwrap();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(t.insert(FsTree::<Vec<u8>>::ROOT, bad, f).is_err(), "{bad:?}");
        }
        assert!(t.insert(FsTree::<Vec<u8>>::ROOT, &[b'x'; 255], f).is_ok());
        assert!(t.insert(FsTree::<Vec<u8>>::ROOT, &[0xff, 0xfe], f).is_ok());
    }

    #[test]
    fn lookup_does_not_resolve_dotdot() {
        let t = sample();
        assert!(t.lookup(b"etc/../etc").is_none());
        assert_eq!(t.lookup(b"/etc//passwd"), t.lookup(b"etc/passwd"));
    }
}
