//! A boot profile from the boot's side (the store keeps it, see `store::profile`): before
//! the VM starts, the chunks the image's first boot read until its program started are
//! fetched in one batch; a boot of an image without a profile records one, the chunks its VM
//! first read up to the program's first output (the moment `diskc boot` measures as the
//! program having started).

use std::time::Instant;

use serde::Serialize;

use crate::nbd::export::unix_ms;
use crate::store::{ImageId, Store};

/// What the boot did with the image's profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileUse {
    /// The image had one: its chunks were fetched first (from a remote store) or were there.
    Used,
    /// The image had none: this boot's became it.
    Recorded,
    /// Neither (an OUTDIR, or a boot that read nothing before it ended).
    None,
}

/// The profile's chunks fetched before the VM starts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prefetched {
    /// The profile's length; 0 when the image has none.
    pub chunks: usize,
    pub bytes: u64,
    /// Fetches made for it: 1 when anything was missing, else 0.
    pub fetches: u64,
}

/// Fetches the chunks of image `id`'s profile the local store lacks, in one batch. A profile
/// that cannot be read or fetched is skipped with a warning: the guest then fetches what it
/// reads, as without one.
pub fn prefetch(store: &Store, id: &ImageId) -> Prefetched {
    let fetches = store.fetches();
    match store.prefetch_boot(id) {
        Ok((chunks, bytes)) => Prefetched { chunks, bytes, fetches: store.fetches() - fetches },
        Err(e) => {
            tracing::warn!("image {}: boot profile skipped: {e}", id.short());
            Prefetched::default()
        }
    }
}

/// Records `read` (indexes into the rootfs's chunk list, in the order read) as image `id`'s
/// profile; whether it was written.
pub fn record(store: &Store, id: &ImageId, read: &[usize]) -> bool {
    let written = store.image(id).and_then(|image| {
        let chunks = &image.rootfs.file.chunks;
        let digests: Vec<_> = read.iter().filter_map(|&i| chunks.get(i)).map(|c| c.digest).collect();
        store.put_boot_profile(id, &digests)
    });
    written.unwrap_or_else(|e| {
        tracing::warn!("image {}: boot profile not recorded: {e}", id.short());
        false
    })
}

/// `at` on the clock the disk server stamps reads with (milliseconds since the epoch).
pub fn unix_ms_at(at: Instant) -> u64 {
    unix_ms().saturating_sub(at.elapsed().as_millis() as u64)
}
