//! Incremental conversion: the lowest layers of an image that the store has saved (see
//! `store::layers`) are restored into their slots of the spool instead of being read again;
//! the layers above them are read, and saved in turn once the image is stored. A restored
//! layer is its entries and its spooled bytes exactly as they were, so the image comes out
//! byte for byte as a cold conversion makes it.
//!
//! A restored layer's data is not even copied: it stays in the store's saved file, the image
//! file is written around it, and the put reads it there (`store::RootfsView`), taking the
//! chunks of the image it was saved with wherever the saved chaining values of its MiBs say
//! they are the same. Only an output directory's image file gets the bytes, after the put.

use std::sync::Arc;

use rayon::prelude::*;

use super::PipelineError;
use crate::digest::Digest;
use crate::layer::{save_index, LayerIndex, SavedIndex, Spool, SpoolFile};
use crate::source::ResolvedImage;
use crate::store::{chain_ids, LaidLayer, LayerData, LayerValues, SavedLayer, Store, StoreError, Stored};

/// The image's lowest layers as restored: their indexes, bottom first, and the chaining
/// values saved with each.
#[derive(Default)]
pub(super) struct Restored {
    pub layers: Vec<LayerIndex>,
    pub values: Vec<Option<LayerValues>>,
}

/// The restored layers of settled `spools`, as laid into the image, with their saved
/// `values` where they lie where they lay when saved.
pub(super) fn laid_layers(spools: &[Arc<Spool>], values: Vec<Option<LayerValues>>) -> Vec<LaidLayer> {
    spools
        .iter()
        .zip(values)
        .filter_map(|(spool, values)| {
            let place = spool.placement()?;
            let data = spool.referred()?.clone();
            let values = values.filter(|v| v.at == place.at).map(|v| v.values).unwrap_or_default();
            Some(LaidLayer { at: place.at, len: place.len, data, dead: place.dead.clone(), values })
        })
        .collect()
}

/// Restores the longest run of the image's lowest layers that the store has saved, each into
/// the spool slot of its number, by reference (see the module's comment). A saved layer that
/// does not read back whole ends the run: it is read from the source like the layers above.
pub(super) fn restore_saved(
    store: &Store,
    resolved: &ResolvedImage,
    diff_ids: &[Digest],
    spool: &SpoolFile,
) -> Result<Restored, PipelineError> {
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
    let values = found.iter_mut().map(|(_, saved)| saved.values.take()).collect();
    let layers = found
        .into_par_iter()
        .zip(slots)
        .enumerate()
        .map(|(i, ((index, saved), writer))| {
            index
                .restore(Arc::new(saved.data), writer, resolved.layers[i].digest)
                .map_err(|source| spool_error(diff_ids[i], source))
        })
        .collect::<Result<_, _>>()?;
    Ok(Restored { layers, values })
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

    /// Saves the layers as used by the `stored` image, each with the chaining values of its
    /// MiBs where it lies (its settled `spools`, in the layers' order). They are a cache: the
    /// image is stored whatever happens here, so a failure is a warning, not the conversion's
    /// error.
    pub(super) fn save(self, store: &Store, stored: &Stored, spools: &[Arc<Spool>]) {
        if let Err(e) = self.try_save(store, stored, spools) {
            let id = &stored.id;
            tracing::warn!("the layers of image {id} are not saved for later conversions: {e}");
        }
    }

    fn try_save(self, store: &Store, stored: &Stored, spools: &[Arc<Spool>]) -> Result<(), StoreError> {
        for chain in &self.restored {
            store.use_layer(chain, &stored.id)?;
        }
        for ((chain, index, data), spool) in self.layers.into_iter().zip(spools) {
            store.save_layer(&chain, &index, data, &stored.id)?;
            // A cache of a cache: without them, a later put reads what they would spare it.
            if let Some(place) = spool.placement() {
                let span = place.at..place.at + place.len;
                let values = &stored.rootfs_values;
                if let Err(e) = store.save_layer_values(&chain, values, span, &place.dead) {
                    tracing::warn!("the values of saved layer {chain} are not kept: {e}");
                }
            }
        }
        Ok(())
    }
}
