//! Flattening: the layers of an image, each a changeset of tar entries, merged bottom first
//! into the one tree the image's root filesystem is.
//!
//! The rules are the OCI image-spec changeset rules, applied the way the Docker Engine applies
//! them, because `docker export` of a container is the oracle the result is tested against:
//!
//! - `DIR/.wh.NAME` deletes `NAME` and everything below it, as lower layers left it.
//! - `DIR/.wh..wh..opq` empties `DIR` of what lower layers put there; entries of the same
//!   layer stay, wherever they come in the layer. So each layer applies its whiteouts first,
//!   then its other entries in tar order.
//! - Names under a `.wh..wh.` component (AUFS bookkeeping: `.wh..wh.plnk/`, `.wh..wh..opq/`)
//!   are dropped with all below them, as Docker drops them. A hard link to a file of the
//!   layer's `.wh..wh.plnk/` (where AUFS kept hard-linked files) becomes a copy of that file.
//! - A directory over a directory merges: the entries stay, the metadata is the upper one's.
//!   Anything else replaces what was at that path, a directory with all below it.
//! - A later entry for the same path wins, as in Docker.
//! - A hard link names a path of the tree as merged so far (lower layers and the earlier
//!   entries of its own layer); the target must exist and not be a directory. Links share one
//!   node, so a link whose partner a later layer deletes keeps the content. Like Docker, a
//!   link header gives the node its owner and xattrs, and its mode and times unless the node
//!   is a symlink.
//! - A symlink's mode is 0777, whatever the layer says: symlink(2) makes them so.
//! - Missing parent directories are created (mode 0755, owner root, time 0), as Docker does.
//! - The root directory is mode 0755, owner root, time 0, whatever a layer's `./` entry says:
//!   Docker skips that entry too.
//!
//! Tar entries are untrusted. How names are confined:
//! - a leading `/` is dropped: absolute names are taken relative to the root;
//! - `.` and `..` components are resolved lexically; a name that climbs above the root is
//!   **rejected** with [`FlattenError::Escapes`] (like Docker's "breakout" error);
//! - a symlink met on the way to an entry's parent directory (or to a hard link's target) is
//!   followed **inside the root**: an absolute target starts at the root and `..` stops at
//!   the root, as when Docker extracts a layer chrooted. More than [`MAX_SYMLINK_FOLLOWS`]
//!   symlinks is an error. The last component is never followed: an entry replaces it.
//!
//! Pure: no I/O. The result only depends on the layers' content and order, and it holds only
//! reachable nodes, numbered breadth first in name order.

use std::collections::{HashMap, VecDeque};
use std::mem;

use super::{DeviceNumber, Directory, FileData, FsTree, Metadata, Node, NodeId, NodeKind, Timestamp};

/// The prefix that marks a whiteout entry.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the entry that makes its directory opaque.
pub const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
/// The prefix of AUFS metadata names, which carry nothing for the merged tree.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// Where AUFS keeps the files hard links point to, at the top of a layer.
const AUFS_LINK_DIR: &[u8] = b".wh..wh.plnk";
/// What symlink(2) makes every symlink's mode.
const SYMLINK_MODE: u16 = 0o777;
/// Symlinks followed while resolving one name, as Linux's `MAXSYMLINKS`.
pub const MAX_SYMLINK_FOLLOWS: u32 = 40;

/// What one tar entry of a layer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind<C> {
    Directory,
    File(FileData<C>),
    Symlink(Vec<u8>),
    /// A hard link to the named path of the merged tree.
    HardLink(Vec<u8>),
    CharDevice(DeviceNumber),
    BlockDevice(DeviceNumber),
    Fifo,
}

/// One entry of a layer: the name as the tar has it (not yet cleaned), what it is, its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<C> {
    pub path: Vec<u8>,
    pub kind: EntryKind<C>,
    pub meta: Metadata,
}

/// One layer's entries in tar order, and a name for errors (the blob digest).
#[derive(Clone, Copy, Debug)]
pub struct LayerChanges<'a, C> {
    pub name: &'a str,
    pub entries: &'a [Entry<C>],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlattenError {
    #[error("layer {layer}: entry {entry:?} climbs above the root")]
    Escapes { layer: String, entry: String },
    #[error("layer {layer}: entry {entry:?}: invalid name (empty, over 255 bytes or holding NUL)")]
    InvalidName { layer: String, entry: String },
    #[error("layer {layer}: entry {entry:?}: {component:?} on its path is not a directory")]
    NotADirectory { layer: String, entry: String, component: String },
    #[error("layer {layer}: entry {entry:?}: more than {MAX_SYMLINK_FOLLOWS} symlinks on its path")]
    SymlinkLoop { layer: String, entry: String },
    #[error("layer {layer}: hard link {entry:?} names {target:?}, which does not exist")]
    MissingLinkTarget { layer: String, entry: String, target: String },
    #[error("layer {layer}: hard link {entry:?} names {target:?}, which is a directory")]
    LinkToDirectory { layer: String, entry: String, target: String },
    #[error("layer {layer}: entry {entry:?} would replace the root directory with a non-directory")]
    RootNotDirectory { layer: String, entry: String },
}

impl crate::error::Classify for FlattenError {
    fn error_kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::BadInput
    }
}

/// Merges `layers`, bottom first, into one tree. See the module doc for the rules.
pub fn flatten<C: Clone>(layers: &[LayerChanges<'_, C>]) -> Result<FsTree<C>, FlattenError> {
    let mut tree = FsTree::new(Metadata::with_mode(0o755, Timestamp::default()));
    // Most entries become a node: room for them at once, rather than doubling on the way.
    tree.nodes.reserve(layers.iter().map(|l| l.entries.len()).sum());
    for layer in layers {
        apply_layer(&mut tree, layer)?;
    }
    Ok(compact(tree))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What went wrong while resolving a path, before the layer and entry are known.
enum WalkError {
    NotADirectory(Vec<u8>),
    Loop,
}

struct LayerApplier<'t, 'l, C> {
    tree: &'t mut FsTree<C>,
    layer: &'l str,
}

/// Whether an entry is AUFS bookkeeping: a component of its name, other than an opaque
/// marker at its end, starts with `.wh..wh.`.
fn is_aufs_meta(parts: &[Vec<u8>]) -> bool {
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .any(|(i, p)| p.starts_with(WHITEOUT_META_PREFIX) && !(i == last && p == OPAQUE_WHITEOUT))
}

/// The name of a file in the layer's AUFS link directory, when `parts` names one.
fn aufs_link_name(parts: &[Vec<u8>]) -> Option<&[u8]> {
    match parts {
        [dir, name] if dir == AUFS_LINK_DIR => Some(name),
        _ => None,
    }
}

fn apply_layer<C: Clone>(tree: &mut FsTree<C>, layer: &LayerChanges<'_, C>) -> Result<(), FlattenError> {
    let mut applier = LayerApplier { tree, layer: layer.name };
    // Whiteouts first: they only ever act on what lower layers left. Names are cleaned once
    // per pass rather than kept: for a layer of millions of entries that is the smaller cost.
    for entry in layer.entries {
        let parts = applier.clean(&entry.path)?;
        if is_aufs_meta(&parts) {
            continue;
        }
        if let Some((name, dir)) = parts.split_last() {
            if name.starts_with(WHITEOUT_PREFIX) {
                applier.whiteout(entry, dir, name)?;
            }
        }
    }
    // The files AUFS kept for hard links, by name, as the layer has given them so far.
    let mut aufs_links: HashMap<Vec<u8>, &Entry<C>> = HashMap::new();
    for entry in layer.entries {
        let parts = applier.clean(&entry.path)?;
        if is_aufs_meta(&parts) {
            if let (Some(name), EntryKind::File(_)) = (aufs_link_name(&parts), &entry.kind) {
                aufs_links.insert(name.to_vec(), entry);
            }
            continue;
        }
        if parts.last().is_some_and(|n| n.starts_with(WHITEOUT_PREFIX)) {
            continue;
        }
        match &entry.kind {
            EntryKind::HardLink(target) => match aufs_link_name(&applier.clean(target)?) {
                Some(name) => {
                    let Some(kept) = aufs_links.get(name) else {
                        let (layer, e) = applier.err_entry(&entry.path);
                        return Err(FlattenError::MissingLinkTarget {
                            layer,
                            entry: e,
                            target: lossy(target),
                        });
                    };
                    // Docker copies the kept file to the link's name.
                    let copy =
                        Entry { path: entry.path.clone(), kind: kept.kind.clone(), meta: kept.meta.clone() };
                    applier.add(&copy, &parts)?;
                }
                None => applier.add(entry, &parts)?,
            },
            _ => applier.add(entry, &parts)?,
        }
    }
    Ok(())
}

impl<C: Clone> LayerApplier<'_, '_, C> {
    fn err_entry(&self, path: &[u8]) -> (String, String) {
        (self.layer.to_string(), lossy(path))
    }

    /// The components of an entry's name with `.`, `..` and empty ones resolved lexically.
    fn clean(&self, path: &[u8]) -> Result<Vec<Vec<u8>>, FlattenError> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for part in path.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if parts.pop().is_none() {
                        let (layer, entry) = self.err_entry(path);
                        return Err(FlattenError::Escapes { layer, entry });
                    }
                }
                _ => {
                    if part.len() > super::MAX_NAME_LEN || part.contains(&0) {
                        let (layer, entry) = self.err_entry(path);
                        return Err(FlattenError::InvalidName { layer, entry });
                    }
                    parts.push(part.to_vec());
                }
            }
        }
        Ok(parts)
    }

    fn walk_error(&self, path: &[u8], err: WalkError) -> FlattenError {
        let (layer, entry) = self.err_entry(path);
        match err {
            WalkError::NotADirectory(component) => {
                FlattenError::NotADirectory { layer, entry, component: lossy(&component) }
            }
            WalkError::Loop => FlattenError::SymlinkLoop { layer, entry },
        }
    }

    /// The directory `parts` names, following symlinks inside the root. With `create`,
    /// missing directories are made; without, a missing one gives `None`.
    fn walk_dir(&mut self, parts: &[Vec<u8>], create: bool) -> Result<Option<NodeId>, WalkError> {
        let mut stack = vec![FsTree::<C>::ROOT];
        let mut pending: VecDeque<Vec<u8>> = parts.iter().cloned().collect();
        let mut follows = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let here = *stack.last().expect("the root stays on the stack");
            let Some(child) = self.tree.child(here, &part) else {
                if !create {
                    return Ok(None);
                }
                let dir = self.tree.add(Node::new(
                    NodeKind::Directory(Directory::default()),
                    Metadata::with_mode(0o755, Timestamp::default()),
                ));
                self.tree.insert(here, &part, dir).map_err(|_| WalkError::NotADirectory(part.clone()))?;
                stack.push(dir);
                continue;
            };
            match &self.tree.get(child).kind {
                NodeKind::Directory(_) => stack.push(child),
                NodeKind::Symlink(target) => {
                    follows += 1;
                    if follows > MAX_SYMLINK_FOLLOWS {
                        return Err(WalkError::Loop);
                    }
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for piece in target.split(|&b| b == b'/').rev() {
                        pending.push_front(piece.to_vec());
                    }
                }
                _ => return Err(WalkError::NotADirectory(part)),
            }
        }
        Ok(stack.last().copied())
    }

    fn whiteout(&mut self, entry: &Entry<C>, dir: &[Vec<u8>], name: &[u8]) -> Result<(), FlattenError> {
        let dir_id = match self.walk_dir(dir, false) {
            Ok(Some(id)) => id,
            // Nothing below to delete.
            Ok(None) | Err(WalkError::NotADirectory(_)) => return Ok(()),
            Err(e) => return Err(self.walk_error(&entry.path, e)),
        };
        if name == OPAQUE_WHITEOUT {
            if let NodeKind::Directory(d) = &mut self.tree.get_mut(dir_id).kind {
                d.entries.clear();
            }
        } else if !name.starts_with(WHITEOUT_META_PREFIX) {
            let target = &name[WHITEOUT_PREFIX.len()..];
            self.tree.remove(dir_id, target);
        }
        Ok(())
    }

    fn add(&mut self, entry: &Entry<C>, parts: &[Vec<u8>]) -> Result<(), FlattenError> {
        let Some((name, dir)) = parts.split_last() else {
            // The root itself: only a directory can stand there, and like Docker we keep the
            // root's own metadata rather than a layer's (a `./` entry often carries the mode
            // of whatever temp directory the layer was packed from).
            if !matches!(entry.kind, EntryKind::Directory) {
                let (layer, entry) = self.err_entry(&entry.path);
                return Err(FlattenError::RootNotDirectory { layer, entry });
            }
            return Ok(());
        };
        // A hard link's target is found before anything at the entry's own path changes.
        let link_target = match &entry.kind {
            EntryKind::HardLink(target) => Some(self.link_target(entry, target)?),
            _ => None,
        };
        let parent = match self.walk_dir(dir, true) {
            Ok(Some(id)) => id,
            Ok(None) => unreachable!("walk_dir with create always ends at a directory"),
            Err(e) => return Err(self.walk_error(&entry.path, e)),
        };
        let existing = self.tree.child(parent, name);
        if let Some(id) = existing {
            if matches!(entry.kind, EntryKind::Directory) && self.tree.get(id).is_dir() {
                self.tree.get_mut(id).meta = entry.meta.clone();
                return Ok(());
            }
        }
        let node = match (&entry.kind, link_target) {
            (EntryKind::HardLink(_), Some(target)) => {
                // Docker applies a link header's owner to the shared inode, and its mode and
                // times unless the inode is a symlink (there is no lchmod).
                let node = self.tree.get_mut(target);
                let is_symlink = matches!(node.kind, NodeKind::Symlink(_));
                let meta = &mut node.meta;
                meta.uid = entry.meta.uid;
                meta.gid = entry.meta.gid;
                if !is_symlink {
                    meta.mode = entry.meta.mode;
                    meta.mtime = entry.meta.mtime;
                    meta.atime = entry.meta.atime;
                }
                for (k, v) in &entry.meta.xattrs {
                    meta.xattrs.insert(k.clone(), v.clone());
                }
                target
            }
            (kind, _) => {
                let kind = match kind {
                    EntryKind::Directory => NodeKind::Directory(Directory::default()),
                    EntryKind::File(data) => NodeKind::File(data.clone()),
                    EntryKind::Symlink(t) => NodeKind::Symlink(t.clone()),
                    EntryKind::CharDevice(d) => NodeKind::CharDevice(*d),
                    EntryKind::BlockDevice(d) => NodeKind::BlockDevice(*d),
                    EntryKind::Fifo => NodeKind::Fifo,
                    EntryKind::HardLink(_) => unreachable!("hard links resolved above"),
                };
                let mut meta = entry.meta.clone();
                if matches!(kind, NodeKind::Symlink(_)) {
                    meta.mode = SYMLINK_MODE;
                }
                self.tree.add(Node::new(kind, meta))
            }
        };
        self.tree.insert(parent, name, node).map_err(|_| {
            let (layer, entry) = self.err_entry(&entry.path);
            FlattenError::InvalidName { layer, entry }
        })?;
        Ok(())
    }

    /// The node a hard link names: its parent resolved inside the root, its last component not
    /// followed (a link to a symlink links the symlink).
    fn link_target(&mut self, entry: &Entry<C>, target: &[u8]) -> Result<NodeId, FlattenError> {
        let missing = |s: &Self| {
            let (layer, e) = s.err_entry(&entry.path);
            FlattenError::MissingLinkTarget { layer, entry: e, target: lossy(target) }
        };
        let parts = self.clean(target)?;
        let Some((name, dir)) = parts.split_last() else {
            let (layer, e) = self.err_entry(&entry.path);
            return Err(FlattenError::LinkToDirectory { layer, entry: e, target: lossy(target) });
        };
        let dir_id = match self.walk_dir(dir, false) {
            Ok(Some(id)) => id,
            Ok(None) | Err(WalkError::NotADirectory(_)) => return Err(missing(self)),
            Err(e) => return Err(self.walk_error(&entry.path, e)),
        };
        let id = self.tree.child(dir_id, name).ok_or_else(|| missing(self))?;
        if self.tree.get(id).is_dir() {
            let (layer, e) = self.err_entry(&entry.path);
            return Err(FlattenError::LinkToDirectory { layer, entry: e, target: lossy(target) });
        }
        Ok(id)
    }
}

/// `tree` holding only what its root reaches, numbered breadth first in name order, so the
/// numbering depends on the result and not on the history of the merge. Nodes move into
/// their new places; nothing is copied.
fn compact<C>(mut tree: FsTree<C>) -> FsTree<C> {
    const UNSEEN: u32 = u32::MAX;
    let mut new_ids = vec![UNSEEN; tree.nodes.len()];
    // Old ids in their new order: a breadth-first queue that is also the result's order.
    let mut order = vec![FsTree::<C>::ROOT];
    new_ids[0] = 0;
    let mut next = 0;
    while let Some(&old) = order.get(next) {
        next += 1;
        let Some(dir) = tree.get(old).as_dir() else { continue };
        for &child in dir.entries.values() {
            if new_ids[child.0 as usize] == UNSEEN {
                new_ids[child.0 as usize] = order.len() as u32;
                order.push(child);
            }
        }
    }
    let mut nodes = Vec::with_capacity(order.len());
    for old in order {
        let moved = Node::new(NodeKind::Fifo, Metadata::default());
        let mut node = mem::replace(&mut tree.nodes[old.0 as usize], moved);
        if let NodeKind::Directory(d) = &mut node.kind {
            for id in d.entries.values_mut() {
                *id = NodeId(new_ids[id.0 as usize]);
            }
        }
        nodes.push(node);
    }
    FsTree { nodes }
}
