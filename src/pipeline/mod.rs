//! The library's entry points: one call per job, each taking a plan and returning a result.
//!
//! - [`mkfs`]: a directory or a tar stream to an ext4 image file.
//! - [`convert`]: any container image to a rootfs, its manifest and boot files, in the store
//!   and/or an output directory.
//! - [`build`]: a Dockerfile built by BuildKit, then converted like `convert`.
//!
//! The CLI and the build-farm worker both call these, so every way in gives the same bytes.
//! Work that is async (the Docker daemon) runs on the caller's runtime, passed as a
//! [`tokio::runtime::Handle`]; the entry points block, so an async caller runs them from
//! `spawn_blocking`. Progress goes to a callback; nothing here prints.

mod build;
mod cache_key;
mod convert;
mod incremental;
mod mkfs;
mod rootfs;
mod staging;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::boot::BootError;
use crate::build::BuildEvent;
use crate::error::{Classify, ErrorKind};
use crate::ext4;
use crate::layer::LayerMeter;
use crate::source::registry::RegistryOptions;
use crate::source::{SourceError, SourceRef};
use crate::store::{StoreError, StoreLocation};
use crate::tree::flatten::FlattenError;

pub use crate::boot::HostKernel;
pub use build::{build, Built};
pub use convert::{convert, export_outdir, Converted};
pub use mkfs::{mkfs, Made, MkfsPlan, MkfsSource};
pub use rootfs::{digest_file, ext4_options, format_uuid, fs_time};
pub use staging::remove_unfinished;

/// A conversion: which image, and where its result goes.
#[derive(Clone, Debug)]
pub struct ConvertPlan {
    pub source: SourceRef,
    /// The source as the user wrote it, for the manifest and messages.
    pub input: String,
    /// `os/arch[/variant]`: the image must be for this platform (picked from an index, or
    /// an error naming what the image has); `None` takes an index's entry for the host
    /// ([`crate::source::DEFAULT_PLATFORM`]) and a single image as it is.
    pub platform: Option<String>,
    /// Credentials and TLS for a `docker://` source.
    pub registry: RegistryOptions,
    pub output: OutputPlan,
}

/// Where a converted image goes and how it is laid out; `convert` and `build` share it.
#[derive(Clone, Debug, Default)]
pub struct OutputPlan {
    /// Where `rootfs.ext4`, `manifest.json` and the boot files go, if anywhere.
    pub outdir: Option<PathBuf>,
    /// The store to keep the image in (and to answer from, on a cache hit), if any: a
    /// directory, or a remote store written through the local one.
    pub store: Option<StoreLocation>,
    pub rootfs: RootfsOptions,
    /// The kernel to boot with; without one, the image's own `/boot/vmlinuz-*` if it has
    /// one, else the image gets no boot part.
    pub kernel: Option<HostKernel>,
    /// Build inputs recorded in the store's manifest (Dockerfile args...), free-form; part
    /// of the cache key. `build` fills them in.
    pub build_inputs: BTreeMap<String, serde_json::Value>,
    /// Names to give the stored image.
    pub names: Vec<String>,
}

impl OutputPlan {
    /// The store at its default place (`$DISKC_STORE`, `$XDG_CACHE_HOME/diskc`...).
    pub fn default_store() -> StoreLocation {
        StoreLocation::from_env()
    }

    /// A plan that cannot be carried out is refused before any work starts.
    fn check(&self) -> Result<(), PipelineError> {
        if self.store.is_none() && !self.names.is_empty() {
            return Err(PipelineError::Plan("names without a store: names are given to the stored image"));
        }
        if self.store.is_none() && self.outdir.is_none() {
            return Err(PipelineError::Plan("nowhere to put the image: give an output directory or a store"));
        }
        Ok(())
    }
}

/// How the root filesystem is laid out; part of the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootfsOptions {
    /// `None`: the content plus headroom.
    pub size: Option<u64>,
    pub journal: bool,
    /// `SOURCE_DATE_EPOCH`: the filesystem's own time (else the newest mtime in the image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<i64>,
}

impl Default for RootfsOptions {
    fn default() -> Self {
        RootfsOptions { size: None, journal: true, source_date_epoch: None }
    }
}

/// What an entry point is doing, for progress displays (serializable: the build farm sends it
/// from a worker to the submitter).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub enum Progress {
    /// A step of the Dockerfile build (`build` only).
    Build(BuildEvent),
    /// The build is done: the daemon's image id and the tags it got (`build` only).
    Built { image_id: String, tags: Vec<String> },
    /// The image is resolved: this many layers, this many bytes to read (when known), and
    /// the meter that counts their reading as it goes (poll it: no event says "more read").
    Resolved {
        input: String,
        layers: usize,
        bytes: Option<u64>,
        #[serde(skip)]
        meter: Arc<LayerMeter>,
    },
    /// The store already holds this conversion.
    CacheHit { id: String },
    /// How the layers of an image in the Docker daemon are read (its directories or
    /// `docker save`), and why.
    DaemonLayers(crate::source::DaemonLayers),
    /// The store had this many of the image's lowest layers saved: they are not read.
    LayersReused { layers: usize },
    /// All layers are read and indexed.
    LayersIndexed { seconds: f64 },
    /// The merged tree holds this many nodes (flattening keeps only reachable ones).
    Flattened { entries: usize },
    /// The ext4 image is written.
    RootfsWritten { bytes: u64, seconds: f64 },
}

/// Wall time of each stage, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub resolve: f64,
    pub layers: f64,
    pub flatten: f64,
    pub rootfs: f64,
    pub store: f64,
    pub total: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{input}: {source}")]
    Flatten { input: String, source: FlattenError },
    #[error("{input}: {source}")]
    Ext4 { input: String, source: ext4::Ext4Error },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("output {} exists and is not a diskc output directory; remove it or pick another", .0.display())]
    OutputExists(PathBuf),
    #[error("{0}")]
    Plan(&'static str),
}

impl Classify for PipelineError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            PipelineError::Source(e) => e.error_kind(),
            PipelineError::Flatten { source, .. } => source.error_kind(),
            PipelineError::Ext4 { source, .. } => source.error_kind(),
            PipelineError::Boot(e) => e.error_kind(),
            PipelineError::Store(e) => e.error_kind(),
            PipelineError::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorKind::BadInput,
                _ => ErrorKind::Environment,
            },
            PipelineError::OutputExists(_) | PipelineError::Plan(_) => ErrorKind::Usage,
        }
    }
}
