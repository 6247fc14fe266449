//! Saved layers: what a conversion learned about each layer (its index of entries, and its
//! file data as it spooled), kept so that a later image with the same lower layers reads only
//! the layers above them.
//!
//! A layer is saved under its chain id (containerd's: the diff_id of the bottom layer, then
//! `sha256(chain id below + " " + diff_id)`), since what a layer's entries mean depends on
//! every layer below it only through the merge, which the caller redoes; keying by the chain
//! rather than by the diff_id alone makes a match mean "this image starts like that one".
//!
//! ```text
//! layers/<chain id hex>/data           the layer's spooled bytes (sparse), written first
//! layers/<chain id hex>/index          its saved index (`layer::save_index`), written last:
//!                                      a directory without it is unfinished
//! layers/<chain id hex>/users/<id>     an empty file per stored image made with it
//! layers/<chain id hex>/values         the chaining values of its MiBs where it lay in the
//!                                      image that saved it (see `view`), optional
//! ```
//!
//! Saved layers are a cache: local only, never pushed, bounded (the least recently used go
//! first once their data passes [`DEFAULT_LIMIT`] or `DISKC_LAYER_CACHE_BYTES`), and
//! collected by `gc` with the images that use them. Losing one costs a read of the layer.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use blake3::hazmat::ChainingValue;

use super::atomic::{remove_if_present, temp_prefix};
use super::blocks::BLOCK;
use super::gc::GcReport;
use super::{ImageId, Store, StoreError};
use crate::digest::{Digest, Hasher};
use crate::fileio;

/// How many bytes of saved layers (their data as stored, sparse) the store keeps by default.
pub const DEFAULT_LIMIT: u64 = 16 << 30;

/// The environment variable that sets another bound, in bytes.
pub const LIMIT_VAR: &str = "DISKC_LAYER_CACHE_BYTES";

/// The chain ids of an image's layers, bottom first (containerd's `identity.ChainIDs`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let chain = match out.last() {
            None => *diff_id,
            Some(below) => {
                let mut h = Hasher::new();
                h.update(format!("{below} {diff_id}").as_bytes());
                h.finish()
            }
        };
        out.push(chain);
    }
    out
}

/// A layer as saved: its index bytes and its data, open, and its MiBs' values if saved.
pub struct SavedLayer {
    pub index: Vec<u8>,
    pub data: File,
    pub values: Option<LayerValues>,
}

/// The BLAKE3 chaining values of a layer's MiBs as they lay in an image from offset `at`
/// with nothing dead (see `view`); unknown where the image that saved them dropped data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerValues {
    pub at: u64,
    pub values: Vec<Option<ChainingValue>>,
}

const VALUES_MAGIC: &[u8; 16] = b"diskc-lvalues-1\n";

impl LayerValues {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 33 * self.values.len());
        out.extend_from_slice(VALUES_MAGIC);
        out.extend_from_slice(&self.at.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        for v in &self.values {
            out.push(u8::from(v.is_some()));
            out.extend_from_slice(&v.unwrap_or_default());
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    /// None for anything but what [`LayerValues::encode`] wrote.
    fn decode(bytes: &[u8]) -> Option<LayerValues> {
        let (body, check) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != check {
            return None;
        }
        let rest = body.strip_prefix(VALUES_MAGIC.as_slice())?;
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let (at, count) = (word(rest.get(..8)?), word(rest.get(8..16)?));
        let entries = rest.get(16..)?;
        if entries.len() as u64 != count.checked_mul(33)? {
            return None;
        }
        let values = entries
            .chunks_exact(33)
            .map(|e| (e[0] == 1).then(|| e[1..].try_into().expect("32 bytes")))
            .collect();
        Some(LayerValues { at, values })
    }
}

/// A layer's data being written, in the store's `tmp/` until [`Store::save_layer`].
pub struct LayerData {
    file: tempfile::NamedTempFile,
}

impl LayerData {
    pub fn file(&self) -> &File {
        self.file.as_file()
    }
}

impl Store {
    fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// The layer saved under `chain`, if the store has it whole. Marks it used.
    pub fn saved_layer(&self, chain: &Digest) -> Result<Option<SavedLayer>, StoreError> {
        let dir = self.layer_dir(chain);
        let index_path = dir.join("index");
        let index = match fs::read(&index_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path: index_path, source: e }),
        };
        let data_path = dir.join("data");
        let data = match File::open(&data_path) {
            Ok(file) => file,
            // Trimmed or collected between the two reads.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path: data_path, source: e }),
        };
        // The index's mtime is when the layer was last used: trimming goes by it.
        if let Ok(f) = File::options().write(true).open(&index_path) {
            let _ = f.set_modified(SystemTime::now());
        }
        let values = fs::read(dir.join("values")).ok().and_then(|b| LayerValues::decode(&b));
        Ok(Some(SavedLayer { index, data, values }))
    }

    /// Keeps with the layer saved under `chain` the chaining values of its MiBs as they lie
    /// in an image whose rootfs's MiBs have `image_values` (`Stored::rootfs_values`), at
    /// `place` (on a MiB), less the `dead` ranges (from the layer's start): a MiB holding any
    /// of those is unknown. Nothing is kept for a layer that has values already.
    pub fn save_layer_values(
        &self,
        chain: &Digest,
        image_values: &[ChainingValue],
        place: Range<u64>,
        dead: &[Range<u64>],
    ) -> Result<(), StoreError> {
        let dir = self.layer_dir(chain);
        let path = dir.join("values");
        if path.exists() || place.start % BLOCK != 0 {
            return Ok(());
        }
        let values = (place.start / BLOCK..place.end.div_ceil(BLOCK))
            .map(|mib| {
                let within = mib * BLOCK - place.start..(mib + 1) * BLOCK - place.start;
                let clean = mib * BLOCK + BLOCK <= place.end
                    && !dead.iter().any(|d| d.start < within.end && within.start < d.end);
                clean.then(|| image_values.get(mib as usize).copied()).flatten()
            })
            .collect();
        let _lock = self.shared_lock()?;
        if dir.join("index").exists() {
            self.write_atomic_durable(&path, &LayerValues { at: place.start, values }.encode())?;
        }
        Ok(())
    }

    /// A temp file in the store for a layer's data, to fill and hand to [`Store::save_layer`].
    pub fn layer_data(&self) -> Result<LayerData, StoreError> {
        let tmp = self.tmp_dir();
        let file = tempfile::Builder::new()
            .prefix(&temp_prefix("layer"))
            .tempfile_in(&tmp)
            .map_err(StoreError::io(&tmp))?;
        Ok(LayerData { file })
    }

    /// Saves a layer under `chain` (its index and data) as used by stored image `image`;
    /// a layer saved already only gets the user. Then trims the saved layers to their bound.
    pub fn save_layer(
        &self,
        chain: &Digest,
        index: &[u8],
        data: LayerData,
        image: &ImageId,
    ) -> Result<(), StoreError> {
        {
            let _lock = self.shared_lock()?;
            let dir = self.add_layer_user(chain, image)?;
            if !dir.join("index").exists() {
                // Data first, index last: a layer whose index is there is whole. Two savers
                // of one chain write the same bytes, so the later rename changes nothing.
                let data_path = dir.join("data");
                data.file
                    .persist(&data_path)
                    .map_err(|e| StoreError::Io { path: data_path, source: e.error })?;
                self.write_atomic_durable(&dir.join("index"), index)?;
            }
        }
        self.trim_layers(limit())
    }

    /// Records that stored image `image` was made with the layer saved under `chain`, so gc
    /// keeps the layer while the image is there.
    pub fn use_layer(&self, chain: &Digest, image: &ImageId) -> Result<(), StoreError> {
        let _lock = self.shared_lock()?;
        self.add_layer_user(chain, image).map(drop)
    }

    /// The stored image made most recently with the layer saved under `chain`: the likeliest
    /// to share the most with a new image on the same layers (see [`Store::put_image_like`]).
    pub fn newest_layer_user(&self, chain: &Digest) -> Option<ImageId> {
        let users = self.layer_dir(chain).join("users");
        fileio::read_dir_quietly(&users)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| {
                let id = name.to_str()?.parse::<ImageId>().ok()?;
                let made = fs::metadata(users.join(&name)).and_then(|m| m.modified()).ok()?;
                self.manifest_path(&id).exists().then_some((made, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    fn add_layer_user(&self, chain: &Digest, image: &ImageId) -> Result<PathBuf, StoreError> {
        let dir = self.layer_dir(chain);
        let users = dir.join("users");
        fs::create_dir_all(&users).map_err(StoreError::io(&users))?;
        let user = users.join(image.to_string());
        File::create(&user).map_err(StoreError::io(&user))?;
        Ok(dir)
    }

    /// The saved layers, each with its size on disk and when it was last used.
    fn saved_layers(&self) -> Result<Vec<(PathBuf, u64, SystemTime)>, StoreError> {
        let root = self.root.join("layers");
        let entries = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Io { path: root, source: e }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let dir = entry.map_err(StoreError::io(&root))?.path();
            let index = fs::metadata(dir.join("index")).ok();
            let used = index.as_ref().and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
            let bytes =
                fs::metadata(dir.join("data")).map_or(0, |m| m.blocks() * 512) + index.map_or(0, |m| m.len());
            out.push((dir, bytes, used));
        }
        Ok(out)
    }

    /// Removes the least recently used saved layers until the rest fit in `limit` bytes.
    fn trim_layers(&self, limit: u64) -> Result<(), StoreError> {
        let _lock = self.shared_lock()?;
        let mut layers = self.saved_layers()?;
        let mut total: u64 = layers.iter().map(|l| l.1).sum();
        layers.sort_by_key(|l| l.2);
        for (dir, bytes, _) in layers {
            if total <= limit {
                break;
            }
            remove_layer(&dir)?;
            total -= bytes;
        }
        Ok(())
    }

    /// For gc, with the lock held alone: forgets users that are no longer stored images and
    /// removes the saved layers no stored image uses (or that were never finished).
    pub(super) fn sweep_layers(
        &self,
        ids: &BTreeSet<ImageId>,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        for (dir, bytes, _) in self.saved_layers()? {
            let users = dir.join("users");
            let mut used = false;
            for name in fileio::read_dir_quietly(&users).unwrap_or_default() {
                if name.to_str().and_then(|n| n.parse::<ImageId>().ok()).is_some_and(|id| ids.contains(&id)) {
                    used = true;
                } else {
                    remove_if_present(&users.join(name))?;
                }
            }
            if !used || !dir.join("index").exists() {
                remove_layer(&dir)?;
                report.stale_entries_removed += 1;
                report.bytes_freed += bytes;
            }
        }
        Ok(())
    }
}

/// The bound on saved layers: `DISKC_LAYER_CACHE_BYTES`, else [`DEFAULT_LIMIT`].
fn limit() -> u64 {
    std::env::var(LIMIT_VAR).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_LIMIT)
}

/// Removes a saved layer: its index first, so that it stops being found at once.
fn remove_layer(dir: &Path) -> Result<(), StoreError> {
    remove_if_present(&dir.join("index"))?;
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::Io { path: dir.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_are_containerds() {
        // containerd's identity package: ChainID(a, b) = sha256("sha256:a sha256:b").
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a, b]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert_eq!(chain_ids(&[]), Vec::<Digest>::new());
    }

    #[test]
    fn layer_values_round_trip_and_damage_is_refused() {
        let values = LayerValues { at: 3 << 20, values: vec![Some([7; 32]), None, Some([9; 32])] };
        let bytes = values.encode();
        assert_eq!(LayerValues::decode(&bytes), Some(values));
        for at in [0, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut broken = bytes.clone();
            broken[at] ^= 1;
            assert_eq!(LayerValues::decode(&broken), None, "byte {at} flipped");
        }
        assert_eq!(LayerValues::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(LayerValues::decode(&[]), None);
    }
}
