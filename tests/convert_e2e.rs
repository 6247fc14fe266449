//! End to end: `diskc convert` on real images, the rootfs mounted by the kernel and
//! compared with the oracle, `docker export` of a container made from the same image
//! (`tests/common/export_oracle.rs`). `e2fsck -fn` must find every image clean. `user.*`
//! xattrs, which export drops, are checked against the layer tar that carried them.

mod common;
#[path = "common/export_oracle.rs"]
mod export_oracle;
#[path = "common/tree_compare.rs"]
mod tree_compare;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::images::{build_fixture, import_xattr_image, CAP_NET_BIND_SERVICE};
use common::{diskc, ensure_base_images, run_ok, tempdir, DOCKER};
use export_oracle::assert_rootfs_equals_export;
use tree_compare::Entry;

/// A convert past the store: a stored image with the same config would be a cache hit that
/// never reads the broken layer (rightly: the image it names is already there).
fn convert_uncached(source: &str, outdir: &Path) -> Output {
    diskc().args(["convert", "--no-store", source, "-o"]).arg(outdir).output().unwrap()
}

fn convert_ok(source: &str, outdir: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(diskc().args(["--json", "convert", source, "-o"]).arg(outdir).args(extra));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// Converts `image` from the daemon and compares the rootfs with `docker export`.
fn assert_converts_like_export(image: &str) -> BTreeMap<Vec<u8>, Entry> {
    let work = tempdir();
    let out = work.path().join("out");
    let json = convert_ok(&format!("docker-daemon:{image}"), &out, &[]);
    assert_eq!(json["rootfs"]["file"], "rootfs.ext4");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rootfs"]["digest"], json["rootfs"]["digest"]);
    assert_rootfs_equals_export(&out.join("rootfs.ext4"), image)
}

#[test]
fn changeset_rules_image_equals_docker_export() {
    let image = build_fixture("changes");
    let tree = assert_converts_like_export(&image);
    // Spot checks that the fixture really exercises what it claims to.
    let kinds: Vec<char> = tree.values().map(|e| e.kind).collect();
    for kind in ['f', 'd', 'l', 'c', 'b', 'p'] {
        assert!(kinds.contains(&kind), "the changes image holds no entry of kind {kind}");
    }
    assert!(tree.values().any(|e| e.link_group.is_some()), "hard links");
    assert!(tree.values().any(|e| e.mode & 0o4000 != 0), "setuid");
    assert!(tree.values().any(|e| e.uid > 65535 || e.gid > 65535), "large ids");
    assert!(tree.keys().any(|p| p.rsplit(|&b| b == b'/').next().unwrap().len() == 255), "255-byte name");
    assert!(tree.keys().any(|p| std::str::from_utf8(p).is_err()), "non-UTF-8 name");
}

#[test]
fn big_sparse_and_random_files_equal_docker_export() {
    let image = build_fixture("bigfiles");
    let tree = assert_converts_like_export(&image);
    assert!(tree.values().any(|e| e.size >= 600 << 20), "the 600 MiB sparse file");
}

#[test]
fn xattrs_reach_the_rootfs() {
    let image = import_xattr_image();
    let tree = assert_converts_like_export(image);
    let x = |p: &str, k: &str| tree[p.as_bytes()].xattrs.get(k.as_bytes()).cloned();
    assert_eq!(x("x/cap", "security.capability").as_deref(), Some(&CAP_NET_BIND_SERVICE[..]));
    // user.* checked against the layer tar we made (docker export drops them).
    assert_eq!(x("x/user", "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(x("x/user", "user.bin").as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert_eq!(x("x/both", "user.a").as_deref(), Some(&b"1"[..]));
}

#[test]
fn debian_base_equals_docker_export() {
    ensure_base_images(&["debian"]);
    assert_converts_like_export(common::DEBIAN_IMAGE);
}

#[test]
fn converting_twice_gives_identical_bytes() {
    let image = build_fixture("changes");
    let work = tempdir();
    let source = format!("docker-daemon:{image}");
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    // Past the store, so that both runs really convert.
    let manifest = convert_ok(&source, &a, &["--no-store"]);
    convert_ok(&source, &b, &["--no-store"]);
    let bytes = |d: &PathBuf, f: &str| std::fs::read(d.join(f)).unwrap();
    assert!(bytes(&a, "rootfs.ext4") == bytes(&b, "rootfs.ext4"), "rootfs.ext4 differs between runs");
    assert_eq!(bytes(&a, "manifest.json"), bytes(&b, "manifest.json"));
    // A file a later layer deleted leaves no byte behind.
    let rootfs = bytes(&a, "rootfs.ext4");
    let secret = b"diskc-deleted-secret";
    assert!(!rootfs.windows(secret.len()).any(|w| w == secret), "a deleted file's data is in the image");
    // The manifest's digest is the file's, as b3sum reads it.
    let b3sum = run_ok(Command::new("b3sum").arg("--no-names").arg(a.join("rootfs.ext4")));
    let digest = format!("blake3:{}", String::from_utf8_lossy(&b3sum.stdout).trim());
    assert_eq!(manifest["rootfs"]["digest"], digest.as_str());
}

/// The error is one line, the last on stderr; the lines before it can only be progress
/// (plain progress lines when stderr is not a terminal), never part of the error.
fn assert_one_error_line(stderr: &str, context: &str) {
    let errors = stderr.lines().filter(|l| l.contains("error")).count();
    assert_eq!(errors, 1, "{context}: one error line expected, got {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("diskc: error: "), "{context}: the error must end stderr: {stderr}");
}

/// A failed convert: nonzero documented exit code, one line on stderr naming the input, no
/// OUTDIR and no staging directory left.
fn assert_fails_cleanly(source: &str, code: i32, mentions: &str) {
    let work = tempdir();
    let out = work.path().join("out");
    let result = convert_uncached(source, &out);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(code), "{source}: stderr {stderr}");
    assert_one_error_line(&stderr, source);
    assert!(stderr.contains(mentions), "{source}: {stderr:?} should mention {mentions:?}");
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{source}: left behind {left:?}");
}

/// Saves `image` as a docker-archive and unpacks it, so a test can break one file of it.
fn unpacked_archive(image: &str, dir: &Path) -> (PathBuf, Vec<String>) {
    let tar = dir.join("image.tar");
    run_ok(Command::new(DOCKER).args(["save", "-o"]).arg(&tar).arg(image));
    let unpacked = dir.join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&unpacked));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let layers =
        manifest[0]["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    (unpacked, layers)
}

fn repack(unpacked: &Path, tar: &Path) {
    run_ok(Command::new("tar").arg("-cf").arg(tar).arg("-C").arg(unpacked).arg("."));
}

#[test]
fn bad_input_fails_with_one_clear_line_and_leaves_nothing() {
    ensure_base_images(&["busybox"]);
    let dir = tempdir();
    let (unpacked, layers) = unpacked_archive(common::BUSYBOX_IMAGE, dir.path());
    let layer = unpacked.join(&layers[0]);
    let original = std::fs::read(&layer).unwrap();

    // One flipped byte in the middle of the layer.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&layer, &flipped).unwrap();
    let archive = dir.path().join("flipped.tar");
    repack(&unpacked, &archive);
    assert_fails_cleanly(&format!("docker-archive:{}", archive.display()), 2, "sha256:");

    // The layer cut short.
    std::fs::write(&layer, &original[..original.len() / 3]).unwrap();
    let archive = dir.path().join("truncated.tar");
    repack(&unpacked, &archive);
    assert_fails_cleanly(&format!("docker-archive:{}", archive.display()), 2, "truncated.tar");

    // The manifest names a layer that is not there.
    std::fs::remove_file(&layer).unwrap();
    let archive = dir.path().join("missing.tar");
    repack(&unpacked, &archive);
    assert_fails_cleanly(&format!("docker-archive:{}", archive.display()), 2, "missing.tar");

    // No such archive, no such image in the daemon.
    assert_fails_cleanly("docker-archive:/nonexistent/image.tar", 2, "/nonexistent/image.tar");
    assert_fails_cleanly("docker-daemon:diskc-test/no-such-image:latest", 2, "diskc-test/no-such-image");
}

#[test]
fn a_layer_escaping_the_root_is_rejected() {
    ensure_base_images(&["busybox"]);
    let dir = tempdir();
    let (unpacked, layers) = unpacked_archive(common::BUSYBOX_IMAGE, dir.path());
    // A layer holding ../../etc/passwd; the config's diff_id is fixed up to match, so only
    // the path itself is wrong.
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    {
        let name = b"../../etc/passwd";
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    evil.append(&h, &b"evil\n"[..]).unwrap();
    let bytes = evil.into_inner().unwrap();
    let layer = unpacked.join(&layers[0]);
    std::fs::write(&layer, &bytes).unwrap();
    let manifest_path = unpacked.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let config_path = unpacked.join(manifest[0]["Config"].as_str().unwrap());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["rootfs"]["diff_ids"][0] = diskc::digest::Digest::of(&bytes).to_string().into();
    // The config is named by its digest: write it under its new name.
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", diskc::digest::Digest::of(&config_bytes).hex());
    std::fs::remove_file(&config_path).unwrap();
    std::fs::write(unpacked.join(&config_name), &config_bytes).unwrap();
    manifest[0]["Config"] = config_name.into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let archive = dir.path().join("escape.tar");
    repack(&unpacked, &archive);
    assert_fails_cleanly(&format!("docker-archive:{}", archive.display()), 2, "..");
}

/// A tmpfs of `size`, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(dir: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir));
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_an_environment_failure_and_leaves_nothing() {
    ensure_base_images(&["busybox"]);
    let work = tempdir();
    // The busybox image holds about 2 MiB of file data: 512 KiB cannot take it.
    let disk = SmallDisk::new(work.path().join("small"), "512k");
    let out = convert_uncached(&format!("docker-daemon:{}", common::BUSYBOX_IMAGE), &disk.0.join("out"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_one_error_line(&stderr, "a full disk");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&disk.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind on the full disk: {left:?}");
}
