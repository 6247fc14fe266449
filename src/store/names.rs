//! Which images the store holds and what they are called: ids, names, resolving what a user
//! typed (a name or an id prefix), tagging, listing and removing.
//!
//! Names are read as docker reads them (`hello` is `hello:latest`, through
//! [`with_default_tag`]), and removal works as `docker rmi`: removing a name removes the
//! image only when it was the image's last name; removing by id removes the image and its
//! names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::time::UNIX_EPOCH;

use super::atomic::remove_if_present;
use super::{ImageId, Store, StoreError};
use crate::digest::Digest;
use crate::fileio;
use crate::source::reference::with_default_tag;

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

/// What `rm` did: the names it removed, and whether the image went with them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Removed {
    pub id: ImageId,
    pub untagged: Vec<String>,
    /// The image itself was removed (its chunks go at the next gc).
    pub deleted: bool,
}

/// What the store keeps beside an image's manifest (`images/<id>.<suffix>`), removed with it:
/// its boot profile (`profile`) and its rootfs's block map (`blocks`).
const SIDE_FILES: [&str; 2] = ["boot", "blocks"];

impl Store {
    /// The image an unambiguous id prefix (optionally `sha256:`-prefixed) or a name refers to.
    /// A name wins over an id prefix that happens to spell it.
    pub fn resolve(&self, reference: &str) -> Result<ImageId, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.upstream_resolve(remote, reference);
        }
        if let Some((_, id)) = self.resolve_name(reference)? {
            return Ok(id);
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

    /// The name `reference` spells (read with the default tag), and the image it points at;
    /// `None` when no such name is in the store.
    fn resolve_name(&self, reference: &str) -> Result<Option<(String, ImageId)>, StoreError> {
        if validate_name(reference).is_err() {
            return Ok(None);
        }
        // A name stored before names had a default tag is found as it was typed.
        let mut spellings = vec![with_default_tag(reference)];
        if spellings[0] != reference {
            spellings.push(reference.to_string());
        }
        for name in spellings {
            let path = self.name_path(&name);
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let id = text.trim().parse::<ImageId>().map_err(|e| StoreError::CorruptManifest {
                        id: reference.to_string(),
                        reason: format!("name file {} holds {e}", path.display()),
                    })?;
                    return Ok(Some((name, id)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        Ok(None)
    }

    /// Every image id in the store, sorted.
    pub fn ids(&self) -> Result<Vec<ImageId>, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.upstream_ids(remote);
        }
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
        if let Some(remote) = &self.upstream {
            return self.upstream_names(remote);
        }
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

    /// Points `name` (read with the default tag) at the image `reference` resolves to
    /// (moving it if it pointed elsewhere).
    pub fn tag(&self, reference: &str, name: &str) -> Result<ImageId, StoreError> {
        validate_name(name).map_err(|reason| StoreError::InvalidName { name: name.to_string(), reason })?;
        let name = with_default_tag(name);
        let id = self.resolve(reference)?;
        if let Some(remote) = &self.upstream {
            self.upstream_tag(remote, &id, &name)?;
            return Ok(id);
        }
        let _lock = self.shared_lock()?;
        self.write_atomic_durable(&self.name_path(&name), format!("{id}\n").as_bytes())?;
        Ok(id)
    }

    /// Removes what `reference` names, as `docker rmi` does: a name goes alone, and takes the
    /// image with it when it was the image's last name; an id removes the image with every
    /// name. Cache entries pointing at a removed image go too; its chunks stay until `gc`.
    pub fn rm(&self, reference: &str) -> Result<Removed, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.upstream_rm(remote, reference);
        }
        let _lock = self.shared_lock()?;
        let names_of = |id: &ImageId| -> Result<Vec<String>, StoreError> {
            Ok(self.names_by_id()?.remove(id).unwrap_or_default())
        };
        let (id, untagged) = match self.resolve_name(reference)? {
            Some((name, id)) => (id, vec![name]),
            None => {
                let id = self.resolve(reference)?;
                (id, names_of(&id)?)
            }
        };
        for name in &untagged {
            remove_if_present(&self.name_path(name))?;
        }
        if !names_of(&id)?.is_empty() {
            return Ok(Removed { id, untagged, deleted: false });
        }
        self.delete_image(&id)?;
        Ok(Removed { id, untagged, deleted: true })
    }

    /// Removes an image's manifest and the cache entries that point at it.
    fn delete_image(&self, id: &ImageId) -> Result<(), StoreError> {
        let id = *id;
        for (path, target) in self.cache_entries()? {
            if target == Some(id) {
                remove_if_present(&path)?;
            }
        }
        remove_if_present(&self.manifest_path(&id))?;
        for suffix in SIDE_FILES {
            remove_if_present(&self.root.join("images").join(format!("{id}.{suffix}")))?;
        }
        let images = self.root.join("images");
        fileio::sync_path(&images).map_err(StoreError::io(&images))
    }

    /// Files beside manifests whose image is gone (removed by a diskc that did not know
    /// them, or killed between two removals); returns how many were removed.
    pub(super) fn sweep_side_files(&self, ids: &BTreeSet<ImageId>) -> Result<u64, StoreError> {
        let dir = self.root.join("images");
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let name = entry.file_name();
            let Some((hex, suffix)) = name.to_str().and_then(|n| n.split_once('.')) else { continue };
            let Ok(id) = hex.parse::<ImageId>() else { continue };
            if SIDE_FILES.contains(&suffix) && !ids.contains(&id) {
                remove_if_present(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// One summary per image, oldest first.
    pub fn ls(&self) -> Result<Vec<ImageSummary>, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.upstream_ls(remote);
        }
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
            let manifest = self.image(&id)?;
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

pub(super) fn decode_name(file_name: &str) -> Option<String> {
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
