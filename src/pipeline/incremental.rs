//! Incremental conversion: the lowest layers of an image that the store has saved (see
//! `store::layers`) are restored into their slots of the spool instead of being read again;
//! the layers above them are read, and saved in turn once the image is stored. A restored
//! layer is its entries and its spooled bytes exactly as they were, so the image comes out
//! byte for byte as a cold conversion makes it.

use rayon::prelude::*;

use super::PipelineError;
use crate::digest::Digest;
use crate::layer::{save_index, LayerIndex, SavedIndex, SpoolFile};
use crate::source::ResolvedImage;
use crate::store::{chain_ids, ImageId, LayerData, SavedLayer, Store, StoreError};

/// Restores the longest run of the image's lowest layers that the store has saved, each into
/// the spool slot of its number; returns them, bottom first. A saved layer that does not
/// read back whole ends the run: it is read from the source like the layers above.
pub(super) fn restore_saved(
    store: &Store,
    resolved: &ResolvedImage,
    diff_ids: &[Digest],
    spool: &SpoolFile,
) -> Result<Vec<LayerIndex>, PipelineError> {
    let mut found: Vec<(SavedIndex, SavedLayer)> = Vec::new();
    // As many layers as both the manifest and the config list (a source checks they agree).
    let layers = diff_ids.len().min(resolved.layers.len());
    for (chain, diff_id) in chain_ids(&diff_ids[..layers]).iter().zip(diff_ids) {
        let Some(saved) = store.saved_layer(chain)? else { break };
        match SavedIndex::read(&saved.index, &saved.data) {
            Ok(index) if index.diff_id() == *diff_id => found.push((index, saved)),
            Ok(_) => break,
            Err(e) => {
                tracing::warn!("saved layer {chain}: {e}; reading the layer instead");
                break;
            }
        }
    }
    let slots = diff_ids[..found.len()]
        .iter()
        .enumerate()
        .map(|(i, &diff_id)| spool.slot(i as u32).map_err(|source| spool_error(diff_id, source)))
        .collect::<Result<Vec<_>, _>>()?;
    found
        .into_par_iter()
        .zip(slots)
        .enumerate()
        .map(|(i, ((index, saved), writer))| {
            index
                .restore(&saved.data, writer, resolved.layers[i].digest)
                .map_err(|source| spool_error(diff_ids[i], source))
        })
        .collect()
}

fn spool_error(diff_id: Digest, source: std::io::Error) -> PipelineError {
    PipelineError::Io { what: "restoring saved layer", path: diff_id.to_string().into(), source }
}

/// Layers read by this conversion, their data copied aside before the spool is settled
/// (settling drops what the image does not keep), to be saved once the image is stored.
pub(super) struct ToSave {
    /// The chain ids of the layers restored: they get the new image as a user.
    restored: Vec<Digest>,
    layers: Vec<(Digest, Vec<u8>, LayerData)>,
}

impl ToSave {
    /// Copies aside the layers of `read`, which are the image's layers from number `first`
    /// up (those below were restored).
    pub(super) fn copy(
        store: &Store,
        diff_ids: &[Digest],
        first: usize,
        read: &[LayerIndex],
    ) -> Result<ToSave, PipelineError> {
        let chains = chain_ids(diff_ids);
        let mut files = Vec::with_capacity(read.len());
        for _ in read {
            files.push(store.layer_data()?);
        }
        let layers = read
            .par_iter()
            .zip(files)
            .enumerate()
            .map(|(i, (layer, data))| {
                layer.save_data(data.file()).map_err(|source| PipelineError::Io {
                    what: "saving layer",
                    path: layer.diff_id.to_string().into(),
                    source,
                })?;
                Ok((chains[first + i], save_index(layer), data))
            })
            .collect::<Result<_, PipelineError>>()?;
        Ok(ToSave { restored: chains[..first].to_vec(), layers })
    }

    /// Saves the layers as used by the stored image `id`. They are a cache: the image is
    /// stored whatever happens here, so a failure is a warning, not the conversion's error.
    pub(super) fn save(self, store: &Store, id: &ImageId) {
        if let Err(e) = self.try_save(store, id) {
            tracing::warn!("the layers of image {id} are not saved for later conversions: {e}");
        }
    }

    fn try_save(self, store: &Store, id: &ImageId) -> Result<(), StoreError> {
        for chain in &self.restored {
            store.use_layer(chain, id)?;
        }
        for (chain, index, data) in self.layers {
            store.save_layer(&chain, &index, data, id)?;
        }
        Ok(())
    }
}
