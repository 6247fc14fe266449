//! Image sources: where an image comes from (the Docker daemon, an OCI layout or archive, a
//! docker-archive, a registry) and what it resolves to before any layer is read.

use crate::digest::Digest;

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

pub mod daemon;
pub mod registry;
