//! The values that travel between stages and end up in `OUTDIR/manifest.json` and in the
//! store: the image's run configuration, where the image came from, the rootfs, and the
//! boot part. Field names are stable: machines read this file.
//!
//! One word for each kind of record, throughout the code:
//! - *manifest*: an OCI or Docker image manifest, as a source serves it (`source::spec`);
//! - *description*: what diskc says of an image it made, [`ImageDescription`], written as
//!   `OUTDIR/manifest.json` (the file keeps its name);
//! - *stored image*: the store's record of an image, its files as chunks plus its
//!   description's parts ([`crate::store::StoredImage`]), whose content is the image id;
//! - *boot part*: what a VM monitor needs to boot it, [`BootPart`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, FileDigest};

/// The rootfs file name inside an output directory.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// The manifest file name inside an output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the on-disk formats diskc writes (ext4 layout choices, manifest shape).
/// Part of every cache key: bump it when the same input would give different bytes.
pub const FORMAT_VERSION: u32 = 2;

/// What the VM runs at boot: the parts of the OCI image config's `config` object that matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` strings, in image order.
    #[serde(default)]
    pub env: Vec<String>,
    /// Empty means `/`.
    #[serde(default)]
    pub working_dir: String,
    /// `name`, `uid`, `name:group` or `uid:gid`; empty means root.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Such as `8080/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// ENTRYPOINT followed by CMD: the argv Docker would run.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Where the image came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The source as the user named it, e.g. `docker-daemon:app:latest`.
    pub reference: String,
    /// Digest of the image manifest (for the daemon, of the manifest it exported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<Digest>,
    pub config_digest: Digest,
    /// Layer blob digests, bottom first.
    pub layers: Vec<Digest>,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
    /// `os/arch[/variant]`.
    pub platform: String,
}

/// The root filesystem image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsInfo {
    /// File name inside OUTDIR.
    pub file: String,
    /// BLAKE3 of the file (`b3sum` checks it).
    pub digest: FileDigest,
    /// Bytes, the logical size of the image file.
    pub size: u64,
    /// The filesystem UUID (ext4 `s_uuid`), derived from the input.
    pub uuid: String,
}

/// A file the boot part refers to (kernel, initrd), by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFile {
    /// File name inside OUTDIR.
    pub file: String,
    pub digest: Digest,
    pub size: u64,
}

/// Everything a VM monitor needs to boot the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPart {
    pub kernel: BootFile,
    /// The kernel's release string, e.g. `6.1.0-27-cloud-amd64`.
    pub kernel_version: String,
    pub initrd: BootFile,
    /// The kernel command line; the rootfs is the first virtio disk.
    pub cmdline: String,
}

/// `OUTDIR/manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDescription {
    pub diskc_version: String,
    pub format_version: u32,
    /// The store's image id, when the image was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub source: SourceInfo,
    pub config: ImageConfig,
    pub rootfs: RootfsInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootPart>,
}
