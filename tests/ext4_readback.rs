//! The writer on its own, read back without root: random trees → image → ext4-view (a
//! pure-Rust reader) → equal, with `e2fsck -fn` clean on every image; deep extent trees;
//! and the sha256 of a fixture image pinned as a determinism regression guard.

mod common;

#[path = "../fuzz/checks/mod.rs"]
#[allow(dead_code)]
mod checks;

use std::path::Path;

use diskc::ext4::{write_image, Options, SizeSpec};
use diskc::tree::{DeviceNumber, Directory, FileData, FsTree, Metadata, Node, NodeKind, Timestamp};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use common::{assert_fsck_clean, tempdir};

type Tree = FsTree<Vec<u8>>;

fn write(tree: &Tree, options: &Options, path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    write_image(tree, options, &file).unwrap();
}

fn small_options(journal: bool) -> Options {
    Options {
        size: SizeSpec::Auto { headroom_percent: 0, min_free_bytes: 0 },
        journal,
        seed: [7; 32],
        fs_time: Timestamp::new(1_700_000_000, 0),
        ..Options::default()
    }
}

/// Every reachable node of `tree` as ext4-view sees it in the image (the ext4_write fuzz
/// target's comparison).
fn assert_image_holds(tree: &Tree, image: &Path) {
    let fs = ext4_view::Ext4::load_from_path(image).expect("ext4-view loads the image");
    checks::ext4_write::assert_image_holds(tree, &fs);
}

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    /// Size, byte salt, and which 4 KiB blocks are zero (bit i: block i).
    File(usize, u8, u16),
    Symlink(usize),
    HardLink(usize),
    Fifo,
    Device(u32, u32),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Dir),
        5 => (0usize..40_000, any::<u8>(), any::<u16>()).prop_map(|(s, b, z)| Kind::File(s, b, z)),
        2 => (1usize..300).prop_map(Kind::Symlink),
        1 => any::<usize>().prop_map(Kind::HardLink),
        1 => Just(Kind::Fifo),
        1 => (0u32..4096, 0u32..1_000_000).prop_map(|(a, b)| Kind::Device(a, b)),
    ]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z]{1,12}".prop_map(|s| s.into_bytes()),
        1 => prop::collection::vec(1u8..=255, 1..255).prop_map(|v| v.into_iter().map(|b| if b == b'/' { b'_' } else { b }).collect()),
        1 => (200usize..=255).prop_map(|n| vec![b'n'; n]),
    ]
    .prop_filter("not . or ..", |n: &Vec<u8>| n != b"." && n != b"..")
}

/// Times from 1970 to 2038 only: ext4-view 1.0 rejects a negative low seconds word, which
/// is how ext4 (and the kernel) encode times before 1970 and from 2038 to 2106. Those are
/// covered through the kernel in mkfs_cases.rs.
fn meta() -> impl Strategy<Value = Metadata> {
    (
        0u16..0o10000,
        any::<u32>(),
        any::<u32>(),
        0i64..(1i64 << 31),
        0u32..1_000_000_000,
        prop::option::of(prop::collection::vec(any::<u8>(), 0..120)),
    )
        .prop_map(|(mode, uid, gid, sec, nsec, xattr)| {
            let t = Timestamp::new(sec, nsec);
            let mut m = Metadata { mode, uid, gid, atime: t, mtime: t, ctime: t, ..Metadata::default() };
            if let Some(v) = xattr {
                m.xattrs.insert(b"user.p".to_vec(), v);
            }
            m
        })
}

fn build(entries: Vec<(usize, Vec<u8>, Kind, Metadata)>) -> Tree {
    let mut t = Tree::new(Metadata::with_mode(0o755, Timestamp::new(1, 2)));
    let mut dirs = vec![Tree::ROOT];
    let mut files = Vec::new();
    for (parent, name, kind, meta) in entries {
        let dir = dirs[parent % dirs.len()];
        if t.child(dir, &name).is_some() || (dir == Tree::ROOT && name == b"lost+found") {
            continue;
        }
        let id = match kind {
            Kind::HardLink(i) if !files.is_empty() => files[i % files.len()],
            Kind::HardLink(_) => continue,
            Kind::Dir => t.add(Node::new(NodeKind::Directory(Directory::default()), meta)),
            Kind::File(size, salt, zeros) => {
                let mut bytes: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_add(salt) | 1).collect();
                for (b, chunk) in bytes.chunks_mut(4096).enumerate() {
                    if zeros & (1 << (b % 16)) != 0 {
                        chunk.fill(0);
                    }
                }
                t.add(Node::new(NodeKind::File(FileData::from_bytes(bytes)), meta))
            }
            // Components stay under 256 bytes: ext4-view refuses longer ones in a target.
            Kind::Symlink(n) => {
                let target = (0..n).map(|i| if i % 50 == 49 { b'/' } else { b's' }).collect();
                t.add(Node::new(NodeKind::Symlink(target), meta))
            }
            Kind::Fifo => t.add(Node::new(NodeKind::Fifo, meta)),
            Kind::Device(major, minor) => {
                t.add(Node::new(NodeKind::BlockDevice(DeviceNumber { major, minor }), meta))
            }
        };
        t.insert(dir, &name, id).unwrap();
        match t.get(id).kind {
            NodeKind::Directory(_) => dirs.push(id),
            NodeKind::File(_) => files.push(id),
            _ => {}
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_read_back_equal(
        entries in prop::collection::vec((any::<usize>(), name(), kind(), meta()), 0..60),
        journal in any::<bool>(),
    ) {
        let tree = build(entries);
        let tmp = tempdir();
        let image = tmp.path().join("img");
        write(&tree, &small_options(journal), &image);
        assert_fsck_clean(&image);
        assert_image_holds(&tree, &image);
    }
}

/// A file with `runs` single data blocks separated by holes: one extent each.
fn fragmented(runs: u64) -> FileData<Vec<u8>> {
    let mut bytes = vec![0u8; (runs * 2 * 4096) as usize];
    for r in 0..runs as usize {
        bytes[r * 2 * 4096..r * 2 * 4096 + 4096].fill((r % 250) as u8 + 1);
    }
    FileData::from_bytes(bytes)
}

#[test]
fn extent_trees_with_index_levels_read_back() {
    let t0 = Timestamp::new(1_000, 0);
    let mut tree = Tree::new(Metadata::with_mode(0o755, t0));
    for (name, runs) in [("four", 4), ("depth1", 100), ("depth2", 2000)] {
        let id = tree.add(Node::new(NodeKind::File(fragmented(runs)), Metadata::with_mode(0o644, t0)));
        tree.insert(Tree::ROOT, name.as_bytes(), id).unwrap();
    }
    let tmp = tempdir();
    let image = tmp.path().join("img");
    write(&tree, &small_options(true), &image);
    assert_fsck_clean(&image);
    assert_image_holds(&tree, &image);
    let out =
        std::process::Command::new("debugfs").args(["-R", "stat /depth2"]).arg(&image).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(2):"), "depth2 has no second index level:\n{text}");
}

/// A small tree touching every kind of inode and both xattr placements.
fn fixture() -> Tree {
    let t0 = Timestamp::new(1_577_836_800, 500);
    let m = |mode| Metadata::with_mode(mode, t0);
    let mut t = Tree::new(m(0o755));
    let etc = t.add(Node::new(NodeKind::Directory(Directory::default()), m(0o755)));
    t.insert(Tree::ROOT, b"etc", etc).unwrap();
    let hosts =
        t.add(Node::new(NodeKind::File(FileData::from_bytes(b"127.0.0.1 localhost\n".to_vec())), m(0o644)));
    t.insert(etc, b"hosts", hosts).unwrap();
    t.insert(Tree::ROOT, b"hosts-link", hosts).unwrap();
    let mut big = vec![0u8; 3 << 20];
    big[..4096].fill(1);
    big[(2 << 20)..(2 << 20) + 10].fill(2);
    let b = t.add(Node::new(NodeKind::File(FileData::from_bytes(big)), m(0o600)));
    t.insert(Tree::ROOT, b"sparse", b).unwrap();
    let s = t.add(Node::new(NodeKind::Symlink(b"etc/hosts".to_vec()), m(0o777)));
    t.insert(Tree::ROOT, b"short", s).unwrap();
    let l = t.add(Node::new(NodeKind::Symlink(vec![b'x'; 100]), m(0o777)));
    t.insert(Tree::ROOT, b"long", l).unwrap();
    let d = t.add(Node::new(NodeKind::CharDevice(DeviceNumber { major: 1, minor: 3 }), m(0o666)));
    t.insert(Tree::ROOT, b"null", d).unwrap();
    let f = t.add(Node::new(NodeKind::Fifo, m(0o644)));
    t.insert(Tree::ROOT, b"fifo", f).unwrap();
    let mut xm = m(0o4755);
    xm.uid = 4_294_967_294;
    xm.xattrs.insert(b"user.small".to_vec(), b"v".to_vec());
    let x = t.add(Node::new(NodeKind::File(FileData::from_bytes(b"#!/bin/sh\n".to_vec())), xm));
    t.insert(Tree::ROOT, b"suid", x).unwrap();
    let mut bm = m(0o644);
    bm.xattrs.insert(b"trusted.big".to_vec(), vec![9; 2000]);
    let y = t.add(Node::new(NodeKind::File(FileData::from_bytes(Vec::new())), bm));
    t.insert(etc, b"xattr-block", y).unwrap();
    t
}

/// Changes to this digest are changes to the bytes diskc writes: make them on purpose.
const FIXTURE_SHA256: &str = "429c12a2c74b6445419e184e4f6e19107f25cd7d82105019151fc79d6118123f";

#[test]
fn fixture_image_digest_is_pinned() {
    let tmp = tempdir();
    let image = tmp.path().join("img");
    let options = Options { size: SizeSpec::Bytes(16 << 20), ..small_options(true) };
    write(&fixture(), &options, &image);
    assert_fsck_clean(&image);
    assert_image_holds(&fixture(), &image);
    let digest = hex::encode(Sha256::digest(std::fs::read(&image).unwrap()));
    assert_eq!(digest, FIXTURE_SHA256);
}

#[test]
fn large_directories_get_hash_indexes_at_one_and_two_levels() {
    let t0 = Timestamp::new(1_000, 0);
    let mut tree = Tree::new(Metadata::with_mode(0o755, t0));
    for (dir_name, count, name_len) in
        [("two-blocks", 300usize, 12usize), ("wide", 20_000, 20), ("two-levels", 60_000, 40)]
    {
        let dir =
            tree.add(Node::new(NodeKind::Directory(Directory::default()), Metadata::with_mode(0o755, t0)));
        tree.insert(Tree::ROOT, dir_name.as_bytes(), dir).unwrap();
        for i in 0..count {
            let name = format!("{i:0name_len$}");
            let id = tree.add(Node::new(NodeKind::Fifo, Metadata::with_mode(0o644, t0)));
            tree.insert(dir, name.as_bytes(), id).unwrap();
        }
    }
    let tmp = tempdir();
    let image = tmp.path().join("img");
    write(&tree, &small_options(false), &image);
    assert_fsck_clean(&image);
    assert_image_holds(&tree, &image);
    for (dir, levels) in [("two-blocks", "0"), ("wide", "0"), ("two-levels", "1")] {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("htree /{dir}")])
            .arg(&image)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("Indirect levels: {levels}")),
            "/{dir} is not an htree of {levels} levels:\n{}",
            &text[..text.len().min(2000)]
        );
    }
}
