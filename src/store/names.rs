//! Which images the store holds and what they are called: ids, names, resolving what a user
//! typed (a name or an id prefix), tagging, listing and removing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::time::UNIX_EPOCH;

use super::atomic::remove_if_present;
use super::{ImageId, Store, StoreError};
use crate::digest::Digest;
use crate::fileio;

/// One line of `diskc ls`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageSummary {
    pub id: ImageId,
    pub names: Vec<String>,
    /// Logical size of the rootfs.
    pub size: u64,
    /// Bytes on disk of the manifest and every distinct chunk the image references (shared
    /// chunks count for every image that uses them).
    pub stored_size: u64,
    /// When the image entered the store, seconds since the epoch (the manifest's mtime).
    pub created: u64,
}

impl Store {
    /// The image an unambiguous id prefix (optionally `sha256:`-prefixed) or a name refers to.
    /// A name wins over an id prefix that happens to spell it.
    pub fn resolve(&self, reference: &str) -> Result<ImageId, StoreError> {
        if validate_name(reference).is_ok() {
            let path = self.name_path(reference);
            match fs::read_to_string(&path) {
                Ok(text) => {
                    return text.trim().parse::<ImageId>().map_err(|e| StoreError::CorruptManifest {
                        id: reference.to_string(),
                        reason: format!("name file {} holds {e}", path.display()),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(StoreError::NotFound(reference.to_string()));
        }
        let matches: Vec<ImageId> =
            self.ids()?.into_iter().filter(|id| id.hex().starts_with(prefix)).collect();
        match matches.as_slice() {
            [] => Err(StoreError::NotFound(reference.to_string())),
            [id] => Ok(*id),
            many => Err(StoreError::Ambiguous {
                prefix: reference.to_string(),
                candidates: many.iter().map(|id| id.short()).collect(),
            }),
        }
    }

    /// Every image id in the store, sorted.
    pub fn ids(&self) -> Result<Vec<ImageId>, StoreError> {
        let dir = self.root.join("images");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json.zst")) else { continue };
            if let Ok(id) = hex.parse::<ImageId>() {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every name, with the id it points at.
    pub fn names(&self) -> Result<BTreeMap<String, ImageId>, StoreError> {
        let dir = self.root.join("names");
        let mut names = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let Some(name) = entry.file_name().to_str().and_then(decode_name) else { continue };
            let text = match fs::read_to_string(entry.path()) {
                Ok(text) => text,
                // Removed by a concurrent rm since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io { path: entry.path(), source: e }),
            };
            if let Ok(id) = text.trim().parse() {
                names.insert(name, id);
            }
        }
        Ok(names)
    }

    pub(super) fn names_by_id(&self) -> Result<BTreeMap<ImageId, Vec<String>>, StoreError> {
        let mut by_id: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
        for (name, id) in self.names()? {
            by_id.entry(id).or_default().push(name);
        }
        Ok(by_id)
    }

    /// Points `name` at the image `reference` resolves to (moving it if it pointed
    /// elsewhere).
    pub fn tag(&self, reference: &str, name: &str) -> Result<ImageId, StoreError> {
        validate_name(name).map_err(|reason| StoreError::InvalidName { name: name.to_string(), reason })?;
        let _lock = self.shared_lock()?;
        let id = self.resolve(reference)?;
        self.write_atomic_durable(&self.name_path(name), format!("{id}\n").as_bytes())?;
        Ok(id)
    }

    /// Removes the image `reference` resolves to, with every name and cache entry pointing
    /// at it. Its chunks stay until `gc`. Returns the id and the names removed.
    pub fn rm(&self, reference: &str) -> Result<(ImageId, Vec<String>), StoreError> {
        let _lock = self.shared_lock()?;
        let id = self.resolve(reference)?;
        let names = self.names_by_id()?.remove(&id).unwrap_or_default();
        for name in &names {
            remove_if_present(&self.name_path(name))?;
        }
        for (path, target) in self.cache_entries()? {
            if target == Some(id) {
                remove_if_present(&path)?;
            }
        }
        remove_if_present(&self.manifest_path(&id))?;
        let images = self.root.join("images");
        fileio::sync_path(&images).map_err(StoreError::io(&images))?;
        Ok((id, names))
    }

    /// One summary per image, oldest first.
    pub fn ls(&self) -> Result<Vec<ImageSummary>, StoreError> {
        self.refresh_packs()?;
        let mut names = self.names_by_id()?;
        let mut out = Vec::new();
        for id in self.ids()? {
            let path = self.manifest_path(&id);
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::Io { path, source: e }),
            };
            let manifest = self.manifest(&id)?;
            let digests: BTreeSet<Digest> = manifest.chunks().map(|c| c.digest).collect();
            let chunk_bytes: u64 = digests.iter().filter_map(|d| self.stored_chunk_len(d)).sum();
            let created = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            out.push(ImageSummary {
                id,
                names: names.remove(&id).unwrap_or_default(),
                size: manifest.rootfs.file.size,
                stored_size: meta.len() + chunk_bytes,
                created,
            });
        }
        out.sort_by_key(|a| (a.created, a.id));
        Ok(out)
    }
}

/// A name is 1 to 255 bytes of printable text without spaces; a full image id is not a
/// name, so that an id always means itself.
fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("a name is 1 to 255 bytes long");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a name holds no spaces or control characters");
    }
    if name.parse::<ImageId>().is_ok() {
        return Err("a name cannot be an image id");
    }
    Ok(())
}

/// A name as a file name: bytes outside `[A-Za-z0-9_-]` become `%XX`.
pub(super) fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_name(file_name: &str) -> Option<String> {
    let bytes = file_name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = file_name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_to_safe_file_names_and_back() {
        for name in ["app:latest", "registry.example/team/app:1.0", "..", "ünïcode", "a%b"] {
            let encoded = encode_name(name);
            assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)), "{encoded}");
            assert_eq!(decode_name(&encoded).as_deref(), Some(name));
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("app:latest").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }
}
