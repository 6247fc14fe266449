//! The ext4 writer read back: a random tree (directories, files with holes, symlinks short
//! and long, hard links, devices, fifos, xattrs, odd names) → an image in memory → ext4-view,
//! a reader written apart from diskc → the same tree. Every tree decoded here is within
//! ext4's limits (xattrs fit a block, targets under 4096 bytes), so writing must succeed, and
//! never panic or write an image that reads back different.

use diskc::ext4::{write_image_to, MemDisk, Options, SizeSpec};
use diskc::tree::{DeviceNumber, Directory, FileData, FsTree, Metadata, Node, NodeId, NodeKind, Timestamp};

use super::bytes::Choices;

pub type Tree = FsTree<Vec<u8>>;

/// Decodes a tree, writes it, reads it back and panics where the two differ.
pub fn check(data: &[u8]) {
    let mut c = Choices::new(data);
    let journal = c.below(2) == 1;
    let tree = decode(&mut c);
    let options = Options {
        size: SizeSpec::Auto { headroom_percent: 0, min_free_bytes: 0 },
        journal,
        seed: [7; 32],
        fs_time: Timestamp::new(1_700_000_000, 0),
        ..Options::default()
    };
    let disk = MemDisk::default();
    write_image_to(&tree, &options, &disk)
        .unwrap_or_else(|e| panic!("writing a tree of {} nodes: {e:?}", tree.arena_len()));
    let bytes = disk.bytes.into_inner().unwrap();
    let fs = ext4_view::Ext4::load(Box::new(bytes)).unwrap_or_else(|e| panic!("ext4-view: {e}"));
    assert_image_holds(&tree, &fs);
}

fn name(c: &mut Choices<'_>) -> Vec<u8> {
    match c.below(8) {
        0 => vec![b'n'; 200 + c.below(56)],
        1 => {
            let raw = c.bytes(255);
            let name: Vec<u8> = raw.into_iter().map(|b| if b == b'/' || b == 0 { b'_' } else { b }).collect();
            if name.is_empty() || name == b"." || name == b".." {
                b"x".to_vec()
            } else {
                name
            }
        }
        _ => {
            let len = 1 + c.below(12);
            (0..len).map(|_| b'a' + c.below(26) as u8).collect()
        }
    }
}

/// Times from 1970 to 2038 only: ext4-view 1.0 rejects a negative low seconds word, which is
/// how ext4 encodes times before 1970 and from 2038 on (tests/mkfs_cases.rs checks those
/// through the kernel).
fn meta(c: &mut Choices<'_>) -> Metadata {
    let t = Timestamp::new((c.u32() >> 1) as i64, c.u32() % 1_000_000_000);
    let mut m = Metadata {
        mode: (c.u32() & 0o7777) as u16,
        uid: c.u32(),
        gid: c.u32(),
        atime: t,
        mtime: t,
        ctime: t,
        ..Metadata::default()
    };
    for _ in 0..c.below(3) {
        let key = [b"user.a".as_slice(), b"user.long.name", b"trusted.t", b"security.capability"][c.below(4)];
        let value = if c.below(4) == 0 { vec![c.byte(); 100 * c.below(10)] } else { c.bytes(64) };
        m.xattrs.insert(key.to_vec(), value);
    }
    m
}

/// File bytes: 4 KiB blocks, each all zeros (a hole) or a pattern, and a tail.
fn content(c: &mut Choices<'_>) -> Vec<u8> {
    let blocks = c.below(12);
    let mut bytes = Vec::new();
    for _ in 0..blocks {
        let fill = if c.below(3) == 0 { 0 } else { c.byte() | 1 };
        bytes.extend(std::iter::repeat_n(fill, 4096));
    }
    let tail = c.below(256) * c.below(17);
    bytes.extend((0..tail).map(|i| i as u8 | 1));
    bytes
}

pub fn decode(c: &mut Choices<'_>) -> Tree {
    let mut t = Tree::new(meta(c));
    let mut dirs = vec![Tree::ROOT];
    let mut files: Vec<NodeId> = Vec::new();
    let entries = c.below(40);
    for _ in 0..entries {
        if c.is_empty() {
            break;
        }
        let dir = *c.pick(&dirs);
        let name = name(c);
        if t.child(dir, &name).is_some() || (dir == Tree::ROOT && name == b"lost+found") {
            continue;
        }
        let kind = c.below(9);
        let m = meta(c);
        let id = match kind {
            0 | 1 => t.add(Node::new(NodeKind::Directory(Directory::default()), m)),
            2 | 3 => t.add(Node::new(NodeKind::File(FileData::from_bytes(content(c))), m)),
            // Components stay under 256 bytes: ext4-view refuses longer ones in a target.
            4 => {
                let len = 1 + c.below(256) * (1 + c.below(16));
                let target = (0..len).map(|i| if i % 50 == 49 { b'/' } else { b's' }).collect();
                t.add(Node::new(NodeKind::Symlink(target), m))
            }
            5 if !files.is_empty() => *c.pick(&files),
            5 => continue,
            6 => t.add(Node::new(NodeKind::Fifo, m)),
            7 => t.add(Node::new(NodeKind::Socket, m)),
            _ => {
                let d = DeviceNumber { major: c.u32() % 4096, minor: c.u32() % (1 << 20) };
                let kind = if c.below(2) == 0 { NodeKind::CharDevice(d) } else { NodeKind::BlockDevice(d) };
                t.add(Node::new(kind, m))
            }
        };
        t.insert(dir, &name, id).expect("a valid name in a directory");
        match t.get(id).kind {
            NodeKind::Directory(_) => dirs.push(id),
            NodeKind::File(_) if !files.contains(&id) => files.push(id),
            _ => {}
        }
    }
    t
}

fn abs(path: &[u8]) -> Vec<u8> {
    let mut p = b"/".to_vec();
    p.extend_from_slice(path);
    p
}

/// Every reachable node of `tree` as ext4-view sees it in the image: kind, permissions,
/// owners, mtime, size, bytes, targets; directory listings equal (lost+found aside).
pub fn assert_image_holds(tree: &Tree, fs: &ext4_view::Ext4) {
    for (path, id) in tree.walk() {
        let node = tree.get(id);
        let p = abs(&path);
        let shown = String::from_utf8_lossy(&p).into_owned();
        let meta = fs.symlink_metadata(p.as_slice()).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(meta.mode(), node.meta.mode, "{shown}: mode");
        assert_eq!((meta.uid(), meta.gid()), (node.meta.uid, node.meta.gid), "{shown}: owner");
        let mtime = meta.modified();
        assert_eq!(
            (mtime.seconds(), mtime.nanoseconds()),
            (node.meta.mtime.sec, node.meta.mtime.nsec),
            "{shown}: mtime"
        );
        use ext4_view::FileType as T;
        match &node.kind {
            NodeKind::Directory(d) => {
                assert_eq!(meta.file_type(), T::Directory, "{shown}");
                let mut names: Vec<Vec<u8>> = fs
                    .read_dir(p.as_slice())
                    .unwrap()
                    .map(|e| e.unwrap().file_name().as_ref().to_vec())
                    .filter(|n| n != b"." && n != b"..")
                    .filter(|n| !(path.is_empty() && n == b"lost+found"))
                    .collect();
                names.sort();
                let want: Vec<Vec<u8>> = d.entries.keys().cloned().collect();
                assert_eq!(names, want, "{shown}: entries");
            }
            NodeKind::File(f) => {
                assert_eq!(meta.file_type(), T::Regular, "{shown}");
                assert_eq!(meta.len(), f.size, "{shown}: size");
                assert!(fs.read(p.as_slice()).unwrap() == f.content, "{shown}: content");
            }
            NodeKind::Symlink(t) => {
                assert_eq!(meta.file_type(), T::Symlink, "{shown}");
                let got = fs.read_link(p.as_slice()).unwrap();
                assert_eq!(got.as_ref(), t.as_slice(), "{shown}: target");
            }
            NodeKind::CharDevice(_) => assert_eq!(meta.file_type(), T::CharacterDevice, "{shown}"),
            NodeKind::BlockDevice(_) => assert_eq!(meta.file_type(), T::BlockDevice, "{shown}"),
            NodeKind::Fifo => assert_eq!(meta.file_type(), T::Fifo, "{shown}"),
            NodeKind::Socket => assert_eq!(meta.file_type(), T::Socket, "{shown}"),
        }
    }
}
