//! `diskc mkfs` on a directory holding every case issue 2 lists: the image must pass
//! `e2fsck -fn`, mount with the kernel's driver, and read back equal to the source.

mod common;
#[path = "common/tree_compare.rs"]
mod tree_compare;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use common::{assert_fsck_clean, diskc, run_ok, tempdir};
use tree_compare::{assert_same_tree, Mount, Options};

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn check(rc: i32, what: &str) {
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Bytes that are never an all-zero block.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) | 1).collect()
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let times =
        [libc::timespec { tv_sec: sec, tv_nsec: nsec }, libc::timespec { tv_sec: sec, tv_nsec: nsec }];
    // SAFETY: path is NUL-terminated and times holds two timespecs.
    let rc = unsafe {
        libc::utimensat(libc::AT_FDCWD, c(path).as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    check(rc, "utimensat");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: strings are NUL-terminated; value is valid for its length.
    let rc = unsafe { libc::lsetxattr(c(path).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    check(rc, name);
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    // SAFETY: path is NUL-terminated.
    let rc = unsafe { libc::mknod(c(path).as_ptr(), kind | 0o640, libc::makedev(major, minor)) };
    check(rc, "mknod");
}

/// A directory with every case of issue 2's list (except the large ones: see mkfs_large.rs).
pub fn make_case_tree(root: &Path) {
    let d = |p: &str| {
        let path = root.join(p);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let sizes = d("sizes");
    for (i, n) in [0usize, 1, 60, 4095, 4096, 4097, 8192 + 100].into_iter().enumerate() {
        std::fs::write(sizes.join(format!("f{n}")), pattern(n, i as u8)).unwrap();
    }
    let names = d("names");
    std::fs::write(names.join("n".repeat(255)), b"long name").unwrap();
    std::fs::write(names.join(std::ffi::OsStr::from_bytes(b"\xff\xfe-not-utf8")), b"bytes").unwrap();
    std::fs::write(names.join("with space and \u{e9}"), b"x").unwrap();
    // Enough entries for a hash-indexed directory, names with high bytes included (the hash
    // reads them as signed chars).
    let many = d("names/many");
    for i in 0..600u32 {
        let mut name = format!("entry-{i}-").into_bytes();
        name.extend_from_slice(&[0x80 + (i % 120) as u8, b'z']);
        std::fs::write(many.join(std::ffi::OsStr::from_bytes(&name)), i.to_le_bytes()).unwrap();
    }

    let (a, b, cc) = (d("links/a"), d("links/b"), d("links/c/deeper"));
    std::fs::write(a.join("one"), b"shared by three names").unwrap();
    std::fs::hard_link(a.join("one"), b.join("two")).unwrap();
    std::fs::hard_link(a.join("one"), cc.join("three")).unwrap();
    std::os::unix::fs::symlink("../a/one", b.join("soft")).unwrap();

    let special = d("special");
    let fifo = special.join("fifo");
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o644) }, "mkfifo");
    mknod(&special.join("null"), libc::S_IFCHR, 1, 3);
    mknod(&special.join("sda1"), libc::S_IFBLK, 8, 1);
    mknod(&special.join("bigdev"), libc::S_IFCHR, 300, 70000);
    drop(std::os::unix::net::UnixListener::bind(special.join("socket")).unwrap());

    let modes = d("modes");
    for (name, mode) in [("setuid", 0o4755), ("setgid", 0o2755), ("both", 0o6711), ("none", 0o000)] {
        let p = modes.join(name);
        std::fs::write(&p, name).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let sticky = d("modes/sticky");
    std::fs::set_permissions(&sticky, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let setgid_dir = d("modes/setgid-dir");
    std::fs::set_permissions(&setgid_dir, std::os::unix::fs::PermissionsExt::from_mode(0o2775)).unwrap();

    let owners = d("owners");
    let nobody = owners.join("nobody");
    std::fs::write(&nobody, b"owned").unwrap();
    std::os::unix::fs::lchown(&nobody, Some(4_294_967_294), Some(4_294_967_294)).unwrap();
    std::os::unix::fs::symlink("nobody", owners.join("link")).unwrap();
    std::os::unix::fs::lchown(owners.join("link"), Some(1000), Some(70000)).unwrap();

    let xattrs = d("xattrs");
    let inline = xattrs.join("inline");
    std::fs::write(&inline, b"small xattrs").unwrap();
    set_xattr(&inline, "user.a", b"1");
    set_xattr(&inline, "user.empty", b"");
    let big = xattrs.join("block");
    std::fs::write(&big, b"large xattrs").unwrap();
    set_xattr(&big, "user.big", &pattern(3072, 9));
    set_xattr(&big, "trusted.overlay.opaque", b"y");
    set_xattr(&big, "trusted.long", &pattern(300, 3));
    // A v2 file capability: cap_net_bind_service, effective.
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    let capfile = xattrs.join("cap");
    std::fs::write(&capfile, b"capable").unwrap();
    set_xattr(&capfile, "security.capability", &cap);
    set_xattr(&capfile, "user.note", b"file with a capability");
    let acl = xattrs.join("acl");
    std::fs::write(&acl, b"acl").unwrap();
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 6u16, u32::MAX), (2, 4, 1000), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
    {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    set_xattr(&acl, "system.posix_acl_access", &v);
    set_xattr(&xattrs, "user.on-a-directory", b"dir");

    let symlinks = d("symlinks");
    for n in [1usize, 59, 60, 61, 4095] {
        std::os::unix::fs::symlink("t".repeat(n), symlinks.join(format!("s{n}"))).unwrap();
    }

    let times = d("times");
    for (name, sec, nsec) in [
        ("old", -1_000_000_000i64, 123_456_789i64),
        ("epoch", 0, 0),
        ("y2100", 4_102_444_800, 987_654_321),
        ("y2038", 2_147_483_648, 1),
    ] {
        let p = times.join(name);
        std::fs::write(&p, name).unwrap();
        set_mtime(&p, sec, nsec);
    }
    std::os::unix::fs::symlink("old", times.join("link")).unwrap();
    set_mtime(&times.join("link"), -5, 5);

    let sparse = d("sparse");
    let f = std::fs::File::create(sparse.join("middle-hole")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(8192, 1), 0).unwrap();
    f.write_all_at(&pattern(8192, 2), 5 << 20).unwrap();
    std::fs::write(sparse.join("zeros"), vec![0u8; 1 << 20]).unwrap();
    d("empty-dir");
    set_mtime(&times, 1_234_567_890, 42);
}

fn mkfs(src: &Path, image: &Path, extra: &[&str]) {
    run_ok(diskc().arg("mkfs").arg(src).arg("-o").arg(image).args(extra));
}

fn roundtrip(extra: &[&str]) {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_case_tree(&src);
    let image = tmp.path().join("rootfs.ext4");
    mkfs(&src, &image, extra);
    assert_fsck_clean(&image);
    let mount = Mount::new(&image);
    assert_same_tree(&src, mount.path(), &Options::default());
}

#[test]
fn every_case_survives_fsck_and_mount_with_journal() {
    roundtrip(&[]);
}

#[test]
fn every_case_survives_fsck_and_mount_without_journal() {
    roundtrip(&["--no-journal", "--size", "64M"]);
}

/// Sets every atime in the tree after its ctime, so that reading the tree (directory
/// listings, readlink) does not update them under relatime and the source stays the same.
fn freeze_atimes(path: &Path) {
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            freeze_atimes(&e.unwrap().path());
        }
    }
    let times = [
        libc::timespec { tv_sec: 4_102_444_800, tv_nsec: 0 },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
    ];
    // SAFETY: path is NUL-terminated and times holds two timespecs.
    let rc = unsafe {
        libc::utimensat(libc::AT_FDCWD, c(path).as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    check(rc, "utimensat");
}

#[test]
fn images_are_byte_identical_across_runs() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_case_tree(&src);
    freeze_atimes(&src);
    let (a, b) = (tmp.path().join("a.ext4"), tmp.path().join("b.ext4"));
    mkfs(&src, &a, &[]);
    mkfs(&src, &b, &[]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two runs differ");
}

#[test]
fn too_small_a_size_fails_with_bad_input_and_leaves_nothing() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big"), pattern(4 << 20, 1)).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = diskc()
        .arg("mkfs")
        .arg(&src)
        .arg("-o")
        .arg(out_dir.join("x.ext4"))
        .args(["--size", "2M"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too small"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "output directory not empty");
}

#[test]
fn a_missing_source_and_a_file_not_a_tar_are_bad_input() {
    let tmp = tempdir();
    let out = diskc()
        .arg("mkfs")
        .arg(tmp.path().join("absent"))
        .arg("-o")
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let file = tmp.path().join("file");
    std::fs::write(&file, b"not a tar at all").unwrap();
    let out = diskc().arg("mkfs").arg(&file).arg("-o").arg(tmp.path().join("x")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!tmp.path().join("x").exists());
}

/// A tar stream (as a file and on stdin) gives the tree it holds: GNU tar in POSIX format
/// keeps nanosecond times, owners, devices, hard links and xattrs.
#[test]
fn a_tar_stream_source_round_trips() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_case_tree(&src);
    // A tar cannot hold a socket.
    std::fs::remove_file(src.join("special/socket")).unwrap();
    let tar = tmp.path().join("tree.tar");
    run_ok(
        std::process::Command::new("tar")
            .args(["--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("."),
    );
    let from_file = tmp.path().join("file.ext4");
    mkfs(&tar, &from_file, &[]);
    let from_stdin = tmp.path().join("stdin.ext4");
    run_ok(diskc().args(["mkfs", "-", "-o"]).arg(&from_stdin).stdin(std::fs::File::open(&tar).unwrap()));
    for image in [&from_file, &from_stdin] {
        assert_fsck_clean(image);
        let mount = Mount::new(image);
        assert_same_tree(&src, mount.path(), &Options::default());
    }
}

#[test]
fn json_summary_matches_the_image() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    let image = tmp.path().join("img");
    let out =
        run_ok(diskc().arg("--json").arg("mkfs").arg(&src).arg("-o").arg(&image).args(["--size", "40M"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["size"], 40 << 20);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 40 << 20);
    assert_eq!(v["inodes"], 12, "1-11 reserved, lost+found, then /a");
    let dump = run_ok(Command::new("dumpe2fs").arg("-h").arg(&image));
    let text = String::from_utf8_lossy(&dump.stdout);
    let uuid = v["uuid"].as_str().unwrap();
    assert!(text.contains(uuid), "dumpe2fs does not show {uuid}:\n{text}");
    for feature in [
        "has_journal",
        "extent",
        "64bit",
        "flex_bg",
        "metadata_csum",
        "huge_file",
        "dir_nlink",
        "extra_isize",
    ] {
        assert!(text.contains(feature), "feature {feature} missing:\n{text}");
    }
}

#[test]
fn journaled_image_mounts_read_write_and_stays_clean() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_case_tree(&src);
    let image = tmp.path().join("rootfs.ext4");
    // Several groups, so writes land in groups with backup superblocks.
    mkfs(&src, &image, &["--size", "2G"]);
    let dir = tempfile::tempdir().unwrap();
    run_ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(dir.path()));
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir(dir.path().join("new"))?;
        for i in 0..200 {
            std::fs::write(dir.path().join(format!("new/f{i}")), pattern(i * 700, 3))?;
        }
        std::fs::write(dir.path().join("new/big"), pattern(40 << 20, 5))?;
        std::fs::remove_file(dir.path().join("sizes/f4097"))?;
        // Inserting into and removing from a directory diskc indexed.
        for i in 0..2000 {
            std::fs::write(dir.path().join(format!("names/many/added-{i}")), b"new")?;
        }
        std::fs::remove_file(dir.path().join("names/many/added-7"))?;
        std::fs::rename(dir.path().join("links/a/one"), dir.path().join("moved"))
    })();
    run_ok(Command::new("umount").arg(dir.path()));
    written.unwrap();
    assert_fsck_clean(&image);
}
