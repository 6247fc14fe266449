//! Local sources on layouts made here (no Docker needed): OCI layouts with nested
//! multi-platform indexes, docker-archives with linked layers, the same as streams, and
//! what a broken or hostile one gives.

mod common;

use std::io::Write;
use std::path::Path;

use diskc::digest::Digest;
use diskc::error::{Classify, ErrorKind};
use diskc::layer::flatten_layers;
use diskc::source::{open_local, read_image_stream, SourceError, SourceRef, DEFAULT_PLATFORM};
use diskc::tree::flatten::FlattenError;
use serde_json::json;

fn layer_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(text.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        // Set the name bytes directly: `append_data` refuses `..`, and hostile layers have it.
        let name_field = &mut h.as_old_mut().name;
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes a blob into an OCI layout and returns its descriptor.
fn put_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let d = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(d.hex()), bytes).unwrap();
    json!({"mediaType": media_type, "digest": d.to_string(), "size": bytes.len()})
}

/// An image (config + manifest) for `arch` with the given layer tars, gzip-compressed.
fn put_image(dir: &Path, arch: &str, layers: &[Vec<u8>]) -> serde_json::Value {
    let diff_ids: Vec<String> = layers.iter().map(|t| Digest::of(t).to_string()).collect();
    let config = json!({"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let config = put_blob(dir, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes());
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|t| put_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gzip(t)))
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layer_descs});
    let mut desc =
        put_blob(dir, "application/vnd.oci.image.manifest.v1+json", manifest.to_string().as_bytes());
    desc["platform"] = json!({"architecture": arch, "os": "linux"});
    desc
}

fn write_index(dir: &Path, manifests: Vec<serde_json::Value>) {
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

fn oci(dir: &Path, reference: Option<&str>) -> SourceRef {
    match reference {
        Some(r) => format!("oci:{}:{r}", dir.display()),
        None => format!("oci:{}", dir.display()),
    }
    .parse()
    .unwrap()
}

fn text_at(tree: &diskc::tree::FsTree<diskc::layer::SpoolRef>, path: &str) -> String {
    use diskc::tree::{Content, NodeKind};
    let NodeKind::File(f) = &tree.get(tree.lookup(path.as_bytes()).unwrap()).kind else { panic!("{path}") };
    let mut v = vec![0; f.size as usize];
    f.content.read_at(0, &mut v).unwrap();
    String::from_utf8(v).unwrap()
}

/// A multi-platform image: an index blob, named `app`, over amd64 and arm64 manifests.
fn multi_platform(dir: &Path) {
    let amd = put_image(dir, "amd64", &[layer_tar(&[("arch", "amd64")]), layer_tar(&[("two", "2")])]);
    let arm = put_image(dir, "arm64", &[layer_tar(&[("arch", "arm64")])]);
    let inner = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm, amd]});
    let mut desc = put_blob(dir, "application/vnd.oci.image.index.v1+json", inner.to_string().as_bytes());
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": "app"});
    write_index(dir, vec![desc]);
}

#[test]
fn a_multi_platform_index_is_resolved_by_platform() {
    let dir = common::tempdir();
    multi_platform(dir.path());
    let spool = dir.path();
    for (platform, arch, layers) in [(DEFAULT_PLATFORM, "amd64", 2), ("linux/arm64", "arm64", 1)] {
        let image = open_local(&oci(dir.path(), Some("app")), platform).unwrap();
        assert_eq!(image.resolved.platform, format!("linux/{arch}"));
        assert_eq!(image.resolved.layers.len(), layers);
        let tree = flatten_layers(&image.index_layers(&common::spool_file(spool)).unwrap()).unwrap();
        assert_eq!(text_at(&tree, "arch"), arch);
    }
    let e = open_local(&oci(dir.path(), Some("app")), "linux/s390x").err().unwrap();
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
    assert!(e.to_string().contains("linux/s390x") && e.to_string().contains("linux/arm64"), "{e}");
    let e = open_local(&oci(dir.path(), Some("other")), DEFAULT_PLATFORM).err().unwrap();
    assert!(e.to_string().contains("\"other\""), "{e}");
}

#[test]
fn a_layer_holding_dotdot_etc_passwd_is_rejected() {
    let dir = common::tempdir();
    let hostile = layer_tar(&[("ok", "fine"), ("../../etc/passwd", "root::0:0::/:/bin/sh\n")]);
    let desc = put_image(dir.path(), "amd64", std::slice::from_ref(&hostile));
    write_index(dir.path(), vec![desc]);
    let image = open_local(&oci(dir.path(), None), DEFAULT_PLATFORM).unwrap();
    let layers = image.index_layers(&common::spool_file(dir.path())).unwrap();
    let e = flatten_layers(&layers).err().unwrap();
    assert!(matches!(e, FlattenError::Escapes { .. }), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
    let msg = e.to_string();
    assert!(
        msg.contains("../../etc/passwd") && msg.contains(&Digest::of(&gzip(&hostile)).to_string()),
        "{msg}"
    );
}

#[test]
fn broken_manifests_name_what_is_wrong() {
    let dir = common::tempdir();
    let desc = put_image(dir.path(), "amd64", &[layer_tar(&[("a", "1")])]);
    write_index(dir.path(), vec![desc.clone()]);
    let manifest_path = dir
        .path()
        .join("blobs/sha256")
        .join(desc["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();

    // The config blob absent.
    let config_digest: Digest = manifest["config"]["digest"].as_str().unwrap().parse().unwrap();
    let config_path = dir.path().join("blobs/sha256").join(config_digest.hex());
    let config = std::fs::read(&config_path).unwrap();
    std::fs::remove_file(&config_path).unwrap();
    let e = open_local(&oci(dir.path(), None), DEFAULT_PLATFORM).err().unwrap();
    assert!(matches!(e, SourceError::MissingBlob { .. }), "{e}");
    assert!(e.to_string().contains(&config_digest.to_string()), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
    std::fs::write(&config_path, &config).unwrap();

    // The manifest altered: its digest no longer matches.
    std::fs::write(&manifest_path, manifest.to_string() + " ").unwrap();
    let e = open_local(&oci(dir.path(), None), DEFAULT_PLATFORM).err().unwrap();
    assert!(matches!(e, SourceError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(desc["digest"].as_str().unwrap()), "{e}");

    // Not a layout at all.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = open_local(&oci(&empty, None), DEFAULT_PLATFORM).err().unwrap();
    assert!(e.to_string().contains("index.json"), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
}

/// Tars a directory with the given members first and the rest after, as a stream producer.
fn tar_of(dir: &Path, last: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut rest: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .collect();
    rest.sort_by_key(|e| last.iter().any(|l| e.path().ends_with(l)));
    for e in rest {
        b.append_path_with_name(e.path(), e.path().strip_prefix(dir).unwrap()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn an_oci_layout_stream_with_the_index_last() {
    let dir = common::tempdir();
    let layout = dir.path().join("layout");
    multi_platform(&layout);
    let stream = tar_of(&layout, &["index.json"]);
    for (platform, arch) in [(DEFAULT_PLATFORM, "amd64"), ("linux/arm64", "arm64")] {
        let s = read_image_stream(
            &stream[..],
            "stream",
            Some("app"),
            platform,
            &common::spool_file(dir.path()),
            &[],
        )
        .unwrap();
        assert_eq!(text_at(&flatten_layers(&s.layers).unwrap(), "arch"), arch);
        assert_eq!(s.config.platform, format!("linux/{arch}"));
    }
}

/// A legacy docker-archive: `<id>/layer.tar` members (one a symlink to another, as for a
/// layer listed twice), config, and `manifest.json` last.
fn legacy_archive(layers: &[Vec<u8>], break_link: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, name, bytes).unwrap();
    };
    let mut paths = Vec::new();
    for (i, t) in layers.iter().enumerate() {
        add(&mut b, &format!("l{i}/VERSION"), b"1.0");
        add(&mut b, &format!("l{i}/layer.tar"), t);
        paths.push(format!("l{i}/layer.tar"));
    }
    // The bottom layer again, through a symlink.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    let target = if break_link { "../nowhere/layer.tar" } else { "../l0/layer.tar" };
    b.append_link(&mut h, "again/layer.tar", target).unwrap();
    paths.push("again/layer.tar".into());
    let mut diff_ids: Vec<String> = layers.iter().map(|t| Digest::of(t).to_string()).collect();
    diff_ids.push(diff_ids[0].clone());
    let config = json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}).to_string();
    let config_name = format!("{}.json", Digest::of(config.as_bytes()).hex());
    add(&mut b, &config_name, config.as_bytes());
    let manifest = json!([{"Config": config_name, "RepoTags": ["app:1"], "Layers": paths}]).to_string();
    add(&mut b, "manifest.json", manifest.as_bytes());
    b.into_inner().unwrap()
}

#[test]
fn a_legacy_docker_archive_as_stream_and_as_file() {
    let dir = common::tempdir();
    let layers = [layer_tar(&[("a", "bottom")]), layer_tar(&[("a", "middle"), ("b", "b")])];
    let archive = legacy_archive(&layers, false);
    let s = read_image_stream(
        &archive[..],
        "archive",
        None,
        DEFAULT_PLATFORM,
        &common::spool_file(dir.path()),
        &[],
    )
    .unwrap();
    assert_eq!(s.layers.len(), 3);
    let tree = flatten_layers(&s.layers).unwrap();
    assert_eq!(text_at(&tree, "a"), "bottom", "the repeated bottom layer is on top");
    assert_eq!(text_at(&tree, "b"), "b");
    let layer_of = |tree: &diskc::tree::FsTree<diskc::layer::SpoolRef>, p: &str| match &tree
        .get(tree.lookup(p.as_bytes()).unwrap())
        .kind
    {
        diskc::tree::NodeKind::File(f) => diskc::tree::Content::layer(&f.content),
        _ => unreachable!(),
    };
    assert_eq!(
        (layer_of(&tree, "a"), layer_of(&tree, "b")),
        (0, 1),
        "a blob listed twice keeps its lowest place"
    );

    let file = dir.path().join("archive.tar");
    std::fs::write(&file, &archive).unwrap();
    let image =
        open_local(&format!("docker-archive:{}:app:1", file.display()).parse().unwrap(), DEFAULT_PLATFORM)
            .unwrap();
    assert_eq!(
        image.resolved.layers.iter().map(|l| l.digest).collect::<Vec<_>>()[..2],
        [Digest::of(&layers[0]), Digest::of(&layers[1])]
    );
    let tree2 = flatten_layers(&image.index_layers(&common::spool_file(dir.path())).unwrap()).unwrap();
    assert_eq!(text_at(&tree2, "a"), "bottom");
    let e =
        open_local(&format!("docker-archive:{}:app:2", file.display()).parse().unwrap(), DEFAULT_PLATFORM)
            .err()
            .unwrap();
    assert!(e.to_string().contains("app:2"), "{e}");

    // A layer the manifest names but the stream lacks.
    let broken = legacy_archive(&layers, true);
    let e = read_image_stream(
        &broken[..],
        "broken",
        None,
        DEFAULT_PLATFORM,
        &common::spool_file(dir.path()),
        &[],
    )
    .err()
    .unwrap();
    assert!(matches!(e, SourceError::MissingBlob { .. }), "{e}");
    assert!(e.to_string().contains("again/layer.tar"), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
}
