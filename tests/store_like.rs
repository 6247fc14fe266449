//! A put given a base image (`Store::put_image_like`): the image stored is exactly the one a
//! put without a base stores — same chunks, same id, same digest — whatever changed between
//! the two files (bytes, holes filled or punched, extents joined, the size grown or shrunk,
//! content shifted), and the bytes the two share are taken from the base, not read.

mod common;

use common::sample::{sample_bytes as bytes, sparse_file};

use std::fs;
use std::path::Path;

use diskc::digest::FileDigest;
use diskc::store::{ImageId, ImageRecord, Store, Stored};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A file as its size and its pieces of data (the rest is hole).
#[derive(Clone)]
struct Layout {
    size: u64,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl Layout {
    fn write(&self, path: &Path) {
        sparse_file(path, self.size, &self.pieces);
    }

    fn data_bytes(&self) -> u64 {
        self.pieces.iter().map(|(_, d)| d.len() as u64).sum()
    }
}

/// Extents of every kind: ends on a MiB and between, a small extent just before a large one,
/// holes.
fn base() -> Layout {
    Layout {
        size: 40 * MIB + 123,
        pieces: vec![
            (0, bytes(1, (3 * MIB + 777) as usize)),
            (5 * MIB, bytes(2, (4 * MIB) as usize)),
            (16 * MIB, bytes(3, (100 * KIB) as usize)),
            (16 * MIB + 200 * KIB, bytes(4, (11 * MIB) as usize)),
            (30 * MIB, bytes(5, (5 * MIB) as usize)),
        ],
    }
}

fn variants() -> Vec<(&'static str, Layout, bool)> {
    let b = base();
    let with = |change: &dyn Fn(&mut Layout)| {
        let mut l = b.clone();
        change(&mut l);
        l
    };
    vec![
        ("the same file", b.clone(), true),
        (
            "bytes changed inside an extent",
            with(&|l| l.pieces[3].1[(3 * MIB + 12345) as usize..][..100 * KIB as usize].fill(7)),
            true,
        ),
        // The base's first extent ended at 3 MiB + 4 KiB; here data follows it, and its last
        // chunk may be cut elsewhere.
        (
            "an extent continued into a hole",
            with(&|l| l.pieces.push((3 * MIB + 4096, bytes(6, 2 * MIB as usize)))),
            true,
        ),
        // The same bytes, but one extent where the base had two: cuts the base made because
        // its extent ended are not this file's.
        (
            "zeros written where the base had a hole",
            with(&|l| l.pieces.push((3 * MIB + 4096, vec![0; MIB as usize]))),
            true,
        ),
        (
            "an extent that ends on a MiB continued",
            with(&|l| l.pieces.push((9 * MIB, bytes(9, MIB as usize)))),
            true,
        ),
        (
            "a small extent joined to the next",
            with(&|l| l.pieces.push((16 * MIB + 100 * KIB, bytes(7, 100 * KIB as usize)))),
            true,
        ),
        (
            "a hole punched in an extent",
            with(&|l| {
                let (at, data) = l.pieces.remove(3);
                let (low, high) = data.split_at((2 * MIB) as usize);
                l.pieces.push((at, low.to_vec()));
                l.pieces.push((at + 2 * MIB + 64 * KIB, high[64 * KIB as usize..].to_vec()));
            }),
            true,
        ),
        (
            "grown",
            with(&|l| {
                l.pieces.push((40 * MIB + 123, bytes(8, (3 * MIB) as usize)));
                l.size = 44 * MIB;
            }),
            true,
        ),
        (
            "shrunk to within a MiB",
            with(&|l| {
                l.size = 32 * MIB + 5;
                l.pieces[4].1.truncate((2 * MIB + 5) as usize);
            }),
            true,
        ),
        (
            "content shifted by a deletion",
            with(&|l| {
                for piece in &mut l.pieces[3..] {
                    piece.0 -= 5000;
                }
            }),
            false,
        ),
    ]
}

fn put_like(store: &Store, path: &Path, base: Option<&ImageId>) -> Stored {
    store.put_image_like(path, &[], ImageRecord::default(), base, &[], &|_| {}).unwrap()
}

#[test]
fn a_put_like_a_base_stores_the_image_a_put_without_it_stores() {
    let dir = common::tempdir();
    let cold = Store::open(&dir.path().join("cold")).unwrap();
    let like = Store::open(&dir.path().join("like")).unwrap();
    let base_path = dir.path().join("base.img");
    base().write(&base_path);
    let base_id = put_like(&like, &base_path, None).id;

    for (what, layout, shares) in variants() {
        let path = dir.path().join("new.img");
        layout.write(&path);
        let want = put_like(&cold, &path, None);
        let got = put_like(&like, &path, Some(&base_id));
        assert_eq!(got.id, want.id, "{what}: the same image");
        assert_eq!(got.rootfs_digest, want.rootfs_digest, "{what}: the same digest");
        let whole = FileDigest::Blake3(blake3::hash(&fs::read(&path).unwrap()).into());
        assert_eq!(got.rootfs_digest, whole, "{what}: the digest is BLAKE3 of the file");
        assert_eq!(want.reused, 0, "{what}: nothing to take without a base");
        if shares {
            // All but the MiBs around the change, and a chunk or two either side of them.
            let unchanged = layout.data_bytes().min(base().data_bytes()).saturating_sub(6 * MIB);
            assert!(
                got.reused >= unchanged,
                "{what}: {} bytes taken from the base, want {unchanged}",
                got.reused
            );
        }
        if what == "the same file" {
            assert_eq!(got.id, base_id);
        }
    }
}

#[test]
fn a_base_without_a_sound_block_map_only_costs_the_saving() {
    let dir = common::tempdir();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let (base_path, new_path) = (dir.path().join("base.img"), dir.path().join("new.img"));
    base().write(&base_path);
    let (_, changed, _) = variants().swap_remove(1);
    changed.write(&new_path);
    let base_id = put_like(&store, &base_path, None).id;
    let want = put_like(&Store::open(&dir.path().join("cold")).unwrap(), &new_path, None).id;
    let map = store.root().join("images").join(format!("{base_id}.blocks"));
    assert!(map.exists(), "a put keeps the rootfs's block map beside the manifest");

    fs::write(&map, b"diskc-blocks-v1\nnot a block map").unwrap();
    let got = put_like(&store, &new_path, Some(&base_id));
    assert_eq!((got.id, got.reused), (want, 0), "a damaged block map is not used");

    store.rm(&got.id.hex()).unwrap();
    store.rm(&base_id.hex()).unwrap();
    assert!(!map.exists(), "rm takes the block map with the image");
    let got = put_like(&store, &new_path, Some(&base_id));
    assert_eq!((got.id, got.reused), (want, 0), "a base that is gone is not used");
    // One left behind (by an older diskc's rm) goes with the next gc.
    fs::write(&map, b"left behind").unwrap();
    store.gc().unwrap();
    assert!(!map.exists());
}
