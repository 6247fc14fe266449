//! A layer blob is as long as its descriptor says, for every transport: one that is longer
//! (or never ends) is refused as it streams, never read to its end.

mod common;
#[path = "common/rawtar.rs"]
mod rawtar;

use std::path::Path;
use std::time::Duration;

use diskc::digest::Digest;
use diskc::error::{Classify, ErrorKind};
use diskc::source::{open_local, read_image_stream, SourceRef, DEFAULT_PLATFORM};
use serde_json::json;

fn put_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let d = Digest::of(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(d.hex()), bytes).unwrap();
    json!({"mediaType": media_type, "digest": d.to_string(), "size": bytes.len()})
}

/// An OCI layout of one image with one uncompressed layer `tar`; returns the layer's path.
fn layout(dir: &Path, tar: &[u8]) -> std::path::PathBuf {
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(tar).to_string()]}});
    let config = put_blob(dir, "application/vnd.oci.image.config.v1+json", config.to_string().as_bytes());
    let layer = put_blob(dir, "application/vnd.oci.image.layer.v1.tar", tar);
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer]});
    let desc = put_blob(dir, "application/vnd.oci.image.manifest.v1+json", manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    dir.join("blobs/sha256").join(Digest::of(tar).hex())
}

#[test]
fn an_oci_layout_blob_that_never_ends_is_refused() {
    let dir = common::tempdir();
    let tar = rawtar::Tar::new().file(b"f", b"x").finish();
    let blob = layout(dir.path(), &tar);
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &blob).unwrap();
    let source: SourceRef = format!("oci:{}", dir.path().display()).parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let spool_dir = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let image = open_local(&source, DEFAULT_PLATFORM).unwrap();
        tx.send(
            image
                .index_layers(&common::spool_file(&spool_dir))
                .err()
                .map(|e| (e.to_string(), e.error_kind())),
        )
    });
    let (e, class) = rx.recv_timeout(Duration::from_secs(10)).expect("refused in time").expect("an error");
    assert_eq!(class, ErrorKind::BadInput, "{e}");
    assert!(e.contains(&format!("{} bytes", tar.len())), "{e}");
}

#[test]
fn a_streamed_layer_of_another_size_than_its_descriptor_is_refused() {
    let dir = common::tempdir();
    let tar = rawtar::Tar::new().file(b"f", b"x").finish();
    layout(dir.path(), &tar);
    // The manifest's layer descriptor gives one byte less than the blob has.
    let blobs = dir.path().join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest: Digest = index["manifests"][0]["digest"].as_str().unwrap().parse().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(manifest_digest.hex())).unwrap()).unwrap();
    manifest["layers"][0]["size"] = json!(tar.len() - 1);
    let desc =
        put_blob(dir.path(), "application/vnd.oci.image.manifest.v1+json", manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
    // As a stream (an OCI layout inside `docker save`'s tar)...
    let mut stream = rawtar::Tar::new();
    for entry in walkdir::WalkDir::new(dir.path()).into_iter().map(|e| e.unwrap()) {
        if entry.file_type().is_file() {
            let name = entry.path().strip_prefix(dir.path()).unwrap().to_str().unwrap().as_bytes().to_vec();
            stream = stream.file(&name, &std::fs::read(entry.path()).unwrap());
        }
    }
    let spool = common::spool_file(dir.path());
    let e =
        read_image_stream(&stream.finish()[..], "stream", None, DEFAULT_PLATFORM, &spool, &[]).unwrap_err();
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
    assert!(e.to_string().contains(&format!("its descriptor gives {}", tar.len() - 1)), "{e}");
    // ... and in place.
    let source: SourceRef = format!("oci:{}", dir.path().display()).parse().unwrap();
    let image = open_local(&source, DEFAULT_PLATFORM).unwrap();
    let e = image.index_layers(&common::spool_file(dir.path())).unwrap_err();
    assert!(e.to_string().contains(&format!("{} bytes", tar.len() - 1)), "{e}");
}
