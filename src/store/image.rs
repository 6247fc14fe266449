//! The image manifest the store keeps per image, its canonical bytes and the image id.
//!
//! The id is content, not history: the sha256 of the canonical JSON (object keys sorted, no
//! whitespace) of what the image is — its rootfs, boot files, boot part and config. The same
//! image therefore has the same id on any machine, whichever transport brought it and in
//! whatever order. Where it came from (the source, the build inputs) is provenance, kept in
//! the same record beside the identity but outside the id; the first store of an image
//! keeps its provenance. Names, cache entries and creation times live beside the record, so
//! tagging or re-storing never changes an id.
//!
//! Records of store format 1 (before provenance left the id) keep the id they were stored
//! under: the digest of all their canonical bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, FileDigest};
use crate::manifest::{BootPart, ImageConfig, SourceInfo};

/// Version of the stored manifest's shape; part of every id. 2: source and build inputs are
/// provenance, outside the id.
pub const STORE_FORMAT: u32 = 2;

/// The manifest's fields that are provenance, not identity (from store format 2).
const PROVENANCE: [&str; 2] = ["source", "build"];

/// An image's id: the digest of its canonical manifest. Printed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ImageId(pub Digest);

impl ImageId {
    pub fn hex(&self) -> String {
        self.0.hex()
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> String {
        self.0.hex()[..12].to_string()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.hex())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image id {0:?}: expected 64 hex digits")]
pub struct ParseImageIdError(pub String);

impl FromStr for ImageId {
    type Err = ParseImageIdError;

    /// 64 lowercase hex digits, with or without a `sha256:` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        format!("sha256:{hex}").parse::<Digest>().map(ImageId).map_err(|_| ParseImageIdError(s.to_string()))
    }
}

impl Serialize for ImageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One stored chunk of a file: `size` bytes at `offset`, named by the sha256 of those bytes.
/// Parts of a file no chunk covers are zeros (holes and all-zero runs are not stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub offset: u64,
    pub size: u64,
    pub digest: Digest,
}

/// A file kept in the store as chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Logical size in bytes.
    pub size: u64,
    /// How the file was cut (`fixed:1M`, `cdc:256K`), for the record; reassembly needs only
    /// the chunk list.
    pub chunking: String,
    pub chunks: Vec<ChunkRef>,
}

/// The root filesystem image as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRootfs {
    /// The filesystem UUID (ext4 `s_uuid`).
    pub uuid: String,
    /// The rootfs image's digest, as `manifest.json` reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<FileDigest>,
    #[serde(flatten)]
    pub file: StoredFile,
}

/// What the pipeline knows about an image besides its files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRecord {
    /// The filesystem UUID of the rootfs.
    pub uuid: String,
    /// The rootfs image's digest, when the caller computed it.
    pub rootfs_digest: Option<FileDigest>,
    pub boot: Option<BootPart>,
    pub source: Option<SourceInfo>,
    pub config: ImageConfig,
    /// The build inputs (Dockerfile digest, build args, options...), free-form.
    pub build: BTreeMap<String, serde_json::Value>,
}

/// The manifest stored per image; its canonical bytes define the id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    pub store_format: u32,
    pub rootfs: StoredRootfs,
    /// Boot files (`kernel`, `initrd`) by name, stored as chunks like the rootfs.
    pub files: BTreeMap<String, StoredFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceInfo>,
    pub config: ImageConfig,
    #[serde(default)]
    pub build: BTreeMap<String, serde_json::Value>,
}

impl StoredImage {
    /// Every chunk the image needs, rootfs first.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.rootfs.file.chunks.iter().chain(self.files.values().flat_map(|f| f.chunks.iter()))
    }

    /// The canonical bytes: JSON with sorted keys and no whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("a manifest always serializes");
        let mut out = Vec::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The digest of what the image is: the canonical bytes of the manifest without its
    /// provenance (for format-1 records, of the whole manifest).
    pub fn id(&self) -> ImageId {
        if self.store_format < 2 {
            return ImageId(Digest::of(&self.canonical_bytes()));
        }
        let mut value = serde_json::to_value(self).expect("a manifest always serializes");
        if let serde_json::Value::Object(map) = &mut value {
            for field in PROVENANCE {
                map.remove(field);
            }
        }
        let mut identity = Vec::new();
        write_canonical(&value, &mut identity);
        ImageId(Digest::of(&identity))
    }
}

/// Writes JSON with object keys in byte order and no whitespace, whatever the map type
/// serde_json was built with.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(key).expect("a string always serializes"));
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar always serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredImage {
        StoredImage {
            store_format: STORE_FORMAT,
            rootfs: StoredRootfs {
                uuid: "0f0e0d0c-0b0a-0908-0706-050403020100".into(),
                digest: None,
                file: StoredFile {
                    size: 8192,
                    chunking: "fixed:1M".into(),
                    chunks: vec![ChunkRef { offset: 0, size: 8192, digest: Digest::of(b"x") }],
                },
            },
            files: BTreeMap::new(),
            boot: None,
            source: None,
            config: ImageConfig { cmd: vec!["/bin/sh".into()], ..Default::default() },
            build: BTreeMap::from([("z".into(), serde_json::json!({"b": 1, "a": [true, null]}))]),
        }
    }

    #[test]
    fn canonical_bytes_sort_keys_and_have_no_whitespace() {
        let text = String::from_utf8(sample().canonical_bytes()).unwrap();
        assert!(!text.contains(' ') && !text.contains('\n'), "{text}");
        assert!(text.starts_with(r#"{"build":{"z":{"a":[true,null],"b":1}},"config":{"#), "{text}");
        let rootfs = &text[text.find(r#""rootfs":"#).unwrap()..];
        assert!(
            rootfs.starts_with(r#""rootfs":{"chunking":"fixed:1M","chunks":[{"digest":"sha256:"#),
            "{text}"
        );
    }

    #[test]
    fn id_round_trips_through_the_stored_bytes() {
        let manifest = sample();
        let parsed: StoredImage = serde_json::from_slice(&manifest.canonical_bytes()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.id(), manifest.id());
        let legacy = StoredImage { store_format: 1, ..manifest.clone() };
        assert_eq!(legacy.id(), ImageId(Digest::of(&legacy.canonical_bytes())));
    }

    /// Regression (issue 11): the id covered the source reference, so one image had two ids
    /// and the cache answered with whichever transport stored it first.
    #[test]
    fn the_id_is_content_and_provenance_stays_outside_it() {
        let mut from_archive = sample();
        from_archive.source = Some(crate::manifest::SourceInfo {
            reference: "docker-archive:app.tar".into(),
            manifest_digest: None,
            config_digest: Digest::of(b"config"),
            layers: vec![Digest::of(b"gzip layer")],
            diff_ids: vec![Digest::of(b"layer")],
            platform: "linux/amd64".into(),
        });
        let mut from_daemon = from_archive.clone();
        from_daemon.source.as_mut().unwrap().reference = "docker-daemon:app:latest".into();
        from_daemon.build.insert("target".into(), serde_json::json!("final"));
        assert_eq!(from_archive.id(), from_daemon.id());
        let mut other_rootfs = from_archive.clone();
        other_rootfs.rootfs.uuid = "another".into();
        assert_ne!(other_rootfs.id(), from_archive.id());
    }

    #[test]
    fn id_changes_with_any_field() {
        let mut other = sample();
        other.config.cmd.push("-c".into());
        assert_ne!(other.id(), sample().id());
    }

    #[test]
    fn image_id_parses_with_or_without_prefix() {
        let id = sample().id();
        assert_eq!(id.to_string().parse::<ImageId>().unwrap(), id);
        assert_eq!(format!("sha256:{id}").parse::<ImageId>().unwrap(), id);
        assert!("abc".parse::<ImageId>().is_err());
    }
}
