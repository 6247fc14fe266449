//! The large cases of issue 2: a 3 GiB file with a hole in the middle, a 600 MiB file of
//! zeros (no blocks), 100k files with one directory of 20k entries. Each image passes
//! `e2fsck -fn` and reads back equal through the kernel's driver.

mod common;
#[path = "common/tree_compare.rs"]
mod tree_compare;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::{assert_fsck_clean, diskc, run_ok, tempdir};
use tree_compare::{assert_same_tree, Mount, Options};

fn mkfs(src: &Path, image: &Path) {
    run_ok(diskc().arg("mkfs").arg(src).arg("-o").arg(image));
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(salt) | 1).collect()
}

#[test]
fn three_gib_file_with_a_hole_and_600_mib_of_zeros() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 160 MiB of data (more than one 128 MiB extent), a hole, 32 MiB of data up to 3 GiB.
    let big = std::fs::File::create(src.join("big")).unwrap();
    let chunk = pattern(16 << 20, 7);
    for i in 0..10u64 {
        big.write_all_at(&chunk, i * (16 << 20)).unwrap();
    }
    for i in 0..2u64 {
        big.write_all_at(&chunk, (3 << 30) - (i + 1) * (16 << 20)).unwrap();
    }
    drop(big);
    // Zeros written as data: the scan, not the source's holes, must find them.
    let zeros = std::fs::File::create(src.join("zeros")).unwrap();
    let z = vec![0u8; 16 << 20];
    for i in 0..(600 / 16 + 1) as u64 {
        let len = (600u64 << 20).saturating_sub(i * (16 << 20)).min(16 << 20) as usize;
        zeros.write_all_at(&z[..len], i * (16 << 20)).unwrap();
    }
    zeros.sync_all().unwrap();
    assert!(zeros.metadata().unwrap().blocks() > 0, "the zeros must be on disk as data");
    drop(zeros);

    let image = tmp.path().join("rootfs.ext4");
    mkfs(&src, &image);
    assert_fsck_clean(&image);
    let allocated = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(allocated < 260 << 20, "image allocates {allocated} bytes; the data is 192 MiB");
    let mount = Mount::new(&image);
    assert_eq!(std::fs::metadata(mount.path().join("zeros")).unwrap().blocks(), 0, "zeros cost no blocks");
    let big_blocks = std::fs::metadata(mount.path().join("big")).unwrap().blocks() * 512;
    assert!(big_blocks < 200 << 20, "the hole in big is allocated: {big_blocks} bytes");
    assert_same_tree(&src, mount.path(), &Options::default());
}

#[test]
fn hundred_thousand_files_and_a_directory_of_20k_entries() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    let wide = src.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    for i in 0..20_000 {
        std::fs::write(wide.join(format!("entry-{i:05}-{}", "x".repeat(i % 40))), i.to_string()).unwrap();
    }
    for d in 0..80 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            let name = dir.join(format!("f{i}"));
            if i % 10 == 0 {
                std::os::unix::fs::symlink(format!("f{}", i + 1), name).unwrap();
            } else {
                std::fs::write(name, format!("{d}/{i}")).unwrap();
            }
        }
    }
    let image = tmp.path().join("rootfs.ext4");
    mkfs(&src, &image);
    assert_fsck_clean(&image);
    let mount = Mount::new(&image);
    assert_eq!(std::fs::read_dir(mount.path().join("wide")).unwrap().count(), 20_000);
    assert_same_tree(&src, mount.path(), &Options::default());
}
