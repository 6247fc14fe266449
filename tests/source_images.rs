//! Real images, built with BuildKit from the fixtures in `fixtures/images/`, read through
//! each local source and the `docker save` stream, flattened, and compared with the oracle:
//! `docker export` of a container made from the same image, parsed by our own tar reader as
//! a single layer.
//!
//! What Docker adds to a container, and so is left out of the comparison:
//! - `/.dockerenv`, `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`, `/etc/mtab` (the
//!   init layer);
//! - below `/dev`, the entries Docker creates (`console`, `pts`, `shm`);
//! - `/dev`, `/etc`, `/proc`, `/sys` when the image has none: Docker makes them;
//! - the mtime of `/`, `/etc` and `/dev`, which the init layer writes into;
//! - `user.*` xattrs, which `docker export` drops: those are checked against the layer tar.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use common::images::{
    build_fixture, import_xattr_image, skopeo_copy, ADDED_BY_DOCKER, CAP_NET_BIND_SERVICE, MOUNTPOINTS,
    TOUCHED_BY_DOCKER,
};
use common::{ensure_base_images, run_ok, tempdir, DOCKER};
use diskc::digest::Digest;
use diskc::error::{Classify, ErrorKind};
use diskc::layer::{flatten_layers, index_layer, LayerExpect, SpoolRef};
use diskc::source::{open_local, read_image_stream, SourceRef, DEFAULT_PLATFORM};
use diskc::tree::{Content, FsTree, NodeKind};

/// The image through `docker save`, streamed.
fn via_save_stream(image: &str, spool: &Path) -> FsTree<SpoolRef> {
    let mut child = Command::new(DOCKER).args(["save", image]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let streamed =
        read_image_stream(stdout, image, None, DEFAULT_PLATFORM, &common::spool_file(spool), &[]).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(streamed.layers.len(), streamed.config.diff_ids.len());
    for (i, layer) in streamed.layers.iter().enumerate() {
        assert_eq!(layer.diff_id, streamed.config.diff_ids[i]);
    }
    flatten_layers(&streamed.layers).unwrap()
}

/// `docker export` of a container made from the image, read as one layer.
fn via_export(image: &str, spool: &Path) -> FsTree<SpoolRef> {
    let out = run_ok(Command::new(DOCKER).args(["create", image, "/bin/true"]));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut child = Command::new(DOCKER).args(["export", &id]).stdout(Stdio::piped()).spawn().unwrap();
    let layer =
        index_layer(child.stdout.take().unwrap(), &LayerExpect::default(), 0, common::spool(spool, 0))
            .unwrap();
    assert!(child.wait().unwrap().success());
    run_ok(Command::new(DOCKER).args(["rm", &id]));
    flatten_layers(&[layer]).unwrap()
}

fn via_local(source: &str, spool: &Path) -> FsTree<SpoolRef> {
    let source: SourceRef = source.parse().unwrap();
    let image = open_local(&source, DEFAULT_PLATFORM).unwrap();
    let layers = image.index_layers(&common::spool_file(spool)).unwrap();
    flatten_layers(&layers).unwrap()
}

/// Everything compared about one path.
#[derive(Debug, PartialEq, Eq)]
struct Described {
    kind: String,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    size: u64,
    sha256: Option<Digest>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn content_digest<C: Content>(c: &C, size: u64) -> Digest {
    let mut hasher = diskc::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        c.read_at(pos, &mut buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    hasher.finish()
}

/// Each path's description, and the hard-link groups (paths sharing a non-directory node).
fn describe<C: Content>(
    tree: &FsTree<C>,
    keep_user_xattrs: bool,
) -> (BTreeMap<String, Described>, BTreeSet<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (path, id) in tree.walk() {
        let name = String::from_utf8_lossy(&path).into_owned();
        if ADDED_BY_DOCKER.iter().any(|a| name == *a || name.starts_with(&format!("{a}/"))) {
            continue;
        }
        let node = tree.get(id);
        let (kind, size, sha256) = match &node.kind {
            NodeKind::Directory(_) => ("dir".to_string(), 0, None),
            NodeKind::File(f) => ("file".to_string(), f.size, Some(content_digest(&f.content, f.size))),
            NodeKind::Symlink(t) => (format!("symlink {}", String::from_utf8_lossy(t)), 0, None),
            NodeKind::CharDevice(d) => (format!("char {}:{}", d.major, d.minor), 0, None),
            NodeKind::BlockDevice(d) => (format!("block {}:{}", d.major, d.minor), 0, None),
            NodeKind::Fifo => ("fifo".to_string(), 0, None),
            NodeKind::Socket => ("socket".to_string(), 0, None),
        };
        if !node.is_dir() {
            groups.entry(id.0).or_default().push(name.clone());
        }
        let xattrs = node
            .meta
            .xattrs
            .iter()
            .filter(|(k, _)| keep_user_xattrs || !k.starts_with(b"user."))
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
            .collect();
        let mtime = (!TOUCHED_BY_DOCKER.contains(&name.as_str())).then_some(node.meta.mtime.sec);
        let d = Described {
            kind,
            mode: node.meta.mode,
            uid: node.meta.uid,
            gid: node.meta.gid,
            mtime,
            size,
            sha256,
            xattrs,
        };
        out.insert(name, d);
    }
    let links = groups.into_values().filter(|g| g.len() > 1).collect();
    (out, links)
}

fn assert_same_tree<C: Content, D: Content>(ours: &FsTree<C>, oracle: &FsTree<D>, what: &str) {
    let (a, la) = describe(ours, false);
    let (b, lb) = describe(oracle, false);
    let only_ours: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_oracle: Vec<_> =
        b.keys().filter(|k| !a.contains_key(*k) && !MOUNTPOINTS.contains(&k.as_str())).collect();
    assert!(
        only_ours.is_empty() && only_oracle.is_empty(),
        "{what}: only in ours {only_ours:?}, only in the oracle {only_oracle:?}"
    );
    for (path, d) in &a {
        assert_eq!(d, &b[path], "{what}: {path:?} differs (left ours, right the oracle)");
    }
    assert_eq!(la, lb, "{what}: hard-link groups differ");
}

fn node_at<'t, C>(tree: &'t FsTree<C>, path: &[u8]) -> &'t diskc::tree::Node<C> {
    tree.get(tree.lookup(path).unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(path))))
}

fn file_text(tree: &FsTree<SpoolRef>, path: &str) -> String {
    match &node_at(tree, path.as_bytes()).kind {
        NodeKind::File(f) => {
            let mut buf = vec![0u8; f.size as usize];
            f.content.read_at(0, &mut buf).unwrap();
            String::from_utf8(buf).unwrap()
        }
        other => panic!("{path} is {other:?}"),
    }
}

#[test]
fn changes_image_equals_docker_export() {
    let image = build_fixture("changes");
    let dir = tempdir();
    let ours = via_save_stream(&image, dir.path());
    let oracle = via_export(&image, dir.path());
    assert_same_tree(&ours, &oracle, "docker save stream vs docker export");

    // The rules, checked on our tree directly too, so an oracle mistake cannot hide ours.
    assert!(ours.lookup(b"w/file").is_none() && ours.lookup(b"w/dir").is_none());
    assert_eq!(file_text(&ours, "w/other"), "stays\n");
    let opaque: Vec<_> = node_at(&ours, b"o/dir").as_dir().unwrap().entries.keys().cloned().collect();
    assert_eq!(opaque, [b"c".to_vec()]);
    assert!(node_at(&ours, b"r/f2d").is_dir());
    assert_eq!(file_text(&ours, "r/d2f"), "now-a-file\n");
    assert!(matches!(&node_at(&ours, b"r/d2l").kind, NodeKind::Symlink(t) if t == b"/etc"));
    assert_eq!(node_at(&ours, b"m/chmod").meta.mode, 0o600);
    assert_eq!((node_at(&ours, b"m/chown").meta.uid, node_at(&ours, b"m/chown").meta.gid), (1234, 5678));
    assert_eq!(node_at(&ours, b"m/touch").meta.mtime.sec, 981173106);
    assert_eq!(ours.lookup(b"h/a"), ours.lookup(b"h/b"));
    assert_eq!(ours.lookup(b"h/lower"), ours.lookup(b"h/lower-link"));
    assert!(ours.lookup(b"h/p").is_none());
    assert_eq!(file_text(&ours, "h/q"), "partner\n");
    assert!(matches!(&node_at(&ours, b"s/dangling").kind, NodeKind::Symlink(t) if t == b"/nonexistent/x"));
    assert!(
        matches!(node_at(&ours, b"d/null").kind, NodeKind::CharDevice(d) if (d.major, d.minor) == (1, 3))
    );
    assert!(
        matches!(node_at(&ours, b"d/loop0").kind, NodeKind::BlockDevice(d) if (d.major, d.minor) == (7, 0))
    );
    assert!(matches!(node_at(&ours, b"d/fifo").kind, NodeKind::Fifo));
    assert_eq!(node_at(&ours, b"d/setuid").meta.mode, 0o4755);
    assert_eq!(node_at(&ours, b"d/setgid").meta.mode, 0o2755);
    assert_eq!(node_at(&ours, b"d/sticky").meta.mode, 0o1777);
    assert_eq!(
        (node_at(&ours, b"d/bigids").meta.uid, node_at(&ours, b"d/bigids").meta.gid),
        (100000, 4000000000)
    );
    assert_eq!(node_at(&ours, b"many").as_dir().unwrap().entries.len(), 5000);
    assert_eq!(file_text(&ours, &format!("names/{}", "n".repeat(255))), "long\n");
    assert!(ours.lookup(b"names/caf\xe9").is_some() && ours.lookup("names/café".as_bytes()).is_some());
}

#[test]
fn big_files_equal_docker_export_and_holes_cost_no_spool() {
    let image = build_fixture("bigfiles");
    let dir = tempdir();
    let ours = via_save_stream(&image, dir.path());
    let oracle = via_export(&image, dir.path());
    assert_same_tree(&ours, &oracle, "docker save stream vs docker export");
    let NodeKind::File(sparse) = &node_at(&ours, b"big/sparse").kind else {
        panic!("big/sparse is not a file")
    };
    assert_eq!(sparse.size, 600 << 20);
    assert_eq!(sparse.data_block_count(), 3, "only the three blocks written hold data");
    let NodeKind::File(random) = &node_at(&ours, b"big/random").kind else {
        panic!("big/random is not a file")
    };
    assert_eq!(random.size, 40 << 20);
    assert_eq!(random.data_block_count(), (40 << 20) / 4096);
}

#[test]
fn xattrs_from_an_imported_tar() {
    ensure_base_images(&["busybox"]);
    let image = import_xattr_image();
    let dir = tempdir();
    let ours = via_save_stream(image, dir.path());
    let oracle = via_export(image, dir.path());
    assert_same_tree(&ours, &oracle, "xattrs: docker save stream vs docker export");
    let x = |p: &str, k: &str| node_at(&ours, p.as_bytes()).meta.xattrs.get(k.as_bytes()).cloned();
    assert_eq!(x("x/cap", "security.capability").as_deref(), Some(&CAP_NET_BIND_SERVICE[..]));
    assert_eq!(x("x/both", "security.capability").as_deref(), Some(&CAP_NET_BIND_SERVICE[..]));
    // user.* against the layer tar we made.
    assert_eq!(x("x/user", "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(x("x/user", "user.bin").as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert_eq!(x("x/both", "user.a").as_deref(), Some(&b"1"[..]));
}

#[test]
fn every_local_transport_gives_the_same_tree() {
    let image = build_fixture("changes");
    let dir = tempdir();
    let spool = dir.path();
    let from_stream = via_save_stream(&image, spool);
    let archive = dir.path().join("image.tar");
    run_ok(Command::new(DOCKER).args(["save", "-o"]).arg(&archive).arg(&image));
    let archive_ref = format!("docker-archive:{}", archive.display());
    assert_same_tree(&via_local(&archive_ref, spool), &from_stream, "docker-archive file");
    assert_same_tree(
        &via_local(&format!("{archive_ref}:{image}"), spool),
        &from_stream,
        "docker-archive file with :REF",
    );

    for format in ["gzip", "zstd"] {
        let layout = dir.path().join(format!("oci-{format}"));
        let oci_archive = dir.path().join(format!("oci-{format}.tar"));
        for dest in
            [format!("oci:{}:app", layout.display()), format!("oci-archive:{}:app", oci_archive.display())]
        {
            skopeo_copy(&archive_ref, &dest, format);
        }
        let source: SourceRef = format!("oci:{}:app", layout.display()).parse().unwrap();
        let local = open_local(&source, DEFAULT_PLATFORM).unwrap();
        assert!(
            local.resolved.layers.iter().all(|l| l.media_type.ends_with(format)),
            "{:?}",
            local.resolved.layers
        );
        assert!(local.resolved.manifest_digest.is_some());
        assert_same_tree(
            &via_local(&format!("oci:{}:app", layout.display()), spool),
            &from_stream,
            &format!("oci {format}"),
        );
        assert_same_tree(
            &via_local(&format!("oci:{}", layout.display()), spool),
            &from_stream,
            &format!("oci {format}, only image"),
        );
        assert_same_tree(
            &via_local(&format!("oci-archive:{}:app", oci_archive.display()), spool),
            &from_stream,
            &format!("oci-archive {format}"),
        );
        // The same layout read as a stream (an Engine ≥ 25 save is an OCI layout in a tar).
        let file = std::fs::File::open(&oci_archive).unwrap();
        let streamed = read_image_stream(
            file,
            "oci-archive stream",
            Some("app"),
            DEFAULT_PLATFORM,
            &common::spool_file(spool),
            &[],
        )
        .unwrap();
        assert_same_tree(
            &flatten_layers(&streamed.layers).unwrap(),
            &from_stream,
            &format!("oci-archive {format} as a stream"),
        );
    }
}

/// Copies an OCI layout made by skopeo, to break it.
fn gzip_layout(dir: &Path) -> (std::path::PathBuf, Vec<Digest>) {
    let image = build_fixture("changes");
    let archive = dir.join("image.tar");
    run_ok(Command::new(DOCKER).args(["save", "-o"]).arg(&archive).arg(&image));
    let layout = dir.join("oci");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--dest-compress"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("oci:{}:app", layout.display())),
    );
    let local = open_local(&format!("oci:{}", layout.display()).parse().unwrap(), DEFAULT_PLATFORM).unwrap();
    (layout, local.resolved.layers.iter().map(|l| l.digest).collect())
}

fn layers_error(source: &str, spool: &Path) -> diskc::source::SourceError {
    let image = match open_local(&source.parse().unwrap(), DEFAULT_PLATFORM) {
        Ok(image) => image,
        Err(e) => return e,
    };
    match image.index_layers(&common::spool_file(spool)) {
        Ok(_) => panic!("{source}: read without error"),
        Err(e) => e,
    }
}

#[test]
fn broken_layouts_fail_with_one_clear_error() {
    let dir = tempdir();
    let (layout, layers) = gzip_layout(dir.path());
    let blob = |d: &Digest| layout.join("blobs/sha256").join(d.hex());
    let source = format!("oci:{}", layout.display());
    let spool = dir.path();

    // One flipped byte in the middle of the largest layer.
    let target = layers.iter().max_by_key(|d| std::fs::metadata(blob(d)).unwrap().len()).unwrap();
    let original = std::fs::read(blob(target)).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(blob(target), &flipped).unwrap();
    let e = layers_error(&source, spool);
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
    assert!(e.to_string().contains(&target.to_string()), "the error names the blob: {e}");

    // Truncated.
    std::fs::write(blob(target), &original[..original.len() * 2 / 3]).unwrap();
    let e = layers_error(&source, spool);
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
    assert!(e.to_string().contains(&target.to_string()), "the error names the blob: {e}");

    // Absent.
    std::fs::remove_file(blob(target)).unwrap();
    let e = layers_error(&source, spool);
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
    assert!(e.to_string().contains(&target.hex()) && e.to_string().contains("not there"), "{e}");

    // The directory or archive itself absent.
    for missing in [
        format!("oci:{}/nope", dir.path().display()),
        format!("docker-archive:{}/nope.tar", dir.path().display()),
    ] {
        let e = layers_error(&missing, spool);
        assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}

#[test]
fn an_image_that_does_not_exist_in_an_archive() {
    let dir = tempdir();
    let image = build_fixture("changes");
    let archive = dir.path().join("image.tar");
    run_ok(Command::new(DOCKER).args(["save", "-o"]).arg(&archive).arg(&image));
    let e = layers_error(&format!("docker-archive:{}:no/such:image", archive.display()), dir.path());
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
    assert!(e.to_string().contains("no/such:image"), "{e}");
    // A truncated save stream is an error too, not a partial image.
    let bytes = std::fs::read(&archive).unwrap();
    let cut = &bytes[..bytes.len() / 2];
    let e =
        read_image_stream(cut, "cut stream", None, DEFAULT_PLATFORM, &common::spool_file(dir.path()), &[])
            .expect_err("a cut stream fails");
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
}

#[test]
fn a_debian_base_equals_docker_export() {
    ensure_base_images(&["debian"]);
    let dir = tempdir();
    let ours = via_save_stream(common::DEBIAN_IMAGE, dir.path());
    let oracle = via_export(common::DEBIAN_IMAGE, dir.path());
    assert_same_tree(&ours, &oracle, "debian: docker save stream vs docker export");
}
