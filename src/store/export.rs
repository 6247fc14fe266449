//! Reading images back: a manifest, checked against its id; chunks, checked against their
//! digests; a whole stored file written out byte-identical and sparse.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use rayon::prelude::*;

use super::{ChunkRef, ImageId, Store, StoreError, StoredFile, StoredImage};
use crate::digest::Digest;
use crate::fileio;

impl Store {
    /// The manifest of an image.
    pub fn image(&self, id: &ImageId) -> Result<StoredImage, StoreError> {
        if let Some(remote) = &self.upstream {
            return parse_manifest(id, &self.upstream_manifest(remote, id)?);
        }
        let remembered = |image: StoredImage| {
            *self.last_image.lock().expect("never poisoned") = Some((*id, image.clone()));
            image
        };
        let path = self.manifest_path(id);
        if let Some((last, image)) = &*self.last_image.lock().expect("never poisoned") {
            if last == id && path.exists() {
                return Ok(image.clone());
            }
        }
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_string()))
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        parse_manifest(id, &bytes).map(remembered)
    }

    /// Writes the image's rootfs to `out`, byte-identical to what was stored and sparse:
    /// holes and all-zero blocks are not written.
    pub fn export_rootfs(&self, id: &ImageId, out: &Path) -> Result<(), StoreError> {
        let manifest = self.image(id)?;
        self.export_stored(&manifest.rootfs.file, out)
    }

    /// Writes one of the image's boot files (`kernel`, `initrd`) to `out`.
    pub fn export_file(&self, id: &ImageId, name: &str, out: &Path) -> Result<(), StoreError> {
        let manifest = self.image(id)?;
        let file = manifest.files.get(name).ok_or_else(|| StoreError::NoSuchFile {
            id: *id,
            name: name.to_string(),
            available: manifest.files.keys().cloned().collect(),
        })?;
        self.export_stored(file, out)
    }

    fn export_stored(&self, stored: &StoredFile, out: &Path) -> Result<(), StoreError> {
        let _lock = self.shared_lock()?;
        // From a remote store: the chunks the local store lacks, in one go.
        let digests: Vec<Digest> = stored.chunks.iter().map(|c| c.digest).collect();
        self.fetch_missing(&digests)?;
        self.refresh_packs()?;
        let file = File::create(out).map_err(StoreError::io(out))?;
        file.set_len(stored.size).map_err(StoreError::io(out))?;
        stored.chunks.par_iter().try_for_each(|chunk| {
            let data = self.read_local_chunk(chunk)?;
            fileio::write_sparse(&file, &data, chunk.offset).map_err(StoreError::io(out))
        })
    }

    /// A chunk's bytes, checked against its digest, under the store's shared lock (so that
    /// gc cannot drop its pack between finding and reading it): one chunk as a reader that
    /// needs a few (an NBD export) fetches it.
    pub fn fetch_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        let _lock = self.shared_lock()?;
        self.read_chunk(chunk)
    }

    /// A chunk's bytes from the local store, checked against its digest.
    pub(super) fn read_local_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        let compressed = self.read_frame(&chunk.digest)?;
        let data = decode_chunk(&chunk.digest, &compressed)?;
        if data.len() as u64 != chunk.size {
            return Err(StoreError::CorruptChunk {
                digest: chunk.digest,
                reason: format!("holds {} bytes, the manifest says {}", data.len(), chunk.size),
            });
        }
        Ok(data)
    }
}

/// Decompresses a stored manifest, checks that it hashes to `id` and parses it.
pub(super) fn parse_manifest(id: &ImageId, compressed: &[u8]) -> Result<StoredImage, StoreError> {
    let damaged = |reason: String| StoreError::CorruptManifest { id: id.to_string(), reason };
    let bytes =
        zstd::stream::decode_all(compressed).map_err(|e| damaged(format!("does not decompress: {e}")))?;
    let manifest: StoredImage = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    if manifest.id() != *id {
        return Err(damaged("its content does not hash to its id".into()));
    }
    Ok(manifest)
}

/// Decompresses a chunk file and checks that the bytes hash to `digest`.
pub(super) fn decode_chunk(digest: &Digest, compressed: &[u8]) -> Result<Vec<u8>, StoreError> {
    let damaged = |reason: String| StoreError::CorruptChunk { digest: *digest, reason };
    let data =
        zstd::stream::decode_all(compressed).map_err(|e| damaged(format!("does not decompress: {e}")))?;
    if Digest::of(&data) != *digest {
        return Err(damaged("its bytes hash to another digest".into()));
    }
    Ok(data)
}
