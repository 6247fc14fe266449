//! The image store through its library API: round trips (byte-identical, sparse), sharing
//! between images, stable ids, id prefixes and names, rm + gc, and verify finding damage.

mod common;

use common::sample::{sample_bytes as bytes, sparse_file};

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use diskc::digest::Digest;
use diskc::error::{Classify, ErrorKind};
use diskc::fileio::data_extents;
use diskc::store::{ImageId, ImageRecord, Store, StoreError};

const MIB: u64 = 1 << 20;

fn store_bytes(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The hex digests of every chunk the store at `root` holds, as a fresh process sees them.
fn chunk_files(root: &Path) -> BTreeSet<String> {
    Store::open(root).unwrap().chunk_digests().unwrap().iter().map(|d| d.hex()).collect()
}

/// Where a chunk's zstd frame sits among the store's packs: the frame is level-3 zstd of the
/// chunk's bytes, found by its bytes.
fn frame_location(store: &Store, image: &Path, id: &ImageId, hex: &str) -> (PathBuf, u64, u64) {
    let chunk = store.image(id).unwrap().chunks().find(|c| c.digest.hex() == hex).cloned().unwrap();
    let mut data = vec![0u8; chunk.size as usize];
    File::open(image).unwrap().read_exact_at(&mut data, chunk.offset).unwrap();
    let frame = zstd::bulk::compress(&data, 1).unwrap();
    for entry in fs::read_dir(store.root().join("packs")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(frame.len()).position(|w| w == frame.as_slice()) {
            return (path, at as u64, frame.len() as u64);
        }
    }
    panic!("chunk {hex} is in no pack");
}

fn chunk_set(store: &Store, id: &ImageId) -> BTreeSet<String> {
    store.image(id).unwrap().chunks().map(|c| c.digest.hex()).collect()
}

fn put(store: &Store, path: &Path) -> ImageId {
    store.put_image(path, &[], ImageRecord::default()).unwrap()
}

/// A base of `base_len` bytes and a family built on it, as files under `dir`.
struct Family {
    base: PathBuf,
    grown: PathBuf,
    /// Bytes `grown` adds to `base`.
    added: u64,
}

fn family(dir: &Path) -> Family {
    let base_data = bytes(1, 24 * MIB as usize);
    let added = bytes(2, 3 * MIB as usize);
    let base = dir.join("base.img");
    let grown = dir.join("grown.img");
    sparse_file(&base, 64 * MIB, &[(0, base_data.clone())]);
    sparse_file(&grown, 64 * MIB, &[(0, base_data), (24 * MIB, added.clone())]);
    Family { base, grown, added: added.len() as u64 }
}

/// Every data extent of `export` lies inside a data extent of `input`: a hole in the input
/// is a hole in the export.
fn assert_holes_stay_holes(input: &Path, export: &Path) {
    let size = fs::metadata(input).unwrap().len();
    let input_data = data_extents(&File::open(input).unwrap(), size).unwrap();
    let export_data = data_extents(&File::open(export).unwrap(), size).unwrap();
    for extent in &export_data {
        assert!(
            input_data.iter().any(|o| o.start <= extent.start && extent.end <= o.end),
            "export has data at {extent:?} where the input has a hole ({input_data:?})"
        );
    }
}

#[test]
fn export_is_byte_identical_and_holes_stay_holes() {
    let dir = common::tempdir();
    let image = dir.path().join("rootfs.img");
    let size = 64 * MIB + 123;
    sparse_file(
        &image,
        size,
        &[
            (0, bytes(1, 3 * MIB as usize)),
            (10 * MIB, bytes(2, 5000)),
            (20 * MIB + 4096, bytes(3, 10 * MIB as usize)),
            (size - 100, bytes(4, 100)),
        ],
    );
    let store = Store::open(&dir.path().join("store")).unwrap();
    let id = put(&store, &image);
    let out = dir.path().join("export.img");
    store.export_rootfs(&id, &out).unwrap();

    assert_eq!(fs::read(&out).unwrap(), fs::read(&image).unwrap(), "export differs from the input");
    // Holes are compared by the data extents the file system reports, not by st_blocks:
    // st_blocks also counts extent-tree blocks, and how many a file needs depends on how the
    // allocator happened to place it (CI saw one block more for an export with the same data).
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
    assert_holes_stay_holes(&image, &out);
    // Only data was stored: 13 MiB of half-compressible data, not 64 MiB.
    assert!(store_bytes(store.root()) < 10 * MIB, "store holds {} bytes", store_bytes(store.root()));
}

#[test]
fn ext4_image_made_by_mkfs_round_trips_and_stays_clean() {
    let dir = common::tempdir();
    let tree = dir.path().join("tree");
    for i in 0..40 {
        let sub = tree.join(format!("d{}", i % 5));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join(format!("f{i}")), bytes(i, (i as usize * 37_000) % 900_000 + 1)).unwrap();
    }
    let image = dir.path().join("rootfs.ext4");
    common::run_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&tree).arg(&image).arg("64M"));
    let store = Store::open(&dir.path().join("store")).unwrap();
    let id = put(&store, &image);
    let out = dir.path().join("export.ext4");
    store.export_rootfs(&id, &out).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&image).unwrap());
    assert_holes_stay_holes(&image, &out);
    common::assert_fsck_clean(&out);
}

#[test]
fn progress_counts_data_bytes_up_to_the_total() {
    let dir = common::tempdir();
    let image = dir.path().join("rootfs.img");
    // 40 MiB of data (more than one batch) in a 128 MiB file: holes do not count.
    sparse_file(
        &image,
        128 * MIB,
        &[(0, bytes(5, 30 * MIB as usize)), (100 * MIB, bytes(6, 10 * MIB as usize))],
    );
    let store = Store::open(&dir.path().join("store")).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    store
        .put_image_with_progress(&image, &[], ImageRecord::default(), &|p| seen.lock().unwrap().push(p))
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].done < w[1].done), "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (40 * MIB, 40 * MIB));
}

#[test]
fn the_put_hashes_the_rootfs_whole_as_it_reads_it_unless_given_the_digest() {
    let dir = common::tempdir();
    let image = dir.path().join("rootfs.img");
    // Holes at the start, between the data (more than one batch of it) and at the end: they
    // hash as the zeros they read as.
    sparse_file(
        &image,
        96 * MIB + 123,
        &[(3 * MIB, bytes(7, 20 * MIB as usize + 5)), (60 * MIB, bytes(8, 9 * MIB as usize))],
    );
    let expect = diskc::digest::FileDigest::Blake3(blake3::hash(&fs::read(&image).unwrap()).into());
    assert_eq!(diskc::pipeline::digest_file(&image).unwrap(), expect);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let stored = store.put_image_with_progress(&image, &[], ImageRecord::default(), &|_| {}).unwrap();
    assert_eq!(stored.rootfs_digest, expect);
    assert_eq!(store.image(&stored.id).unwrap().rootfs.digest, Some(expect), "the manifest records it");
    // A digest the caller computed is the one recorded.
    let given = diskc::digest::FileDigest::Blake3([9; 32]);
    let record = ImageRecord { rootfs_digest: Some(given), ..Default::default() };
    let other = store.put_image_with_progress(&image, &[], record, &|_| {}).unwrap();
    assert_eq!(other.rootfs_digest, given);
    assert_ne!(other.id, stored.id, "the digest is part of the id");
}

#[test]
fn boot_files_are_stored_and_exported_by_name() {
    let dir = common::tempdir();
    let (rootfs, kernel, initrd) = (dir.path().join("r"), dir.path().join("k"), dir.path().join("i"));
    fs::write(&rootfs, bytes(1, 300_000)).unwrap();
    fs::write(&kernel, bytes(2, 2_000_000)).unwrap();
    fs::write(&initrd, bytes(3, 700_000)).unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let id = store
        .put_image(&rootfs, &[("kernel", &kernel), ("initrd", &initrd)], ImageRecord::default())
        .unwrap();
    for (name, path) in [("kernel", &kernel), ("initrd", &initrd)] {
        let out = dir.path().join(format!("{name}.out"));
        store.export_file(&id, name, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(path).unwrap(), "{name}");
    }
    let err = store.export_file(&id, "dtb", &dir.path().join("x")).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchFile { .. }), "{err}");
}

#[test]
fn id_is_stable_across_stores_and_runs() {
    let dir = common::tempdir();
    let fam = family(dir.path());
    let record = || ImageRecord { uuid: "u-1".into(), ..Default::default() };
    let one = Store::open(&dir.path().join("one")).unwrap();
    let two = Store::open(&dir.path().join("two")).unwrap();
    let id = one.put_image(&fam.base, &[], record()).unwrap();
    assert_eq!(two.put_image(&fam.base, &[], record()).unwrap(), id, "same input, other store");
    let before = store_bytes(one.root());
    assert_eq!(one.put_image(&fam.base, &[], record()).unwrap(), id, "same input again");
    assert_eq!(store_bytes(one.root()), before, "storing an image twice grew the store");
    let other =
        one.put_image(&fam.base, &[], ImageRecord { uuid: "u-2".into(), ..Default::default() }).unwrap();
    assert_ne!(other, id, "the record is part of the id");
}

#[test]
fn images_sharing_content_share_chunks() {
    let dir = common::tempdir();
    let fam = family(dir.path());
    let store = Store::open(&dir.path().join("store")).unwrap();
    put(&store, &fam.base);
    let after_base = store_bytes(store.root());
    let grown = put(&store, &fam.grown);
    let growth = store_bytes(store.root()) - after_base;
    let manifest_len = fs::metadata(store.root().join(format!("images/{grown}.json.zst"))).unwrap().len();
    // The added bytes compress to a bit over half (half of them are text); allow the chunk
    // straddling the old end (at most 256 KiB) and the new manifest on top.
    let limit = fam.added * 6 / 10 + 256 * 1024 + manifest_len;
    assert!(growth <= limit, "store grew by {growth} bytes for {} new bytes (limit {limit})", fam.added);
    assert!(growth >= fam.added / 4, "store grew by only {growth} bytes for {} new bytes", fam.added);
}

#[test]
fn content_shifted_by_a_deletion_is_still_shared() {
    let dir = common::tempdir();
    let data = bytes(7, 24 * MIB as usize);
    let base = dir.path().join("base.img");
    let shifted = dir.path().join("shifted.img");
    sparse_file(&base, 32 * MIB, &[(0, data.clone())]);
    // Remove 5 blocks from the middle: everything after moves by 20 KiB.
    let mut cut = data[..8 * MIB as usize].to_vec();
    cut.extend_from_slice(&data[8 * MIB as usize + 5 * 4096..]);
    sparse_file(&shifted, 32 * MIB, &[(0, cut)]);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let a = put(&store, &base);
    let b = put(&store, &shifted);
    let (sa, sb) = (chunk_set(&store, &a), chunk_set(&store, &b));
    let new = sb.difference(&sa).count();
    assert!(new <= 4, "{new} of {} chunks are new after a 20 KiB shift", sb.len());
}

#[test]
fn id_prefixes_and_names_resolve_and_ambiguity_is_an_error() {
    let dir = common::tempdir();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let mut ids = Vec::new();
    // 17 images: two of them must share a first hex digit.
    for i in 0..17 {
        let path = dir.path().join(format!("img{i}"));
        fs::write(&path, bytes(100 + i, 10_000)).unwrap();
        ids.push(put(&store, &path));
    }
    let (a, b) = ids
        .iter()
        .enumerate()
        .flat_map(|(i, a)| ids[i + 1..].iter().map(move |b| (*a, *b)))
        .find(|(a, b)| a.hex()[..1] == b.hex()[..1])
        .expect("pigeonhole");
    let err = store.resolve(&a.hex()[..1]).unwrap_err();
    assert!(matches!(err, StoreError::Ambiguous { .. }), "{err}");
    assert_eq!(err.error_kind(), ErrorKind::Usage);
    assert!(err.to_string().contains(&a.short()) && err.to_string().contains(&b.short()), "{err}");
    for id in &ids {
        assert_eq!(store.resolve(&id.short()).unwrap(), *id);
        assert_eq!(store.resolve(&format!("sha256:{id}")).unwrap(), *id);
    }
    let missing = store.resolve("app:latest").unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");
    assert_eq!(missing.error_kind(), ErrorKind::BadInput);

    assert_eq!(store.tag(&a.short(), "app:latest").unwrap(), a);
    assert_eq!(store.resolve("app:latest").unwrap(), a);
    // Tagging moves a name; it never changes an id.
    assert_eq!(store.tag(&b.hex(), "app:latest").unwrap(), b);
    assert_eq!(store.resolve("app:latest").unwrap(), b);
    assert!(store.ids().unwrap().contains(&a) && store.ids().unwrap().contains(&b));
    let bad = store.tag(&a.hex(), "has space").unwrap_err();
    assert_eq!(bad.error_kind(), ErrorKind::Usage);
    let listed = store.ls().unwrap();
    assert_eq!(listed.len(), 17);
    assert_eq!(listed.iter().find(|s| s.id == b).unwrap().names, vec!["app:latest".to_string()]);
}

#[test]
fn rm_then_gc_frees_exactly_the_unshared_chunks() {
    let dir = common::tempdir();
    let fam = family(dir.path());
    let store = Store::open(&dir.path().join("store")).unwrap();
    let base = put(&store, &fam.base);
    let grown = put(&store, &fam.grown);
    store.tag(&grown.hex(), "grown").unwrap();
    store.cache_put("key-of-grown", &grown).unwrap();
    let (kept, dropped) = (chunk_set(&store, &base), chunk_set(&store, &grown));
    let unshared: BTreeSet<_> = dropped.difference(&kept).cloned().collect();
    assert!(!unshared.is_empty());
    assert_eq!(chunk_files(store.root()), kept.union(&dropped).cloned().collect());

    let removed = store.rm("grown").unwrap();
    assert_eq!(
        (removed.id, removed.untagged, removed.deleted),
        (grown, vec!["grown:latest".to_string()], true)
    );
    assert_eq!(store.cache_get("key-of-grown").unwrap(), None);
    assert!(matches!(store.resolve("grown"), Err(StoreError::NotFound(_))));
    // Before gc nothing is freed: rm only drops the manifest and names.
    assert_eq!(chunk_files(store.root()), kept.union(&dropped).cloned().collect());

    let report = store.gc().unwrap();
    assert_eq!(report.chunks_removed, unshared.len() as u64);
    assert_eq!(report.chunks_kept, kept.len() as u64);
    assert_eq!(chunk_files(store.root()), kept, "gc left other chunks than the base's");
    let out = dir.path().join("base.out");
    store.export_rootfs(&base, &out).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fam.base).unwrap());
    assert!(store.verify().unwrap().is_clean());
    assert_eq!(store.gc().unwrap().chunks_removed, 0, "a second gc found more to remove");
}

#[test]
fn cache_entries_point_at_images() {
    let dir = common::tempdir();
    let fam = family(dir.path());
    let store = Store::open(&dir.path().join("store")).unwrap();
    assert_eq!(store.cache_get("k").unwrap(), None);
    let id = put(&store, &fam.base);
    store.cache_put("k", &id).unwrap();
    assert_eq!(store.cache_get("k").unwrap(), Some(id));
    assert_eq!(Store::open(store.root()).unwrap().cache_get("k").unwrap(), Some(id), "reopened");
    assert_eq!(store.cache_get("other").unwrap(), None);
}

#[test]
fn verify_finds_a_flipped_byte_and_names_the_image() {
    let dir = common::tempdir();
    let fam = family(dir.path());
    let store = Store::open(&dir.path().join("store")).unwrap();
    let base = put(&store, &fam.base);
    let grown = put(&store, &fam.grown);
    store.tag(&grown.hex(), "grown:1").unwrap();
    assert!(store.verify().unwrap().is_clean());

    let victim = chunk_set(&store, &grown).difference(&chunk_set(&store, &base)).next().cloned().unwrap();
    let (path, start, len) = frame_location(&store, &fam.grown, &grown, &victim);
    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8];
    let at = start + len / 2;
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x20], at).unwrap();

    let report = store.verify().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.damaged_chunks.keys().cloned().collect::<Vec<_>>(), vec![format!("sha256:{victim}")]);
    assert_eq!(report.damaged_images.len(), 1, "{report:?}");
    let damaged = &report.damaged_images[0];
    assert_eq!(damaged.id, grown.hex());
    assert_eq!(damaged.names, vec!["grown:1".to_string()]);
    assert_eq!(damaged.damaged_chunks, vec![format!("sha256:{victim}").parse::<Digest>().unwrap()]);
    // Export refuses to hand out the damaged bytes.
    let err = store.export_rootfs(&grown, &dir.path().join("x")).unwrap_err();
    assert!(matches!(err, StoreError::CorruptChunk { .. }), "{err}");

    let out = common::diskc().arg("verify").arg("--store").arg(store.root()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&grown.hex()) && stdout.contains("grown:1"), "{stdout}");
    assert!(!stdout.contains(&base.hex()), "{stdout}");

    // The pack's index made unreadable: its chunks are missing, the pack is named.
    let end = fs::metadata(&path).unwrap().len();
    file.write_all_at(&[0xff], end - 1).unwrap();
    let report = store.verify().unwrap();
    assert!(report.damaged_chunks.keys().any(|k| k.starts_with("pack:")), "{report:?}");
    assert!(
        report.damaged_images.iter().any(|d| d.id == grown.hex() && !d.missing_chunks.is_empty()),
        "{report:?}"
    );
}

#[test]
fn a_damaged_manifest_is_reported_and_stops_gc_from_sweeping() {
    let dir = common::tempdir();
    let fam = family(dir.path());
    let store = Store::open(&dir.path().join("store")).unwrap();
    let base = put(&store, &fam.base);
    let grown = put(&store, &fam.grown);
    let chunks_before = chunk_files(store.root());
    let manifest = store.root().join(format!("images/{grown}.json.zst"));
    let mut bytes = fs::read(&manifest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&manifest, bytes).unwrap();

    let report = store.verify().unwrap();
    assert_eq!(report.damaged_images.len(), 1, "{report:?}");
    assert_eq!(report.damaged_images[0].id, grown.hex());
    assert!(report.damaged_images[0].manifest_damaged);
    // Its chunks would look unreferenced: gc must refuse rather than sweep them.
    let err = store.gc().unwrap_err();
    assert!(matches!(err, StoreError::CorruptManifest { .. }), "{err}");
    assert_eq!(chunk_files(store.root()), chunks_before);
    let out = dir.path().join("base.out");
    store.export_rootfs(&base, &out).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&fam.base).unwrap());
}
