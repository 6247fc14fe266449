//! One face for every source: open it (cheap: manifest and config only), then read its
//! layers. The split is what lets the store answer a cache hit without reading a layer.

use std::path::Path;

use super::{open_local, LocalImage, ParsedConfig, ResolvedImage, SourceError, SourceRef};
use crate::layer::LayerIndex;

/// An image whose manifest and config are known and whose layers are not read yet.
pub trait ImageSource: Send {
    fn resolved(&self) -> &ResolvedImage;

    fn config(&self) -> &ParsedConfig;

    /// Reads, verifies and indexes every layer (bottom first), spooling file data into
    /// `spool_dir`. Returns the image as finally resolved: a stream learns its manifest
    /// digest only at its end.
    fn index_layers(
        self: Box<Self>,
        spool_dir: &Path,
    ) -> Result<(ResolvedImage, Vec<LayerIndex>), SourceError>;
}

impl ImageSource for LocalImage {
    fn resolved(&self) -> &ResolvedImage {
        &self.resolved
    }

    fn config(&self) -> &ParsedConfig {
        &self.config
    }

    fn index_layers(
        self: Box<Self>,
        spool_dir: &Path,
    ) -> Result<(ResolvedImage, Vec<LayerIndex>), SourceError> {
        let layers = LocalImage::index_layers(&self, spool_dir)?;
        Ok((self.resolved, layers))
    }
}

/// Opens `source`; `platform` picks among a multi-platform index.
pub fn open(source: &SourceRef, platform: &str) -> Result<Box<dyn ImageSource>, SourceError> {
    match source {
        SourceRef::Oci { .. } | SourceRef::OciArchive { .. } | SourceRef::DockerArchive { .. } => {
            Ok(Box::new(open_local(source, platform)?))
        }
        other => Err(SourceError::Invalid(super::InvalidSource {
            input: format!("{other:?}"),
            reason: "this transport is not supported yet".into(),
        })),
    }
}
