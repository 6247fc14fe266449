//! The ext4 writer: a filesystem tree in, a mountable, fsck-clean ext4 image out, with no
//! root, loop device or staging directory.
//!
//! Plan, then emit: `plan` computes every inode number, block and extent as data; `emit`
//! serializes that plan in one pass. One module per on-disk structure, fields named as the
//! kernel names them, each magic value citing its section of the kernel's
//! Documentation/filesystems/ext4.
//!
//! Features: 4 KiB blocks, 256-byte inodes, extents, flex_bg, sparse_super2, large_file,
//! huge_file, dir_nlink, filetype, extra_isize, 64bit, metadata_csum, ext_attr, and a jbd2
//! journal unless turned off. The output is a pure function of the tree and the options:
//! UUID and hash seed come from the caller's seed, times from the tree or `fs_time`.

use std::io;

use sha2::{Digest as _, Sha256};

use crate::error::{Classify, ErrorKind};
use crate::tree::{Content, FsTree, Timestamp};

mod checksum;
mod dir;
pub(crate) mod disk;
mod emit;
mod extent;
mod group;
mod htree;
mod inode;
mod journal;
mod plan;
mod superblock;
mod xattr;

pub use disk::{MemDisk, WriteAt};
pub use xattr::XattrError;

/// How big the image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeSpec {
    /// What the content needs, grown by `headroom_percent` and by at least `min_free_bytes`.
    Auto { headroom_percent: u32, min_free_bytes: u64 },
    /// Exactly this many bytes (rounded down to 4 KiB).
    Bytes(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub size: SizeSpec,
    /// A jbd2 journal (inode 8), so the image can be mounted read-write and survive a crash.
    pub journal: bool,
    /// UUID, directory hash seed and journal UUID are derived from it (e.g. the sha256 of
    /// the input); never random.
    pub seed: [u8; 32],
    /// The filesystem's own times: creation, last write, lost+found.
    pub fs_time: Timestamp,
    /// Free inodes beyond those the tree needs, in percent.
    pub inode_headroom_percent: u32,
    /// Volume label, at most 16 bytes.
    pub label: Option<String>,
    /// File data that knows its place in the image ([`Content::placed`]) is already in the
    /// output there: the layout keeps it and the writer leaves it as it is.
    pub data_in_place: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: SizeSpec::Auto { headroom_percent: 10, min_free_bytes: 32 << 20 },
            journal: true,
            seed: [0; 32],
            fs_time: Timestamp::default(),
            inode_headroom_percent: 20,
            label: None,
            data_in_place: false,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub size_bytes: u64,
    pub uuid: [u8; 16],
    pub inodes_used: u64,
    pub blocks_used: u64,
    pub block_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("image size {size} bytes is too small: the tree needs at least {needed} bytes")]
    TooSmall { size: u64, needed: u64 },
    #[error("image size {size} bytes is larger than diskc writes ({max} bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("the tree needs {0} inodes, more than ext4 holds")]
    TooManyInodes(u64),
    #[error("{path}: {source}")]
    Xattr { path: String, source: XattrError },
    #[error("{0}: xattrs do not fit in the inode and one 4096-byte block")]
    XattrsTooLarge(String),
    #[error("{path}: symlink target of {len} bytes; ext4 holds 1 to 4095")]
    SymlinkLength { path: String, len: usize },
    #[error("{path}: {links} hard links; ext4 holds at most 65000")]
    TooManyLinks { path: String, links: u32 },
    #[error("{path}: {size} bytes is larger than an ext4 file can be")]
    FileTooLarge { path: String, size: u64 },
    #[error("{0}: its data block runs are not sorted, disjoint and within the file")]
    BadDataRuns(String),
    #[error("/lost+found in the tree is not a directory")]
    LostFoundNotDirectory,
    #[error("label {0:?} is longer than 16 bytes")]
    LabelTooLong(String),
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("copying {path} into the image: {source}")]
    Copy { path: String, source: io::Error },
    #[error("writing the image: {0}")]
    Write(io::Error),
}

impl Classify for Ext4Error {
    fn error_kind(&self) -> ErrorKind {
        match self {
            Ext4Error::Read { source, .. } | Ext4Error::Copy { source, .. } => ErrorKind::of_io(source),
            Ext4Error::Write(_) => ErrorKind::Environment,
            _ => ErrorKind::BadInput,
        }
    }
}

/// Writes the image of `tree` to `out` (truncated first; the result is sparse).
pub fn write_image<C: Content>(
    tree: &FsTree<C>,
    options: &Options,
    out: &std::fs::File,
) -> Result<Summary, Ext4Error> {
    write_image_to(tree, options, out)
}

/// [`write_image`] on any positional sink, e.g. a [`MemDisk`].
pub fn write_image_to<C: Content>(
    tree: &FsTree<C>,
    options: &Options,
    out: &dyn WriteAt,
) -> Result<Summary, Ext4Error> {
    let mut label = [0u8; 16];
    if let Some(l) = &options.label {
        if l.len() > 16 {
            return Err(Ext4Error::LabelTooLong(l.clone()));
        }
        label[..l.len()].copy_from_slice(l.as_bytes());
    }
    let hash_seed = derive(&options.seed, b"diskc ext4 directory hash seed");
    let plan = plan::plan(tree, options, &htree::seed_words(&hash_seed))?;
    let uuid = derive_uuid(&options.seed);
    let ids =
        emit::Ids { uuid, hash_seed, fs_seed: checksum::fs_seed(&uuid), fs_time: options.fs_time, label };
    let size_bytes = plan.geo.blocks_count * plan::BLOCK_SIZE;
    tracing::info!(
        inodes = plan.max_ino,
        blocks = plan.geo.blocks_count,
        groups = plan.geo.groups,
        used = plan.blocks_used(),
        "ext4 layout planned"
    );
    if options.data_in_place {
        out.grow(size_bytes).map_err(Ext4Error::Write)?;
    } else {
        out.set_len(size_bytes).map_err(Ext4Error::Write)?;
    }
    emit::emit(tree, &plan, &ids, out)?;
    tracing::info!("ext4 image written");
    Ok(Summary {
        size_bytes,
        uuid,
        inodes_used: u64::from(plan.max_ino),
        blocks_used: plan.blocks_used(),
        block_size: plan::BLOCK_SIZE as u32,
    })
}

fn derive(seed: &[u8; 32], purpose: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(purpose);
    h.update(seed);
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// A version-4-shaped UUID (RFC 9562 bits set) from the seed, so tools print it plainly.
fn derive_uuid(seed: &[u8; 32]) -> [u8; 16] {
    let mut u = derive(seed, b"diskc ext4 uuid");
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{DeviceNumber, Directory, FileData, Metadata, Node, NodeKind};

    pub(crate) fn sample_tree() -> FsTree<Vec<u8>> {
        let t0 = Timestamp::new(1_600_000_000, 123);
        let meta = |mode| Metadata::with_mode(mode, t0);
        let mut t = FsTree::new(meta(0o755));
        let root = FsTree::<Vec<u8>>::ROOT;
        let etc = t.add(Node::new(NodeKind::Directory(Directory::default()), meta(0o755)));
        t.insert(root, b"etc", etc).unwrap();
        let f = t.add(Node::new(NodeKind::File(FileData::from_bytes(b"hello\n".to_vec())), meta(0o644)));
        t.insert(etc, b"hostname", f).unwrap();
        t.insert(root, b"hardlink", f).unwrap();
        let mut big = vec![0u8; 3 << 20];
        big[0] = 1;
        big[(3 << 20) - 1] = 2;
        let b = t.add(Node::new(NodeKind::File(FileData::from_bytes(big)), meta(0o600)));
        t.insert(root, b"sparse", b).unwrap();
        let s = t.add(Node::new(NodeKind::Symlink(b"etc/hostname".to_vec()), meta(0o777)));
        t.insert(root, b"link", s).unwrap();
        let long = t.add(Node::new(NodeKind::Symlink(vec![b'x'; 300]), meta(0o777)));
        t.insert(root, b"longlink", long).unwrap();
        let dev = t.add(Node::new(NodeKind::CharDevice(DeviceNumber { major: 1, minor: 3 }), meta(0o666)));
        t.insert(root, b"null", dev).unwrap();
        let mut xm = meta(0o644);
        xm.xattrs.insert(b"user.big".to_vec(), vec![7; 3000]);
        xm.xattrs.insert(b"security.capability".to_vec(), vec![1; 20]);
        let x = t.add(Node::new(NodeKind::File(FileData::from_bytes(vec![])), xm));
        t.insert(root, b"xattrs", x).unwrap();
        t
    }

    #[test]
    fn writes_the_same_bytes_twice() {
        let t = sample_tree();
        let (a, b) = (MemDisk::default(), MemDisk::default());
        write_image_to(&t, &Options::default(), &a).unwrap();
        write_image_to(&t, &Options::default(), &b).unwrap();
        assert!(*a.bytes.lock().unwrap() == *b.bytes.lock().unwrap());
    }

    #[test]
    fn a_small_tree_passes_e2fsck() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = std::fs::File::create(&path).unwrap();
        let summary = write_image(&sample_tree(), &Options::default(), &file).unwrap();
        assert_eq!(summary.block_size, 4096);
        let out = std::process::Command::new("e2fsck").arg("-fn").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// File bytes that claim to come from image layer `.1`.
    struct Layered(Vec<u8>, u32);

    impl Content for Layered {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.0.read_at(offset, buf)
        }

        fn layer(&self) -> u32 {
            self.1
        }
    }

    fn layered_file(t: &mut FsTree<Layered>, dir: crate::tree::NodeId, name: &str, size: usize, layer: u32) {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 200) as u8 + 1).collect();
        let data_blocks = crate::tree::sparse::data_blocks_of(&bytes);
        let f = FileData { size: size as u64, content: Layered(bytes, layer), data_blocks };
        let id = t.add(Node::new(NodeKind::File(f), Metadata::with_mode(0o644, Timestamp::default())));
        t.insert(dir, name.as_bytes(), id).unwrap();
    }

    fn physical_blocks(tree: &FsTree<Layered>, plan: &plan::Plan, path: &str) -> Vec<(u32, u64, u16)> {
        let id = tree.lookup(path.as_bytes()).unwrap();
        let p = plan.inodes.iter().find(|p| p.role == plan::Role::Node(id)).unwrap();
        plan::all_extents(p).iter().map(|e| (e.logical, e.physical, e.len)).collect()
    }

    #[test]
    fn base_layer_data_keeps_its_blocks_whatever_is_added_above() {
        let root = FsTree::<Layered>::ROOT;
        let mut base = FsTree::new(Metadata::with_mode(0o755, Timestamp::default()));
        layered_file(&mut base, root, "zz-large", 3 << 20, 0);
        layered_file(&mut base, root, "small", 10_000, 0);
        let mut derived = FsTree::new(Metadata::with_mode(0o755, Timestamp::default()));
        // Names sorting before the base files, many inodes, a big directory, and upper-layer
        // data: none of it may move the base layer's blocks.
        let dir = derived.add(Node::new(NodeKind::Directory(Directory::default()), Metadata::default()));
        derived.insert(root, b"aaa", dir).unwrap();
        for i in 0..3000 {
            layered_file(&mut derived, dir, &format!("f{i}"), 100, 1);
        }
        layered_file(&mut derived, root, "zz-large", 3 << 20, 0);
        layered_file(&mut derived, root, "small", 10_000, 0);
        let seed = [0u32; 4];
        let a = plan::plan(&base, &Options::default(), &seed).unwrap();
        let b = plan::plan(&derived, &Options::default(), &seed).unwrap();
        for path in ["zz-large", "small"] {
            assert_eq!(physical_blocks(&base, &a, path), physical_blocks(&derived, &b, path), "{path}");
        }
        let large = physical_blocks(&base, &a, "zz-large");
        assert_eq!(large[0].1 % 256, 0, "a file of 1 MiB or more starts on a MiB");
    }

    #[test]
    fn kernel_copy_and_buffered_copy_write_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("small"), b"hello").unwrap();
        let big: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i % 255) as u8 + 1).collect();
        std::fs::write(src.join("big"), big).unwrap();
        let tree = crate::tree::host::read_tree(&src).unwrap();
        let path = dir.path().join("img");
        let file = std::fs::File::create(&path).unwrap();
        write_image(&tree, &Options::default(), &file).unwrap();
        let mem = MemDisk::default();
        write_image_to(&tree, &Options::default(), &mem).unwrap();
        assert!(std::fs::read(&path).unwrap() == *mem.bytes.lock().unwrap());
    }

    #[test]
    fn too_small_is_an_error_before_writing() {
        let disk = MemDisk::default();
        let o = Options { size: SizeSpec::Bytes(2 << 20), ..Options::default() };
        let err = write_image_to(&sample_tree(), &o, &disk).unwrap_err();
        assert!(matches!(err, Ext4Error::TooSmall { .. }), "{err}");
        assert!(disk.bytes.lock().unwrap().is_empty());
    }
}
