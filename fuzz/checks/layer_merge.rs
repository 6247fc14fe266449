//! The layer merge against a model: small random layers (names from a few letters, whiteouts,
//! opaque markers, `.` and `..`, symlinks on the way, hard links) flattened by
//! `diskc::tree::flatten` and applied by the small applier below, which keeps the tree as a
//! map from path to inode rather than an arena of nodes. Both must fail, or both must give
//! the same listing: paths, kinds, contents, metadata and which paths share an inode.

use std::collections::{BTreeMap, HashMap, VecDeque};

use diskc::tree::flatten::{flatten, Entry, EntryKind, LayerChanges, MAX_SYMLINK_FOLLOWS};
use diskc::tree::{DeviceNumber, FileData, FsTree, Metadata, NodeKind, Timestamp};

use super::bytes::Choices;

/// Components, plain names twice as likely; `.` and `..` come rarely (see `path`), or most
/// layers would climb above the root or replace it.
const NAMES: &[&[u8]] =
    &[b"a", b"b", b"c", b"a", b"b", b"c", b".wh.a", b".wh.b", b".wh..wh..opq", b".wh..wh.x"];
const TARGETS: &[&[u8]] = &[b"a", b"b", b"/a", b"../b", b"a/b", b".", b"c/..", b"/", b"b/c"];

/// Decodes the layers, runs both appliers and panics where they disagree.
pub fn check(data: &[u8]) {
    let layers = decode(&mut Choices::new(data));
    let changes: Vec<LayerChanges<'_, Vec<u8>>> = layers
        .iter()
        .enumerate()
        .map(|(i, entries)| LayerChanges { name: LAYER_NAMES[i], entries })
        .collect();
    let flattened = flatten(&changes).map(|t| listing_of_tree(&t));
    let mut model = Model::new();
    let modelled =
        layers.iter().try_for_each(|l| model.apply(l)).map(|()| model.listing()).map_err(|Refused(why)| why);
    match (flattened, modelled) {
        (Ok(got), Ok(want)) => {
            if got != want {
                panic!("flatten and the model differ\nlayers: {layers:#?}\nflatten: {got:#?}\nmodel: {want:#?}");
            }
        }
        (Err(_), Err(_)) => {}
        (got, want) => panic!(
            "flatten and the model disagree on success\nlayers: {layers:#?}\nflatten: {got:#?}\nmodel: {want:#?}"
        ),
    }
}

const LAYER_NAMES: [&str; 3] = ["layer0", "layer1", "layer2"];

fn decode(c: &mut Choices<'_>) -> Vec<Vec<Entry<Vec<u8>>>> {
    let layers = 1 + c.below(LAYER_NAMES.len());
    let mut paths = Vec::new();
    (0..layers)
        .map(|_| {
            let n = c.below(10);
            (0..n).map(|_| entry(c, &mut paths)).collect()
        })
        .collect()
}

fn path(c: &mut Choices<'_>) -> Vec<u8> {
    let mut p = if c.below(4) == 0 { b"/".to_vec() } else { Vec::new() };
    for i in 0..1 + c.below(3) {
        if i > 0 {
            p.push(b'/');
        }
        let name = match c.below(32) {
            30 => b"..".as_slice(),
            31 => b".",
            _ => *c.pick(NAMES),
        };
        p.extend_from_slice(name);
    }
    p
}

/// An entry; a hard link names the path of an earlier entry, mostly.
fn entry(c: &mut Choices<'_>, paths: &mut Vec<Vec<u8>>) -> Entry<Vec<u8>> {
    let path = path(c);
    paths.push(path.clone());
    let kind = match c.below(8) {
        0 | 1 => EntryKind::Directory,
        2 | 3 => EntryKind::File(FileData::from_bytes(vec![c.byte(); c.below(3)])),
        4 => EntryKind::Symlink(c.pick(TARGETS).to_vec()),
        5 if c.below(4) > 0 => EntryKind::HardLink(c.pick(paths).clone()),
        5 => EntryKind::HardLink(self::path(c)),
        6 => EntryKind::Fifo,
        _ => EntryKind::CharDevice(DeviceNumber { major: c.below(4) as u32, minor: c.below(4) as u32 }),
    };
    let t = |c: &mut Choices<'_>| Timestamp::new(c.below(4) as i64, 0);
    let mut meta = Metadata {
        mode: [0o755, 0o644, 0o4711, 0o1777][c.below(4)],
        uid: c.below(3) as u32,
        gid: c.below(3) as u32,
        atime: t(c),
        mtime: t(c),
        ctime: t(c),
        ..Metadata::default()
    };
    if c.below(4) == 0 {
        meta.xattrs.insert([b"user.x".as_slice(), b"user.y"][c.below(2)].to_vec(), vec![c.byte()]);
    }
    Entry { path, kind, meta }
}

/// One path of a merged tree as both sides describe it: the path, what is there, and the
/// first path (in listing order) naming the same inode.
type Listing = Vec<(Vec<u8>, String, Vec<u8>)>;

fn describe(kind: &str, meta: &Metadata) -> String {
    format!("{kind} {meta:?}")
}

fn listing_of_tree(tree: &FsTree<Vec<u8>>) -> Listing {
    let mut first = HashMap::new();
    tree.walk()
        .into_iter()
        .map(|(path, id)| {
            let node = tree.get(id);
            let kind = match &node.kind {
                NodeKind::Directory(_) => "dir".to_string(),
                NodeKind::File(f) => format!("file {:?}", f.content),
                NodeKind::Symlink(t) => format!("symlink {t:?}"),
                NodeKind::CharDevice(d) => format!("char {}:{}", d.major, d.minor),
                NodeKind::BlockDevice(d) => format!("block {}:{}", d.major, d.minor),
                NodeKind::Fifo => "fifo".to_string(),
                NodeKind::Socket => "socket".to_string(),
            };
            let alias = first.entry(id).or_insert_with(|| path.clone()).clone();
            (path, describe(&kind, &node.meta), alias)
        })
        .collect()
}

#[derive(Clone, Debug)]
enum ModelKind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Fifo,
    Char(DeviceNumber),
}

#[derive(Clone, Debug)]
struct Inode {
    kind: ModelKind,
    meta: Metadata,
}

/// Why the model refused a layer, for the message; only that it did is compared.
#[derive(Debug)]
struct Refused(&'static str);

/// The merged tree as a map from path (its components) to inode; a directory's contents are
/// the paths below it.
struct Model {
    inodes: Vec<Inode>,
    paths: BTreeMap<Vec<Vec<u8>>, usize>,
}

fn new_dir() -> Inode {
    Inode { kind: ModelKind::Dir, meta: Metadata::with_mode(0o755, Timestamp::default()) }
}

/// Components with `.`, `..` and empty ones resolved lexically; climbing above the root fails.
fn clean(path: &[u8]) -> Result<Vec<Vec<u8>>, Refused> {
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop().ok_or(Refused("escapes"))?;
            }
            _ => parts.push(part.to_vec()),
        }
    }
    Ok(parts)
}

/// AUFS bookkeeping: a component starting `.wh..wh.`, but for an opaque marker at the end.
fn is_aufs_meta(parts: &[Vec<u8>]) -> bool {
    parts.iter().enumerate().any(|(i, p)| {
        p.starts_with(b".wh..wh.") && !(i + 1 == parts.len() && p.as_slice() == b".wh..wh..opq")
    })
}

enum Walk {
    Found(Vec<Vec<u8>>),
    Missing,
    NotADirectory,
}

impl Model {
    fn new() -> Self {
        Model { inodes: vec![new_dir()], paths: BTreeMap::from([(Vec::new(), 0)]) }
    }

    fn is_dir(&self, path: &[Vec<u8>]) -> bool {
        self.paths.get(path).is_some_and(|&i| matches!(self.inodes[i].kind, ModelKind::Dir))
    }

    /// Removes `path` and everything below it.
    fn remove(&mut self, path: &[Vec<u8>]) {
        self.paths.retain(|p, _| !p.starts_with(path));
    }

    /// The directory `parts` names, symlinks followed inside the root; with `create`, missing
    /// directories are made.
    fn walk(&mut self, parts: &[Vec<u8>], create: bool) -> Result<Walk, Refused> {
        let mut at: Vec<Vec<u8>> = Vec::new();
        let mut pending: VecDeque<Vec<u8>> = parts.iter().cloned().collect();
        let mut follows = 0;
        while let Some(part) = pending.pop_front() {
            match part.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            let mut next = at.clone();
            next.push(part);
            match self.paths.get(&next).map(|&i| &self.inodes[i].kind) {
                None if !create => return Ok(Walk::Missing),
                None => {
                    self.inodes.push(new_dir());
                    self.paths.insert(next.clone(), self.inodes.len() - 1);
                    at = next;
                }
                Some(ModelKind::Dir) => at = next,
                Some(ModelKind::Symlink(target)) => {
                    follows += 1;
                    if follows > MAX_SYMLINK_FOLLOWS {
                        return Err(Refused("symlink loop"));
                    }
                    if target.starts_with(b"/") {
                        at.clear();
                    }
                    for piece in target.split(|&b| b == b'/').rev() {
                        pending.push_front(piece.to_vec());
                    }
                }
                Some(_) => return Ok(Walk::NotADirectory),
            }
        }
        Ok(Walk::Found(at))
    }

    fn apply(&mut self, entries: &[Entry<Vec<u8>>]) -> Result<(), Refused> {
        // Whiteouts first, against what lower layers left.
        for entry in entries {
            let parts = clean(&entry.path)?;
            if is_aufs_meta(&parts) {
                continue;
            }
            let Some((name, dir)) = parts.split_last() else { continue };
            let Some(target) = name.strip_prefix(b".wh.") else { continue };
            let Walk::Found(dir) = self.walk(dir, false)? else { continue };
            if name.as_slice() == b".wh..wh..opq" {
                self.paths.retain(|p, _| !(p.starts_with(&dir) && p.len() > dir.len()));
            } else if !name.starts_with(b".wh..wh.") {
                let mut gone = dir.clone();
                gone.push(target.to_vec());
                self.remove(&gone);
            }
        }
        for entry in entries {
            let parts = clean(&entry.path)?;
            if is_aufs_meta(&parts) || parts.last().is_some_and(|n| n.starts_with(b".wh.")) {
                continue;
            }
            self.add(entry, &parts)?;
        }
        Ok(())
    }

    fn add(&mut self, entry: &Entry<Vec<u8>>, parts: &[Vec<u8>]) -> Result<(), Refused> {
        let Some((name, dir)) = parts.split_last() else {
            return match entry.kind {
                EntryKind::Directory => Ok(()),
                _ => Err(Refused("replaces the root")),
            };
        };
        let linked = match &entry.kind {
            EntryKind::HardLink(target) => {
                let target = clean(target)?;
                let (last, dir) = target.split_last().ok_or(Refused("link to the root"))?;
                let Walk::Found(mut path) = self.walk(dir, false)? else {
                    return Err(Refused("no link target"));
                };
                path.push(last.clone());
                let &inode = self.paths.get(&path).ok_or(Refused("no link target"))?;
                if matches!(self.inodes[inode].kind, ModelKind::Dir) {
                    return Err(Refused("link to a directory"));
                }
                Some(inode)
            }
            _ => None,
        };
        let Walk::Found(mut path) = self.walk(dir, true)? else {
            return Err(Refused("parent not a directory"));
        };
        path.push(name.clone());
        if matches!(entry.kind, EntryKind::Directory) && self.is_dir(&path) {
            self.inodes[self.paths[&path]].meta = entry.meta.clone();
            return Ok(());
        }
        let inode = match linked {
            Some(inode) => {
                let node = &mut self.inodes[inode];
                node.meta.uid = entry.meta.uid;
                node.meta.gid = entry.meta.gid;
                if !matches!(node.kind, ModelKind::Symlink(_)) {
                    node.meta.mode = entry.meta.mode;
                    node.meta.mtime = entry.meta.mtime;
                    node.meta.atime = entry.meta.atime;
                }
                node.meta.xattrs.extend(entry.meta.xattrs.clone());
                inode
            }
            None => {
                let mut meta = entry.meta.clone();
                let kind = match &entry.kind {
                    EntryKind::Directory => ModelKind::Dir,
                    EntryKind::File(f) => ModelKind::File(f.content.clone()),
                    EntryKind::Symlink(t) => {
                        meta.mode = 0o777;
                        ModelKind::Symlink(t.clone())
                    }
                    EntryKind::Fifo => ModelKind::Fifo,
                    EntryKind::CharDevice(d) => ModelKind::Char(*d),
                    EntryKind::BlockDevice(_) | EntryKind::HardLink(_) => unreachable!("not generated"),
                };
                self.inodes.push(Inode { kind, meta });
                self.inodes.len() - 1
            }
        };
        self.remove(&path);
        self.paths.insert(path, inode);
        Ok(())
    }

    fn listing(&self) -> Listing {
        let mut first = HashMap::new();
        self.paths
            .iter()
            .map(|(parts, &inode)| {
                let path = parts.join(&b'/');
                let node = &self.inodes[inode];
                let kind = match &node.kind {
                    ModelKind::Dir => "dir".to_string(),
                    ModelKind::File(bytes) => format!("file {bytes:?}"),
                    ModelKind::Symlink(t) => format!("symlink {t:?}"),
                    ModelKind::Char(d) => format!("char {}:{}", d.major, d.minor),
                    ModelKind::Fifo => "fifo".to_string(),
                };
                let alias = first.entry(inode).or_insert_with(|| path.clone()).clone();
                (path, describe(&kind, &node.meta), alias)
            })
            .collect()
    }
}
