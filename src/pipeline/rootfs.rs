//! The rootfs stage shared by convert and mkfs: ext4 options derived from the input (never
//! from the clock), writing the image into a staged file, and its BLAKE3 digest.

use std::fs::File;
use std::io;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::{PipelineError, RootfsOptions};
use crate::digest::{Digest, FileDigest};
use crate::ext4::{self, SizeSpec};
use crate::fileio::{self, data_extents};
use crate::manifest::FORMAT_VERSION;
use crate::tree::{Content, FsTree, NodeId, NodeKind, Timestamp};

/// ext4 options for an image: the UUID and hash seed come from the layers' content digests
/// and the options, so the same layers give the same filesystem through any transport.
pub fn ext4_options(diff_ids: &[Digest], rootfs: &RootfsOptions, fs_time: Timestamp) -> ext4::Options {
    let mut seed = Sha256::new();
    seed.update(format!("diskc rootfs v{FORMAT_VERSION}\n"));
    for d in diff_ids {
        seed.update(d.as_bytes());
    }
    seed.update(serde_json::to_vec(rootfs).expect("options serialize"));
    ext4::Options {
        size: size_spec(rootfs.size),
        journal: rootfs.journal,
        seed: seed.finalize().into(),
        fs_time,
        ..Default::default()
    }
}

/// `None` is the default: the content plus headroom.
pub(super) fn size_spec(size: Option<u64>) -> SizeSpec {
    match size {
        Some(bytes) => SizeSpec::Bytes(bytes),
        None => ext4::Options::default().size,
    }
}

/// The filesystem's own time (superblock, root, lost+found): the source date epoch when
/// given, else the newest mtime in the tree; never the clock.
pub fn fs_time<C>(tree: &FsTree<C>, source_date_epoch: Option<i64>) -> Timestamp {
    if let Some(sec) = source_date_epoch {
        return Timestamp::new(sec, 0);
    }
    let newest = tree.walk_ids().into_iter().map(|id| tree.get(id).meta.mtime).max().unwrap_or_default();
    Timestamp::new(newest.sec.max(0), 0)
}

/// What reproducible-builds tools do with `SOURCE_DATE_EPOCH`: no time in the tree is later
/// than the epoch (mtimes are clamped to it), and the times a copy of the tree would not keep
/// (atime, ctime) are the epoch, so a tree copied anew gives the same bytes.
pub(super) fn clamp_times<C>(tree: &mut FsTree<C>, epoch: i64) {
    let epoch = Timestamp::new(epoch, 0);
    for id in 0..tree.arena_len() {
        let meta = &mut tree.get_mut(crate::tree::NodeId(id as u32)).meta;
        meta.mtime = meta.mtime.min(epoch);
        meta.atime = epoch;
        meta.ctime = epoch;
    }
}

/// The seed for a filesystem made from a tree alone (mkfs): a digest of the tree's listing
/// (names, kinds, modes, owners, sizes, times, targets, device numbers, xattrs, hard-link
/// identity). File contents are left out so the seed costs no extra read of the data.
pub(super) fn tree_seed<C>(tree: &FsTree<C>) -> [u8; 32] {
    let mut h = Sha256::new();
    tree_listing(tree, |bytes| h.update(bytes));
    h.finalize().into()
}

/// Feeds `out` the listing [`tree_seed`] hashes. Each entry is named by its depth and its own
/// name, in the walk's order (depth first, names sorted), never by its full path: that
/// sequence tells the tree apart just as well, and costs the tree's size where full paths
/// cost the square of its depth.
fn tree_listing<C>(tree: &FsTree<C>, mut out: impl FnMut(&[u8])) {
    let mut first_seen = std::collections::HashMap::new();
    let mut entry = |depth: usize, name: &[u8], id: NodeId| {
        let node = tree.get(id);
        let index = first_seen.len();
        out(&(depth as u64).to_le_bytes());
        out(&(name.len() as u64).to_le_bytes());
        out(name);
        out(&(*first_seen.entry(id).or_insert(index) as u64).to_le_bytes());
        let m = &node.meta;
        out(&m.mode.to_le_bytes());
        out(&m.uid.to_le_bytes());
        out(&m.gid.to_le_bytes());
        out(&m.mtime.sec.to_le_bytes());
        out(&m.mtime.nsec.to_le_bytes());
        for (k, v) in &m.xattrs {
            out(&(k.len() as u64).to_le_bytes());
            out(k);
            out(&(v.len() as u64).to_le_bytes());
            out(v);
        }
        match &node.kind {
            NodeKind::Directory(_) => out(b"d"),
            NodeKind::File(f) => {
                out(b"f");
                out(&f.size.to_le_bytes());
            }
            NodeKind::Symlink(t) => {
                out(b"l");
                out(&(t.len() as u64).to_le_bytes());
                out(t);
            }
            NodeKind::CharDevice(d) | NodeKind::BlockDevice(d) => {
                out(if matches!(node.kind, NodeKind::CharDevice(_)) { b"c" } else { b"b" });
                out(&d.major.to_le_bytes());
                out(&d.minor.to_le_bytes());
            }
            NodeKind::Fifo => out(b"p"),
            NodeKind::Socket => out(b"s"),
        }
    };
    entry(0, b"", FsTree::<C>::ROOT);
    // The open directories' remaining entries; the stack's height is the depth.
    let mut open: Vec<_> =
        tree.get(FsTree::<C>::ROOT).as_dir().map(|d| d.entries.iter()).into_iter().collect();
    while let Some(entries) = open.last_mut() {
        let Some((name, &child)) = entries.next() else {
            open.pop();
            continue;
        };
        entry(open.len(), name, child);
        if let Some(dir) = tree.get(child).as_dir() {
            open.push(dir.entries.iter());
        }
    }
}

/// Writes `tree` (made from `input`) as ext4 into `file`; the caller stages the file, so a
/// failure leaves nothing half-written where anyone looks.
pub(super) fn write_rootfs<C: Content>(
    tree: &FsTree<C>,
    options: &ext4::Options,
    file: &File,
    input: &str,
) -> Result<ext4::Summary, PipelineError> {
    let summary = ext4::write_image(tree, options, file)
        .map_err(|source| PipelineError::Ext4 { input: input.to_string(), source })?;
    // Start writing it out now, while it is hashed and stored; `Staging::commit` waits for
    // it (fsync) before the output appears. Starting writeback of gigabytes blocks for a
    // while (the filesystem allocates the delayed blocks), so it happens on a thread.
    if let Ok(file) = file.try_clone() {
        std::thread::spawn(move || fileio::start_writeback(&file));
    }
    Ok(summary)
}

/// The rootfs digest: BLAKE3 of the file, hashed on every core, holes as the zeros they
/// read as, without reading them (the store's hasher, `store::file_digest`).
pub fn digest_file(path: &Path) -> Result<FileDigest, PipelineError> {
    let hash = || -> io::Result<FileDigest> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        crate::store::file_digest(&file, len, &data_extents(&file, len)?)
    };
    hash().map_err(|source| PipelineError::Io { what: "reading", path: path.to_path_buf(), source })
}

/// A filesystem UUID the way `blkid` prints it.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let hex = hex::encode(u);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::FileExt;

    use super::*;

    use crate::tree::{Directory, Metadata, Node};

    fn add(tree: &mut FsTree<Vec<u8>>, dir: NodeId, name: &[u8], kind: NodeKind<Vec<u8>>) -> NodeId {
        let id = tree.add(Node::new(kind, Metadata::with_mode(0o755, Timestamp::new(1, 0))));
        tree.insert(dir, name, id).unwrap();
        id
    }

    fn dir() -> NodeKind<Vec<u8>> {
        NodeKind::Directory(Directory::default())
    }

    /// Regression: the seed hashed every entry's full path, quadratic in the tree's depth
    /// (a chain of 20 000 directories hashed a GB).
    #[test]
    fn tree_seed_costs_the_tree_size_not_the_paths() {
        let mut tree = FsTree::new(Metadata::default());
        let mut at = FsTree::<Vec<u8>>::ROOT;
        for _ in 0..20_000 {
            at = add(&mut tree, at, b"dddd", dir());
        }
        let mut hashed = 0;
        tree_listing(&tree, |bytes| hashed += bytes.len());
        assert!(hashed < 100 * tree.arena_len(), "{hashed} bytes for {} nodes", tree.arena_len());
    }

    #[test]
    fn tree_seed_tells_apart_trees_with_the_same_names_in_other_places() {
        let root = FsTree::<Vec<u8>>::ROOT;
        let shapes = |c_in_a: bool, link: bool| {
            let mut tree = FsTree::new(Metadata::default());
            let a = add(&mut tree, root, b"a", dir());
            let b = add(&mut tree, a, b"b", NodeKind::Fifo);
            let c_dir = if c_in_a { a } else { root };
            if link {
                tree.insert(c_dir, b"c", b).unwrap();
            } else {
                add(&mut tree, c_dir, b"c", NodeKind::Fifo);
            }
            tree_seed(&tree)
        };
        let seeds = [shapes(false, false), shapes(true, false), shapes(false, true), shapes(true, true)];
        for (i, s) in seeds.iter().enumerate() {
            assert!(!seeds[i + 1..].contains(s), "seed {i} repeats");
        }
        assert_eq!(shapes(true, true), shapes(true, true), "deterministic");
    }

    #[test]
    fn digest_of_sparse_file_equals_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(5 << 20).unwrap();
        file.write_all_at(b"hello", 3 << 20).unwrap();
        drop(file);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(digest_file(&path).unwrap(), FileDigest::Blake3(blake3::hash(&bytes).into()));
        assert_eq!(digest_file(&path).unwrap().to_string().len(), "blake3:".len() + 64);
    }
}
