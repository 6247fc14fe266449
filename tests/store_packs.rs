//! Packs: a format-2 store (one file per chunk) is read as it is and moved into packs by
//! `diskc store migrate`; gc rewrites a pack that is mostly dead and keeps the live chunks.

mod common;

use common::sample::{sample_bytes as bytes, sparse_file};

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use diskc::store::{ImageId, ImageRecord, Store};

const MIB: u64 = 1 << 20;

fn files_under(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    walkdir::WalkDir::new(dir).into_iter().filter(|e| e.as_ref().unwrap().file_type().is_file()).count()
}

fn exported(store: &Store, id: &ImageId, out: &Path) -> Vec<u8> {
    store.export_rootfs(id, out).unwrap();
    fs::read(out).unwrap()
}

/// Rewrites a store's packs as format 2 does it: one zstd file per chunk under chunks/.
fn unpack_to_format_2(store: &Store, id: &ImageId, image: &Path) {
    let file = File::open(image).unwrap();
    for chunk in store.image(id).unwrap().chunks() {
        let mut data = vec![0u8; chunk.size as usize];
        file.read_exact_at(&mut data, chunk.offset).unwrap();
        let hex = chunk.digest.hex();
        let dir = store.root().join("chunks").join(&hex[..2]);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&hex), zstd::bulk::compress(&data, 3).unwrap()).unwrap();
    }
    fs::remove_dir_all(store.root().join("packs")).unwrap();
    fs::create_dir(store.root().join("packs")).unwrap();
}

#[test]
fn a_format_2_store_is_read_as_it_is_and_migrate_moves_it_into_packs() {
    let dir = common::tempdir();
    let image = dir.path().join("rootfs.img");
    let data = bytes(41, 6 * MIB as usize);
    sparse_file(&image, 32 * MIB, &[(0, &data[..4 * MIB as usize]), (20 * MIB, &data[4 * MIB as usize..])]);
    let root = dir.path().join("store");
    let id = Store::open(&root).unwrap().put_image(&image, &[], ImageRecord::default()).unwrap();
    unpack_to_format_2(&Store::open(&root).unwrap(), &id, &image);
    assert!(files_under(&root.join("chunks")) > 50);

    let store = Store::open(&root).unwrap();
    assert_eq!(exported(&store, &id, &dir.path().join("a.img")), fs::read(&image).unwrap());
    assert!(store.verify().unwrap().is_clean());
    assert_eq!(store.put_image(&image, &[], ImageRecord::default()).unwrap(), id);
    assert_eq!(files_under(&root.join("packs")), 0, "a put of the same image found every chunk");

    let out = common::run_ok(common::diskc().args(["store", "migrate", "--store"]).arg(&root));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("moved") && stdout.contains("chunk files into 1 packs"), "{stdout}");
    assert!(!root.join("chunks").exists(), "migrate left chunks/");
    assert_eq!(files_under(&root.join("packs")), 1);
    let store = Store::open(&root).unwrap();
    assert_eq!(exported(&store, &id, &dir.path().join("b.img")), fs::read(&image).unwrap());
    assert!(store.verify().unwrap().is_clean());
    let again = common::run_ok(common::diskc().args(["store", "migrate", "--store"]).arg(&root));
    assert!(String::from_utf8_lossy(&again.stdout).contains("no chunk files to migrate"));
}

#[test]
fn gc_rewrites_a_mostly_dead_pack_and_keeps_its_live_chunks() {
    let dir = common::tempdir();
    let data = bytes(42, 8 * MIB as usize);
    let big = dir.path().join("big.img");
    let small = dir.path().join("small.img");
    sparse_file(&big, 16 * MIB, &[(0, &data)]);
    sparse_file(&small, 16 * MIB, &[(0, &data[..2 * MIB as usize])]);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let big_id = store.put_image(&big, &[], ImageRecord::default()).unwrap();
    let small_id = store.put_image(&small, &[], ImageRecord::default()).unwrap();
    store.rm(&big_id.hex()).unwrap();
    let pack_bytes = || -> u64 {
        fs::read_dir(store.root().join("packs")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    };
    let before = pack_bytes();

    let report = store.gc().unwrap();
    assert!(report.packs_removed >= 1 && report.packs_written == 1, "{report:?}");
    let after = pack_bytes();
    assert_eq!(report.bytes_freed, before - after, "{report:?}");
    assert!(after < before / 3, "the packs hold {after} bytes of {before}");
    assert_eq!(exported(&store, &small_id, &dir.path().join("s.img")), fs::read(&small).unwrap());
    assert!(Store::open(store.root()).unwrap().verify().unwrap().is_clean());
    assert_eq!(store.gc().unwrap().packs_removed, 0, "a second gc rewrote again");
}
