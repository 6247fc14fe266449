//! The test images: BuildKit builds of `fixtures/images/<name>` and the xattr image that
//! only `docker import` can make (`docker build` cannot set xattrs).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Once;

use super::{ensure_base_images, repo_root, run_ok, DOCKER};

/// Builds `fixtures/images/<name>` as `diskc-test/convert-<name>`.
pub fn build_fixture(name: &str) -> String {
    ensure_base_images(&["busybox"]);
    let tag = format!("diskc-test/convert-{name}");
    let dir = repo_root().join("fixtures/images").join(name);
    run_ok(Command::new(DOCKER).env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", &tag]).arg(dir));
    tag
}

/// The capability set of `cap_net_bind_service+ep` as the kernel stores it (VFS_CAP_REVISION_2).
pub const CAP_NET_BIND_SERVICE: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A tar with PAX xattr records, as the xattr fixture: `docker import`ed, since `docker
/// build` cannot set them.
pub fn xattr_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(1_700_000_000);
    dir.set_size(0);
    b.append_data(&mut dir, "x/", std::io::empty()).unwrap();
    let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, xattrs: &[(&str, &[u8])]| {
        b.append_pax_extensions(xattrs.iter().map(|(k, v)| (*k, *v))).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_size(5);
        b.append_data(&mut h, name, &b"data\n"[..]).unwrap();
    };
    file(&mut b, "x/cap", &[("SCHILY.xattr.security.capability", &CAP_NET_BIND_SERVICE)]);
    file(
        &mut b,
        "x/user",
        &[("SCHILY.xattr.user.note", b"hello"), ("SCHILY.xattr.user.bin", &[0, 1, 2, 255])],
    );
    file(
        &mut b,
        "x/both",
        &[("SCHILY.xattr.user.a", b"1"), ("SCHILY.xattr.security.capability", &CAP_NET_BIND_SERVICE)],
    );
    b.into_inner().unwrap()
}

/// `docker import`s [`xattr_tar`] (once per test binary) and returns the image name.
pub fn import_xattr_image() -> &'static str {
    const IMAGE: &str = "diskc-test/convert-xattrs:latest";
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut child = Command::new(DOCKER)
            .args(["import", "-", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&xattr_tar()).unwrap();
        assert!(child.wait().unwrap().success());
    });
    IMAGE
}

/// Paths Docker adds to every container (replacing the image's own, if any): `docker export`
/// cannot be compared with an image there.
pub const ADDED_BY_DOCKER: &[&str] = &[
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
    "dev/pts",
    "dev/shm",
];
/// Directories Docker makes in a container when the image lacks them.
pub const MOUNTPOINTS: &[&str] = &["dev", "etc", "proc", "sys"];
/// Directories whose mtime the container's init layer changes.
pub const TOUCHED_BY_DOCKER: &[&str] = &["", "etc", "dev"];

/// `skopeo copy` of `source` to `dest` (skopeo transport names) with `format` (gzip, zstd)
/// layers.
pub fn skopeo_copy(source: &str, dest: &str, format: &str) {
    run_ok(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-compress",
        "--dest-compress-format",
        format,
        source,
        dest,
    ]));
}
