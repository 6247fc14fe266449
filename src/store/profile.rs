//! Boot profiles: the rootfs chunks an image's first boot read before its program started,
//! in the order it read them, kept beside the image (`images/<id>.boot`: one chunk digest a line).
//! A later boot from a remote store fetches them before the VM starts, in one batch, instead
//! of one round trip per chunk as the guest asks; `pull --boot-first` fetches them first.
//!
//! The first boot's profile stays (a later boot never rewrites it). It goes with its image:
//! `rm` removes it, `gc` sweeps one whose image is gone, `push`/`pull` carry it. From a remote
//! store, the remote's profile is the one read and written; a copy stays in the local store
//! (`remote-images/<id>.boot`), so a warm boot asks the remote nothing.

use std::fs;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;

use super::{ImageId, Remote, Store, StoreError};
use crate::digest::Digest;

/// The remote object of an image's profile, beside its manifest.
pub(super) fn profile_key(id: &ImageId) -> String {
    format!("images/{id}.boot")
}

/// The file's bytes: one digest (`sha256:…`) a line.
fn encode(chunks: &[Digest]) -> Vec<u8> {
    chunks.iter().flat_map(|d| format!("{d}\n").into_bytes()).collect()
}

/// The digests of a profile; a line that is not one makes the profile unusable.
fn decode(id: &ImageId, bytes: &[u8]) -> Result<Vec<Digest>, StoreError> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .map(|line| {
            line.parse::<Digest>().map_err(|_| StoreError::CorruptManifest {
                id: id.to_string(),
                reason: format!("boot profile line {line:?} is not a chunk digest"),
            })
        })
        .collect()
}

impl Store {
    /// Where the local store keeps image `id`'s profile (a remote image's: its cached copy).
    pub(super) fn profile_path(&self, id: &ImageId) -> PathBuf {
        match self.upstream {
            Some(_) => self.root.join("remote-images").join(format!("{id}.boot")),
            None => self.root.join("images").join(format!("{id}.boot")),
        }
    }

    /// Image `id`'s boot profile, if it has one.
    pub fn boot_profile(&self, id: &ImageId) -> Result<Option<Vec<Digest>>, StoreError> {
        let path = self.profile_path(id);
        match fs::read(&path) {
            Ok(bytes) => return decode(id, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path, source: e }),
        }
        let Some(remote) = &self.upstream else { return Ok(None) };
        let Some(bytes) = remote.get(&profile_key(id))? else { return Ok(None) };
        let chunks = decode(id, &bytes)?;
        self.keep_profile_copy(id, &bytes)?;
        Ok(Some(chunks))
    }

    /// Records image `id`'s boot profile, unless it has one already (the first boot's
    /// stays); returns whether it was written.
    pub fn put_boot_profile(&self, id: &ImageId, chunks: &[Digest]) -> Result<bool, StoreError> {
        if chunks.is_empty() || self.boot_profile(id)?.is_some() {
            return Ok(false);
        }
        let bytes = encode(chunks);
        if let Some(remote) = &self.upstream {
            remote.put(&profile_key(id), Bytes::from(bytes.clone()))?;
            self.keep_profile_copy(id, &bytes)?;
        } else {
            let _lock = self.shared_lock()?;
            // A profile without its image would never be swept by rm.
            if !self.manifest_path(id).exists() {
                return Ok(false);
            }
            self.write_atomic_durable(&self.profile_path(id), &bytes)?;
        }
        Ok(true)
    }

    fn keep_profile_copy(&self, id: &ImageId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.profile_path(id);
        let dir = path.parent().expect("store paths have a parent");
        fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        self.write_atomic(&path, bytes)
    }

    /// Makes sure the local store holds the chunks of image `id`'s boot profile, fetching
    /// those it lacks from the upstream in one batch. Returns the profile's length in chunks
    /// (0 without one) and the bytes fetched.
    pub fn prefetch_boot(&self, id: &ImageId) -> Result<(usize, u64), StoreError> {
        let Some(chunks) = self.boot_profile(id)? else { return Ok((0, 0)) };
        let before = self.fetched_bytes();
        self.fetch_missing(&chunks)?;
        Ok((chunks.len(), self.fetched_bytes() - before))
    }

    /// Copies image `id`'s profile to `remote` (push), if there is one and it has none.
    pub(super) fn push_profile(&self, id: &ImageId, remote: &Remote) -> Result<(), StoreError> {
        let Some(chunks) = self.boot_profile(id)? else { return Ok(()) };
        if !remote.exists(&profile_key(id))? {
            remote.put(&profile_key(id), Bytes::from(encode(&chunks)))?;
        }
        Ok(())
    }

    /// The remote's profile of image `id` (pull), kept locally once the image is.
    pub(super) fn remote_profile(
        &self,
        id: &ImageId,
        remote: &Remote,
    ) -> Result<Option<Vec<Digest>>, StoreError> {
        match remote.get(&profile_key(id))? {
            Some(bytes) => decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a pulled profile beside the local image.
    pub(super) fn keep_pulled_profile(&self, id: &ImageId, chunks: &[Digest]) -> Result<(), StoreError> {
        self.write_atomic_durable(&self.root.join("images").join(format!("{id}.boot")), &encode(chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_kept_once_and_goes_with_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let rootfs = dir.path().join("rootfs");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        fs::write(&rootfs, &bytes).unwrap();
        let id = store.put_image(&rootfs, &[], Default::default()).unwrap();
        let chunks: Vec<Digest> =
            store.image(&id).unwrap().rootfs.file.chunks.iter().map(|c| c.digest).collect();
        assert_eq!(store.boot_profile(&id).unwrap(), None);
        assert!(store.put_boot_profile(&id, &chunks[..1]).unwrap());
        assert!(!store.put_boot_profile(&id, &chunks).unwrap(), "the first profile stays");
        assert_eq!(store.boot_profile(&id).unwrap(), Some(chunks[..1].to_vec()));
        assert_eq!(store.ids().unwrap(), [id], "a profile is not an image");

        fs::write(store.profile_path(&id), "not a digest\n").unwrap();
        assert!(store.boot_profile(&id).is_err());

        store.rm(&id.hex()).unwrap();
        assert!(!store.profile_path(&id).exists(), "rm takes the profile");
        assert!(!store.put_boot_profile(&id, &chunks).unwrap(), "no profile without its image");
        // One left behind (by an older diskc's rm) goes with the next gc.
        fs::write(store.profile_path(&id), encode(&chunks)).unwrap();
        store.gc().unwrap();
        assert!(!store.profile_path(&id).exists());
    }
}
