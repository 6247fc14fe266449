//! Image sources: where an image comes from (the Docker daemon, an OCI layout or archive, a
//! docker-archive, a registry) and what it resolves to before any layer is read.
//!
//! Every source ends in the same two values: a [`ResolvedImage`] (manifest, config, layer
//! descriptors; enough for a cache key) and the layers indexed by [`crate::layer`]. Local
//! files are read in place: an archive is indexed once for where its members are, then its
//! layers are read in parallel straight from the archive file. A `docker save` stream, which
//! can only be read once and in order, is handled by `source::stream`.

use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};
use crate::layer::LayerError;

pub mod daemon;
pub(crate) mod engine_layers;
pub(crate) mod local;
pub(crate) mod open;
pub mod reference;
pub mod registry;
pub mod spec;
pub(crate) mod stream;

pub use local::{open_local, LocalImage};
pub use open::{open, ImageSource};
pub use reference::{InvalidSource, RegistryRef, RegistryTag, SourceRef};
pub use spec::{parse_config, platform_matches, ParsedConfig, DEFAULT_PLATFORM};
pub use stream::{read_image_stream, StreamedImage};

/// How the layers of an image in the Docker daemon are read, and why: from the Engine's own
/// layer directories, or from its `docker save` stream when those cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonLayers {
    /// `engine-directories` or `docker-save`.
    pub path: String,
    pub reason: String,
}

/// One layer blob as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDescriptor {
    pub digest: Digest,
    /// e.g. `application/vnd.oci.image.layer.v1.tar+gzip`; empty when the source has none
    /// (a docker-archive's `layer.tar`).
    pub media_type: String,
    /// Compressed size in bytes, when known.
    pub size: Option<u64>,
}

/// An image resolved to its manifest and config, before any layer is read. Enough to form
/// a cache key and to know what to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Digest of the manifest the layers were listed in, when the source has one.
    pub manifest_digest: Option<Digest>,
    pub config_digest: Digest,
    /// The raw config blob, already verified against `config_digest`.
    pub config_json: Vec<u8>,
    /// Bottom layer first.
    pub layers: Vec<LayerDescriptor>,
    /// `os/arch[/variant]`.
    pub platform: String,
}

/// Why an image could not be read from a local source. Each names the input (the archive
/// or directory) and what in it is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Invalid(#[from] InvalidSource),
    #[error("{input}: no such file or directory")]
    NotFound { input: String },
    #[error("{input}: cannot read {path}: {source}")]
    Io { input: String, path: String, source: std::io::Error },
    #[error("{input}: {problem}")]
    Corrupt { input: String, problem: String },
    #[error("{input}: the manifest names {what}, which is not there")]
    MissingBlob { input: String, what: String },
    #[error("{input}: {problem}")]
    NoImage { input: String, problem: String },
    #[error("{input}: {source}")]
    Layer { input: String, source: LayerError },
    #[error("no image for platform {wanted}: the image is for {have}")]
    WrongPlatform { wanted: String, have: String },
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

impl Classify for SourceError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            SourceError::Invalid(e) => e.error_kind(),
            SourceError::Io { source, .. } => ErrorKind::of_io(source),
            SourceError::Layer { source, .. } => source.error_kind(),
            SourceError::Daemon(e) => e.error_kind(),
            SourceError::Registry(e) => e.error_kind(),
            SourceError::NotFound { .. }
            | SourceError::Corrupt { .. }
            | SourceError::MissingBlob { .. }
            | SourceError::NoImage { .. }
            | SourceError::WrongPlatform { .. } => ErrorKind::BadInput,
        }
    }
}
