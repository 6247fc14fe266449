//! The oracle for whole images: `docker export` of a container made from an image,
//! unpacked by GNU tar, against a rootfs the kernel mounts. Use it as
//! `#[path = "common/export_oracle.rs"] mod export_oracle;` next to `mod tree_compare;`.
//!
//! What Docker adds to a container is left out; `docker export` records whole seconds, so
//! mtimes are compared to the second; `user.*` xattrs, which export drops, are left to the
//! caller to check against the layer that carried them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::images::{ADDED_BY_DOCKER, MOUNTPOINTS, TOUCHED_BY_DOCKER};
use crate::common::{assert_fsck_clean, run_ok, tempdir, DOCKER};
use crate::tree_compare::{scan, Entry, Mount, Options};

/// `docker export` of a container made from `image`, unpacked into `dir` as root keeps it.
pub fn export_into(image: &str, dir: &Path) {
    let out = run_ok(Command::new(DOCKER).args(["create", image, "/bin/true"]));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut export = Command::new(DOCKER).args(["export", &id]).stdout(Stdio::piped()).spawn().unwrap();
    let status = Command::new("tar")
        .args(["-x", "-p", "--numeric-owner", "--same-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(dir)
        .stdin(export.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(status.success() && export.wait().unwrap().success(), "docker export | tar -x of {image}");
    run_ok(Command::new(DOCKER).args(["rm", &id]));
}

fn without_docker_additions(
    mut tree: BTreeMap<Vec<u8>, Entry>,
    image: &BTreeMap<Vec<u8>, Entry>,
) -> BTreeMap<Vec<u8>, Entry> {
    for path in ADDED_BY_DOCKER {
        tree.remove(path.as_bytes());
    }
    for path in MOUNTPOINTS {
        if !image.contains_key(path.as_bytes()) {
            tree.remove(path.as_bytes());
        }
    }
    tree
}

fn comparable(mut tree: BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    for (path, entry) in tree.iter_mut() {
        entry.mtime.1 = 0;
        if TOUCHED_BY_DOCKER.contains(&String::from_utf8_lossy(path).as_ref()) {
            entry.mtime = (0, 0);
        }
        // docker export drops user.* xattrs: compare the rest.
        entry.xattrs.retain(|k, _| !k.starts_with(b"user."));
    }
    tree
}

/// Checks `rootfs` with e2fsck, mounts it and compares it with `docker export` of `image`.
/// Returns the mounted tree for further checks.
pub fn assert_rootfs_equals_export(rootfs: &Path, image: &str) -> BTreeMap<Vec<u8>, Entry> {
    assert_fsck_clean(rootfs);
    let work = tempdir();
    let exported = work.path().join("export");
    std::fs::create_dir(&exported).unwrap();
    export_into(image, &exported);
    let options = Options::default();
    let mount = Mount::new(rootfs);
    let ours = scan(mount.path(), &options);
    let oracle = without_docker_additions(scan(&exported, &options), &ours);
    // Docker replaces these in a container even when the image has them: not comparable.
    let mut ours_comparable = ours.clone();
    for path in ADDED_BY_DOCKER {
        ours_comparable.remove(path.as_bytes());
    }
    let (a, b) = (comparable(oracle), comparable(ours_comparable));
    let mut diffs = Vec::new();
    for (path, e) in &a {
        match b.get(path) {
            None => diffs.push(format!("missing: /{}", String::from_utf8_lossy(path))),
            Some(o) if o != e => diffs
                .push(format!("differs: /{}\n  export {e:?}\n  diskc  {o:?}", String::from_utf8_lossy(path))),
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("extra: /{}", String::from_utf8_lossy(path)));
    }
    assert!(
        diffs.is_empty(),
        "{image}: {} differences:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(30)].join("\n")
    );
    ours
}
