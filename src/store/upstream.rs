//! A store opened at a URL (`--store s3://BUCKET/PREFIX`, `file:///PATH`): the remote is
//! the store, and the local store caches it.
//!
//! - Images, names and conversion-cache entries are the remote's: listed, read and written
//!   there (`images/`, `names/`, `cache/` objects, see `remote`).
//! - What was fetched stays in the local store: manifests under `remote-images/` (a manifest
//!   hashes to its id, so a cached one is valid forever), pack indexes under `remote-index/`,
//!   chunks in the local packs. Chunks are fetched only when read and only those the local
//!   store lacks, as coalesced byte ranges of the remote's packs ([`Store::fetch_missing`]).
//!   They stay until a local `gc`, which drops chunks no local image references.
//! - A write (convert, build, store-put) lands in the local store as always, then goes to the
//!   remote as a push does: packs, then the manifest, then the names.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use tokio::runtime::Handle;

use super::names::{encode_name, ImageSummary, Removed};
use super::remote::{is_remote, Remote};
use super::transfer::{manifest_key, resolve_remote, Condemned, RemoteChunks};
use super::{ChunkRef, ImageId, Store, StoreError, StoredImage};
use crate::digest::Digest;

/// Where a store is: a directory, or a remote store read through the local one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    /// `s3://BUCKET[/PREFIX]` or `file:///PATH`.
    Remote(String),
}

impl From<PathBuf> for StoreLocation {
    /// A URL (`s3://`, `file://`) is a remote store; anything else a directory.
    fn from(path: PathBuf) -> StoreLocation {
        match path.to_str() {
            Some(text) if is_remote(text) => StoreLocation::Remote(text.to_string()),
            _ => StoreLocation::Dir(path),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Dir(path) => write!(f, "{}", path.display()),
            StoreLocation::Remote(url) => f.write_str(url),
        }
    }
}

impl StoreLocation {
    /// `DISKC_STORE` (a directory or a URL), else the local store's default directory.
    pub fn from_env() -> StoreLocation {
        match std::env::var_os("DISKC_STORE").filter(|v| !v.is_empty()) {
            Some(value) => StoreLocation::from(PathBuf::from(value)),
            None => StoreLocation::Dir(Store::default_root()),
        }
    }

    /// Opens the store: a directory (created if absent), or a remote one in front of the
    /// local store at [`Store::default_root`]. A remote's requests run on `rt`.
    pub fn open(&self, rt: &Handle) -> Result<Store, StoreError> {
        match self {
            StoreLocation::Dir(path) => Store::open(path),
            StoreLocation::Remote(url) => {
                let remote = Remote::open(url, rt)?;
                Ok(Store::open(&Store::default_root())?.with_upstream(remote))
            }
        }
    }
}

impl Store {
    /// The same local store, as the cache of `remote`.
    pub fn with_upstream(mut self, remote: Remote) -> Store {
        self.upstream = Some(Arc::new(remote));
        self.upstream_chunks = Default::default();
        self
    }

    /// The remote store this one caches, if it was opened at a URL.
    pub fn upstream(&self) -> Option<&Remote> {
        self.upstream.as_deref()
    }

    /// Where the store is, for messages: its URL, or its directory.
    pub fn location(&self) -> String {
        match &self.upstream {
            Some(remote) => remote.url().to_string(),
            None => self.root.display().to_string(),
        }
    }

    /// The local store alone, without the upstream.
    pub(super) fn local(&self) -> Store {
        Store { upstream: None, upstream_chunks: Default::default(), ..self.clone() }
    }

    /// Makes sure the local store holds `digests`, fetching those it lacks from the upstream
    /// (coalesced byte ranges of its packs, each chunk checked against its digest, appended
    /// to local packs); returns how many were fetched. Without an upstream, fetches nothing.
    ///
    /// This is the read path for anything that serves a remote image lazily (the NBD
    /// server): call it with the chunks a read needs, then read them locally (or call
    /// [`Store::read_chunk`], which does both for one chunk).
    pub fn fetch_missing(&self, digests: &[Digest]) -> Result<u64, StoreError> {
        let Some(remote) = &self.upstream else { return Ok(0) };
        let _lock = self.shared_lock()?;
        self.refresh_packs()?;
        for attempt in 0..2 {
            let mut seen = HashSet::new();
            let missing: Vec<Digest> =
                digests.iter().copied().filter(|d| !self.has_chunk(d) && seen.insert(*d)).collect();
            if missing.is_empty() {
                return Ok(0);
            }
            let located = self.upstream_chunk_map(attempt > 0)?;
            if attempt == 0 && missing.iter().any(|d| !located.contains_key(d)) {
                // Packs pushed since the map was loaded: list again.
                continue;
            }
            self.fetches.fetch_add(1, Ordering::Relaxed);
            match self.fetch_chunks(remote, &located, &missing, &|_| {}) {
                Ok(fetched) => {
                    self.sync_packs_dir()?;
                    return Ok(fetched);
                }
                // A pack gc removed since the listing (its chunks live on elsewhere).
                Err(StoreError::Remote { source: object_store::Error::NotFound { .. }, .. })
                    if attempt == 0 => {}
                Err(e) => return Err(e),
            }
        }
        let missing = digests.iter().find(|d| !self.has_chunk(d)).copied();
        missing.map_or(Ok(0), |d| Err(StoreError::MissingChunk(d)))
    }

    /// Bytes this store (and its clones) fetched from the upstream so far: everything that
    /// crossed the wire (chunks, pack indexes, manifests), as `push`/`pull` count it.
    pub fn fetched_bytes(&self) -> u64 {
        self.upstream.as_ref().map_or(0, |remote| remote.transferred())
    }

    /// Batches of chunks this store (and its clones) fetched from the upstream so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A chunk's bytes, checked against its digest; fetched from the upstream first when the
    /// local store lacks it.
    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        if self.upstream.is_some() && self.locate(&chunk.digest).is_none() {
            self.fetch_missing(&[chunk.digest])?;
        }
        self.read_local_chunk(chunk)
    }

    /// Where the upstream's chunks are: listed once per process, again when `reload`.
    fn upstream_chunk_map(&self, reload: bool) -> Result<Arc<RemoteChunks>, StoreError> {
        let remote = self.upstream.as_deref().expect("only called with an upstream");
        let mut map = self.upstream_chunks.lock().expect("the upstream map lock is never poisoned");
        if reload || map.is_none() {
            *map = Some(Arc::new(self.remote_chunks(remote, Condemned::Last)?));
        }
        Ok(map.clone().expect("just loaded"))
    }

    /// Sends a freshly stored image to the upstream (packs, then its manifest), if any.
    pub(super) fn publish(&self, id: &ImageId, manifest_bytes: Vec<u8>) -> Result<(), StoreError> {
        let Some(remote) = &self.upstream else { return Ok(()) };
        let manifest = super::export::parse_manifest(id, &manifest_bytes)?;
        self.local().push_image(id, &manifest, manifest_bytes, remote, &|_| {})?;
        Ok(())
    }

    // ---- the upstream's images, names and cache entries ----

    /// The image `reference` names in the upstream, checked to be there.
    pub(super) fn upstream_resolve(&self, remote: &Remote, reference: &str) -> Result<ImageId, StoreError> {
        let (id, _) = resolve_remote(reference, remote)?;
        if !remote.exists(&manifest_key(&id))? {
            return Err(StoreError::NotFound(format!("{reference} in {}", remote.url())));
        }
        Ok(id)
    }

    /// The upstream's image ids, sorted.
    pub(super) fn upstream_ids(&self, remote: &Remote) -> Result<Vec<ImageId>, StoreError> {
        let mut ids: Vec<ImageId> = remote
            .list("images")?
            .iter()
            .filter_map(|l| l.name.strip_suffix(".json.zst").and_then(|hex| hex.parse().ok()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The upstream's names, with the ids they point at.
    pub(super) fn upstream_names(&self, remote: &Remote) -> Result<BTreeMap<String, ImageId>, StoreError> {
        let names: Vec<String> = remote.list("names")?.into_iter().map(|l| l.name).collect();
        let keys: Vec<String> = names.iter().map(|n| format!("names/{n}")).collect();
        let mut out = BTreeMap::new();
        for (file, text) in names.iter().zip(remote.get_all(&keys)?) {
            let (Some(name), Some(text)) = (super::names::decode_name(file), text) else { continue };
            if let Ok(id) = String::from_utf8_lossy(&text).trim().parse() {
                out.insert(name, id);
            }
        }
        Ok(out)
    }

    /// The manifest bytes of an upstream image: from the local store or the local cache of
    /// fetched manifests when there, else fetched (and cached).
    pub(super) fn upstream_manifest(&self, remote: &Remote, id: &ImageId) -> Result<Vec<u8>, StoreError> {
        let cached = self.root.join("remote-images").join(format!("{id}.json.zst"));
        for path in [self.manifest_path(id), cached.clone()] {
            match fs::read(&path) {
                Ok(bytes) => return Ok(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        let bytes = remote
            .get(&manifest_key(id))?
            .ok_or_else(|| StoreError::NotFound(format!("{id} in {}", remote.url())))?;
        // Checked before it is kept: a damaged object is never cached.
        super::export::parse_manifest(id, &bytes)?;
        let dir = self.root.join("remote-images");
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        self.write_atomic(&cached, &bytes)?;
        Ok(bytes.to_vec())
    }

    pub(super) fn upstream_tag(&self, remote: &Remote, id: &ImageId, name: &str) -> Result<(), StoreError> {
        remote.put(&format!("names/{}", encode_name(name)), Bytes::from(format!("{id}\n")))
    }

    /// `rm` on the upstream: as locally, a name goes alone and takes the image when it was
    /// its last; an id takes the image and its names. The manifest goes after the names;
    /// its chunks stay until a gc of the remote.
    pub(super) fn upstream_rm(&self, remote: &Remote, reference: &str) -> Result<Removed, StoreError> {
        let (id, name) = resolve_remote(reference, remote)?;
        let mut names = self.upstream_names(remote)?;
        let untagged: Vec<String> = match name {
            Some(name) => vec![name],
            None => {
                if !remote.exists(&manifest_key(&id))? {
                    return Err(StoreError::NotFound(format!("{reference} in {}", remote.url())));
                }
                names.iter().filter(|(_, to)| **to == id).map(|(n, _)| n.clone()).collect()
            }
        };
        for name in &untagged {
            remote.delete(&format!("names/{}", encode_name(name)))?;
            names.remove(name);
        }
        if names.values().any(|to| *to == id) {
            return Ok(Removed { id, untagged, deleted: false });
        }
        remote.delete(&manifest_key(&id))?;
        remote.delete(&super::profile::profile_key(&id))?;
        Ok(Removed { id, untagged, deleted: true })
    }

    /// `ls` of the upstream: created is when the manifest object was written; stored size
    /// counts the chunks' bytes in the remote's packs.
    pub(super) fn upstream_ls(&self, remote: &Remote) -> Result<Vec<ImageSummary>, StoreError> {
        let mut names: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
        for (name, id) in self.upstream_names(remote)? {
            names.entry(id).or_default().push(name);
        }
        let chunks = self.upstream_chunk_map(false)?;
        let mut out = Vec::new();
        for listed in remote.list("images")? {
            let Some(id) = listed.name.strip_suffix(".json.zst").and_then(|h| h.parse::<ImageId>().ok())
            else {
                continue;
            };
            let manifest: StoredImage = match self.image(&id) {
                Ok(manifest) => manifest,
                // Removed since the listing.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let digests: BTreeSet<Digest> = manifest.chunks().map(|c| c.digest).collect();
            let chunk_bytes: u64 =
                digests.iter().filter_map(|d| chunks.get(d)).map(|(_, e)| u64::from(e.stored_len)).sum();
            let created = listed.modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            out.push(ImageSummary {
                id,
                names: names.remove(&id).unwrap_or_default(),
                size: manifest.rootfs.file.size,
                stored_size: listed.size + chunk_bytes,
                created,
            });
        }
        out.sort_by_key(|a| (a.created, a.id));
        Ok(out)
    }

    /// The upstream's conversion-cache entry for `key`, if its image is still there.
    pub(super) fn upstream_cache_get(
        &self,
        remote: &Remote,
        key: &str,
    ) -> Result<Option<ImageId>, StoreError> {
        let Some(text) = remote.get(&cache_key(key))? else { return Ok(None) };
        let Ok(id) = String::from_utf8_lossy(&text).trim().parse::<ImageId>() else { return Ok(None) };
        Ok(remote.exists(&manifest_key(&id))?.then_some(id))
    }

    pub(super) fn upstream_cache_put(
        &self,
        remote: &Remote,
        key: &str,
        id: &ImageId,
    ) -> Result<(), StoreError> {
        remote.put(&cache_key(key), Bytes::from(format!("{id}\n")))
    }
}

fn cache_key(key: &str) -> String {
    format!("cache/{}", Digest::of(key.as_bytes()).hex())
}
