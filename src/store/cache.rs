//! The conversion cache: a key naming a conversion's inputs (see the pipeline) mapped to the
//! image it produced, so the same conversion is answered from the store at once.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{ImageId, Store, StoreError};

impl Store {
    /// The image a conversion with this key produced, if it is still in the store.
    pub fn cache_get(&self, key: &str) -> Result<Option<ImageId>, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.upstream_cache_get(remote, key);
        }
        let path = self.cache_path(key);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let Ok(id) = text.trim().parse::<ImageId>() else { return Ok(None) };
        Ok(self.manifest_path(&id).exists().then_some(id))
    }

    /// Records that the conversion with this key produced `id`.
    pub fn cache_put(&self, key: &str, id: &ImageId) -> Result<(), StoreError> {
        if let Some(remote) = &self.upstream {
            return self.upstream_cache_put(remote, key, id);
        }
        let _lock = self.shared_lock()?;
        self.write_atomic_durable(&self.cache_path(key), format!("{id}\n").as_bytes())
    }

    /// Every cache entry, with the image it points at (none when unreadable).
    pub(super) fn cache_entries(&self) -> Result<Vec<(PathBuf, Option<ImageId>)>, StoreError> {
        let dir = self.root.join("cache");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            let target = fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
            out.push((path, target));
        }
        Ok(out)
    }
}
