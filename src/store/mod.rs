//! The content-addressed image store: every image's rootfs and boot files kept as
//! zstd-compressed chunks named by their sha256, one small manifest per image, names and
//! cache entries pointing at image ids. Images that share content share chunks, which is
//! what lets a build farm keep thousands of images and a devbox boot one by id at once.
//!
//! Layout under the root (`--store DIR`, `DISKC_STORE`, `$XDG_CACHE_HOME/diskc`,
//! `~/.cache/diskc`):
//!
//! ```text
//! lock                 flock: writers share it, gc holds it alone
//! tmp/                 files being written; anything here when gc runs is stale
//! chunks/ab/abcd…      one chunk: zstd frame of the bytes whose sha256 is the name
//! images/<id>.json.zst zstd frame of the canonical manifest; its sha256 is <id>
//! names/<name>         an image id (name percent-encoded)
//! cache/<sha256(key)>  an image id
//! ```
//!
//! Crash safety: every file is written to `tmp/`, made durable and renamed into place. Chunks
//! go in batches: a put writes a batch's new chunks to temp files, flushes the file system
//! once (`syncfs`, instead of one fsync per chunk, which costs seconds per image), then renames
//! them; it flushes again before it writes the manifest (temp, fsync, rename, fsync dir), so
//! an image is visible only once everything it references is durable. A put killed at any
//! point leaves only unreferenced chunks, which `gc` removes, and temp files named after its
//! pid, which the next put (or `gc`) removes.
//!
//! Concurrency: puts, exports, removals and verification hold the lock shared; `gc` holds it
//! exclusively, so it never sweeps a chunk a put has found present but not yet referenced
//! from a published manifest. Two puts writing the same chunk rename identical bytes over
//! each other, which is harmless.

pub mod chunking;
pub mod image;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::UNIX_EPOCH;

use rayon::prelude::*;

use crate::digest::Digest;
use crate::error::{Classify, ErrorClass};
use crate::fileio::{self, is_zero};
pub use chunking::Chunking;
use chunking::RawChunk;
pub use image::{ChunkRef, ImageId, ImageManifest, ImageRecord, StoredFile, StoredRootfs, STORE_FORMAT};

/// zstd level for chunks: level 3 compresses ext4 data about as well as higher levels at
/// several times their speed, and decompression speed does not depend on it.
const ZSTD_LEVEL: i32 = 3;
/// Manifests are small and written once: a higher level is affordable.
const MANIFEST_ZSTD_LEVEL: i32 = 9;
/// Bytes of chunks read ahead of the parallel hash/compress stage.
const BATCH_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no image named {0:?} or with an id starting with it in the store")]
    NotFound(String),
    #[error("id prefix {prefix:?} is ambiguous: it matches {}", .candidates.join(", "))]
    Ambiguous { prefix: String, candidates: Vec<String> },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("image {id}: manifest is damaged: {reason}")]
    CorruptManifest { id: String, reason: String },
    #[error("chunk {digest} is damaged: {reason}")]
    CorruptChunk { digest: Digest, reason: String },
    #[error("chunk {0} is missing from the store")]
    MissingChunk(Digest),
    #[error("image {id} has no file {name:?} (it has: {})", .available.join(", "))]
    NoSuchFile { id: ImageId, name: String, available: Vec<String> },
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { path: path.to_path_buf(), source }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::Io { source, .. } => ErrorClass::of_io(source),
            StoreError::Ambiguous { .. } | StoreError::InvalidName { .. } => ErrorClass::Usage,
            StoreError::NotFound(_)
            | StoreError::CorruptManifest { .. }
            | StoreError::CorruptChunk { .. }
            | StoreError::MissingChunk(_)
            | StoreError::NoSuchFile { .. } => ErrorClass::BadInput,
        }
    }
}

/// How far a put has come, in bytes of file data (holes excluded) hashed and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutProgress {
    pub done: u64,
    pub total: u64,
}

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

/// What `gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    pub chunks_kept: u64,
    pub temp_files_removed: u64,
    pub stale_entries_removed: u64,
}

/// A damaged image found by `verify`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedImage {
    pub id: String,
    pub names: Vec<String>,
    /// The manifest itself does not hash to the id or does not parse.
    pub manifest_damaged: bool,
    pub damaged_chunks: Vec<Digest>,
    pub missing_chunks: Vec<Digest>,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub images_checked: u64,
    pub chunks_checked: u64,
    /// Every chunk file whose bytes do not decompress to its name, with the problem.
    pub damaged_chunks: BTreeMap<String, String>,
    pub damaged_images: Vec<DamagedImage>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_chunks.is_empty() && self.damaged_images.is_empty()
    }
}

/// An open store. Cheap to clone state: it is a path and the chunking choice.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    chunking: Chunking,
}

/// Holds the store's flock until dropped.
struct LockGuard {
    _file: File,
}

impl Store {
    /// Opens the store at `root`, creating its layout if absent.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_path_buf(), chunking: Chunking::DEFAULT };
        for dir in ["tmp", "chunks", "images", "names", "cache"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
        }
        let lock = store.lock_path();
        fs::OpenOptions::new().create(true).append(true).open(&lock).map_err(StoreError::io(&lock))?;
        Ok(store)
    }

    /// The same store, cutting new files with `chunking`.
    pub fn with_chunking(mut self, chunking: Chunking) -> Store {
        self.chunking = chunking;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DISKC_STORE`, else `$XDG_CACHE_HOME/diskc`, else `~/.cache/diskc`.
    pub fn default_root() -> PathBuf {
        let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(root) = set("DISKC_STORE") {
            return root;
        }
        if let Some(cache) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            return cache.join("diskc");
        }
        set("HOME").unwrap_or_else(|| PathBuf::from("/")).join(".cache/diskc")
    }

    // ---- paths and low-level files ----

    fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    fn chunk_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("chunks").join(&digest.hex()[..2])
    }

    fn chunk_path(&self, digest: &Digest) -> PathBuf {
        self.chunk_dir(digest).join(digest.hex())
    }

    fn manifest_path(&self, id: &ImageId) -> PathBuf {
        self.root.join("images").join(format!("{id}.json.zst"))
    }

    fn name_path(&self, name: &str) -> PathBuf {
        self.root.join("names").join(encode_name(name))
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.root.join("cache").join(Digest::of(key.as_bytes()).hex())
    }

    fn lock(&self, exclusive: bool) -> Result<LockGuard, StoreError> {
        let path = self.lock_path();
        let file = File::open(&path).map_err(StoreError::io(&path))?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        loop {
            // SAFETY: flock on a descriptor we own; the lock goes away when the file closes.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(LockGuard { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::Io { path, source: err });
            }
        }
    }

    /// Writes `bytes` to `dest` atomically: temp file in the store, fsync, rename. The caller
    /// fsyncs `dest`'s directory when the rename itself must be durable.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::Builder::new()
            .prefix(&temp_prefix("w"))
            .tempfile_in(&tmp_dir)
            .map_err(StoreError::io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(StoreError::io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(StoreError::io(tmp.path()))?;
        tmp.persist(dest).map_err(|e| StoreError::Io { path: dest.to_path_buf(), source: e.error })?;
        Ok(())
    }

    fn write_atomic_durable(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_atomic(dest, bytes)?;
        let dir = dest.parent().expect("store paths have a parent");
        fileio::sync_path(dir).map_err(StoreError::io(dir))
    }

    // ---- put ----

    /// Stores a rootfs image and boot files (`("kernel", path)`, `("initrd", path)`) and
    /// returns the image id. Storing the same inputs again returns the same id.
    pub fn put_image(
        &self,
        rootfs: &Path,
        boot_files: &[(&str, &Path)],
        record: ImageRecord,
    ) -> Result<ImageId, StoreError> {
        self.put_image_with_progress(rootfs, boot_files, record, &|_| {})
    }

    /// [`Store::put_image`], reporting progress after each batch of chunks.
    pub fn put_image_with_progress(
        &self,
        rootfs: &Path,
        boot_files: &[(&str, &Path)],
        record: ImageRecord,
        progress: &(dyn Fn(PutProgress) + Sync),
    ) -> Result<ImageId, StoreError> {
        let _lock = self.lock(false)?;
        sweep_dead_temp_files(&self.root.join("tmp"));
        let mut inputs = Vec::new();
        for (name, path) in
            std::iter::once((None, rootfs)).chain(boot_files.iter().map(|(n, p)| (Some(*n), *p)))
        {
            let file = File::open(path).map_err(StoreError::io(path))?;
            let size = file.metadata().map_err(StoreError::io(path))?.len();
            let extents = fileio::data_extents(&file, size).map_err(StoreError::io(path))?;
            inputs.push(Input { name, path, file, size, extents });
        }
        let total = inputs.iter().flat_map(|i| &i.extents).map(|r| r.end - r.start).sum();
        let mut done = 0;
        let mut rootfs_file = None;
        let mut files = BTreeMap::new();
        for input in &inputs {
            let stored = self.store_file(input, &mut |bytes| {
                done += bytes;
                progress(PutProgress { done, total });
            })?;
            match input.name {
                None => rootfs_file = Some(stored),
                Some(name) => {
                    files.insert(name.to_string(), stored);
                }
            }
        }
        // Every chunk, and its name, must be durable before a manifest can reference it; that
        // includes chunks a concurrent put renamed into place and this one found present.
        fileio::syncfs(&self.root).map_err(StoreError::io(&self.root))?;
        let manifest = ImageManifest {
            store_format: STORE_FORMAT,
            rootfs: StoredRootfs {
                uuid: record.uuid,
                digest: record.rootfs_digest,
                file: rootfs_file.expect("the rootfs is the first input"),
            },
            files,
            boot: record.boot,
            source: record.source,
            config: record.config,
            build: record.build,
        };
        let bytes = manifest.canonical_bytes();
        let id = ImageId(Digest::of(&bytes));
        let path = self.manifest_path(&id);
        // An existing manifest has these very bytes (they hash to its name); keeping it keeps
        // the image's creation time.
        if !path.exists() {
            // Compressed: a manifest lists every chunk, and half of each entry is hex.
            let compressed =
                zstd::bulk::compress(&bytes, MANIFEST_ZSTD_LEVEL).map_err(StoreError::io(&path))?;
            self.write_atomic_durable(&path, &compressed)?;
        }
        Ok(id)
    }

    // ---- reading images ----

    /// The manifest of an image.
    pub fn manifest(&self, id: &ImageId) -> Result<ImageManifest, StoreError> {
        let path = self.manifest_path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.to_string()))
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        parse_manifest(id, &bytes)
    }

    /// Writes the image's rootfs to `out`, byte-identical to what was stored and sparse:
    /// holes and all-zero blocks are not written.
    pub fn export_rootfs(&self, id: &ImageId, out: &Path) -> Result<(), StoreError> {
        let manifest = self.manifest(id)?;
        self.export_stored(&manifest.rootfs.file, out)
    }

    /// Writes one of the image's boot files (`kernel`, `initrd`) to `out`.
    pub fn export_file(&self, id: &ImageId, name: &str, out: &Path) -> Result<(), StoreError> {
        let manifest = self.manifest(id)?;
        let file = manifest.files.get(name).ok_or_else(|| StoreError::NoSuchFile {
            id: *id,
            name: name.to_string(),
            available: manifest.files.keys().cloned().collect(),
        })?;
        self.export_stored(file, out)
    }

    fn export_stored(&self, stored: &StoredFile, out: &Path) -> Result<(), StoreError> {
        let _lock = self.lock(false)?;
        let file = File::create(out).map_err(StoreError::io(out))?;
        file.set_len(stored.size).map_err(StoreError::io(out))?;
        stored.chunks.par_iter().try_for_each(|chunk| {
            let data = self.read_chunk(chunk)?;
            fileio::write_sparse(&file, &data, chunk.offset).map_err(StoreError::io(out))
        })
    }

    /// A chunk's bytes, checked against its digest.
    fn read_chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        let path = self.chunk_path(&chunk.digest);
        let compressed = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingChunk(chunk.digest))
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let data = decode_chunk(&chunk.digest, &compressed)?;
        if data.len() as u64 != chunk.size {
            return Err(StoreError::CorruptChunk {
                digest: chunk.digest,
                reason: format!("holds {} bytes, the manifest says {}", data.len(), chunk.size),
            });
        }
        Ok(data)
    }

    // ---- names and ids ----

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

    fn names_by_id(&self) -> Result<BTreeMap<ImageId, Vec<String>>, StoreError> {
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
        let _lock = self.lock(false)?;
        let id = self.resolve(reference)?;
        self.write_atomic_durable(&self.name_path(name), format!("{id}\n").as_bytes())?;
        Ok(id)
    }

    /// Removes the image `reference` resolves to, with every name and cache entry pointing
    /// at it. Its chunks stay until `gc`. Returns the id and the names removed.
    pub fn rm(&self, reference: &str) -> Result<(ImageId, Vec<String>), StoreError> {
        let _lock = self.lock(false)?;
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
            let chunk_bytes: u64 =
                digests.iter().filter_map(|d| fs::metadata(self.chunk_path(d)).ok()).map(|m| m.len()).sum();
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

    // ---- cache ----

    /// The image a conversion with this key produced, if it is still in the store.
    pub fn cache_get(&self, key: &str) -> Result<Option<ImageId>, StoreError> {
        let path = self.cache_path(key);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let Ok(id) = text.trim().parse::<ImageId>() else { return Ok(None) };
        Ok(self.manifest_path(&id).exists().then_some(id))
    }

    pub fn cache_put(&self, key: &str, id: &ImageId) -> Result<(), StoreError> {
        let _lock = self.lock(false)?;
        self.write_atomic_durable(&self.cache_path(key), format!("{id}\n").as_bytes())
    }

    fn cache_entries(&self) -> Result<Vec<(PathBuf, Option<ImageId>)>, StoreError> {
        let dir = self.root.join("cache");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            let target = fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
            out.push((path, target));
        }
        Ok(out)
    }

    // ---- gc and verify ----

    /// Every chunk file in the store, with its path.
    fn chunk_files(&self) -> Result<Vec<(PathBuf, Option<Digest>)>, StoreError> {
        let dir = self.root.join("chunks");
        let mut out = Vec::new();
        for fan in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let fan = fan.map_err(StoreError::io(&dir))?.path();
            if !fan.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&fan).map_err(StoreError::io(&fan))? {
                let path = entry.map_err(StoreError::io(&fan))?.path();
                let digest = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| format!("sha256:{n}").parse().ok());
                out.push((path, digest));
            }
        }
        Ok(out)
    }

    /// Mark and sweep: removes every chunk no manifest references, every temp file and every
    /// name or cache entry pointing at a removed image. Waits for running puts to finish and
    /// holds new ones off while it runs. Refuses to sweep if any manifest cannot be read,
    /// since its chunks would look unreferenced.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _lock = self.lock(true)?;
        let mut report = GcReport::default();
        let mut live: BTreeSet<Digest> = BTreeSet::new();
        let ids = self.ids()?;
        for id in &ids {
            live.extend(self.manifest(id)?.chunks().map(|c| c.digest));
        }
        for (path, digest) in self.chunk_files()? {
            if digest.is_some_and(|d| live.contains(&d)) {
                report.chunks_kept += 1;
                continue;
            }
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove_if_present(&path)?;
            report.chunks_removed += 1;
            report.bytes_freed += len;
        }
        // With the lock held alone, no writer is running: every temp file is left over.
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(StoreError::io(&tmp))? {
            remove_if_present(&entry.map_err(StoreError::io(&tmp))?.path())?;
            report.temp_files_removed += 1;
        }
        let ids: BTreeSet<ImageId> = ids.into_iter().collect();
        for (name, id) in self.names()? {
            if !ids.contains(&id) {
                remove_if_present(&self.name_path(&name))?;
                report.stale_entries_removed += 1;
            }
        }
        for (path, target) in self.cache_entries()? {
            if !target.is_some_and(|id| ids.contains(&id)) {
                remove_if_present(&path)?;
                report.stale_entries_removed += 1;
            }
        }
        Ok(report)
    }

    /// Re-hashes every chunk and manifest and reports damage by image: which images reference
    /// a damaged or missing chunk, or have a damaged manifest.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let _lock = self.lock(false)?;
        let mut report = VerifyReport::default();
        let mut manifests: Vec<(ImageId, Result<ImageManifest, String>)> = Vec::new();
        for id in self.ids()? {
            let path = self.manifest_path(&id);
            let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
            let parsed = parse_manifest(&id, &bytes).map_err(|e| e.to_string());
            manifests.push((id, parsed));
        }
        let chunk_files = self.chunk_files()?;
        let damaged: BTreeMap<String, String> = chunk_files
            .par_iter()
            .filter_map(|(path, digest)| {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let Some(digest) = digest else {
                    return Some((name, "not a chunk name".to_string()));
                };
                let problem = match fs::read(path) {
                    Ok(bytes) => decode_chunk(digest, &bytes).err().map(|e| match e {
                        StoreError::CorruptChunk { reason, .. } => reason,
                        other => other.to_string(),
                    }),
                    Err(e) => Some(e.to_string()),
                };
                problem.map(|p| (digest.to_string(), p))
            })
            .collect();
        report.chunks_checked = chunk_files.len() as u64;
        let present: BTreeSet<Digest> = chunk_files.iter().filter_map(|(_, d)| *d).collect();
        let mut names = self.names_by_id()?;
        for (id, parsed) in manifests {
            report.images_checked += 1;
            let names = names.remove(&id).unwrap_or_default();
            let manifest = match parsed {
                Ok(manifest) => manifest,
                Err(_) => {
                    report.damaged_images.push(DamagedImage {
                        id: id.to_string(),
                        names,
                        manifest_damaged: true,
                        damaged_chunks: Vec::new(),
                        missing_chunks: Vec::new(),
                    });
                    continue;
                }
            };
            let digests: BTreeSet<Digest> = manifest.chunks().map(|c| c.digest).collect();
            let damaged_chunks: Vec<Digest> =
                digests.iter().filter(|d| damaged.contains_key(&d.to_string())).copied().collect();
            let missing_chunks: Vec<Digest> =
                digests.iter().filter(|d| !present.contains(d)).copied().collect();
            if !damaged_chunks.is_empty() || !missing_chunks.is_empty() {
                report.damaged_images.push(DamagedImage {
                    id: id.to_string(),
                    names,
                    manifest_damaged: false,
                    damaged_chunks,
                    missing_chunks,
                });
            }
        }
        report.damaged_chunks = damaged;
        Ok(report)
    }
}

/// A file to put: its name among the boot files (none for the rootfs) and where its data is.
struct Input<'a> {
    name: Option<&'a str>,
    path: &'a Path,
    file: File,
    size: u64,
    extents: Vec<std::ops::Range<u64>>,
}

/// A new chunk in a temp file, waiting for its batch's sync before it is renamed into place.
struct Pending {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

/// The put path: files into chunks.
impl Store {
    /// Cuts `file` into chunks, stores the ones not yet present (in parallel) and returns the
    /// chunk list. One thread reads ahead while the pool hashes and compresses.
    fn store_file(&self, input: &Input, progress: &mut dyn FnMut(u64)) -> Result<StoredFile, StoreError> {
        let Input { path, file, size, extents, .. } = input;
        let chunking = self.chunking;
        let (send, receive) = sync_channel::<Vec<RawChunk>>(1);
        let mut chunks = Vec::new();
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut batch = Vec::new();
                let mut bytes = 0;
                let sent = chunking::read_chunks(file, *size, extents, chunking, |chunk: RawChunk| {
                    bytes += chunk.data.len();
                    batch.push(chunk);
                    if bytes >= BATCH_BYTES {
                        bytes = 0;
                        // The receiver is gone only when storing failed; that error wins.
                        send.send(std::mem::take(&mut batch)).map_err(|_| io::Error::other("put stopped"))?;
                    }
                    Ok::<(), io::Error>(())
                });
                sent.and_then(|()| send.send(batch).map_err(|_| io::Error::other("put stopped")))
            });
            let stored = (|| {
                for batch in receive {
                    let bytes: u64 = batch.iter().map(|c| c.data.len() as u64).sum();
                    let results: Vec<(Option<ChunkRef>, Option<Pending>)> =
                        batch.into_par_iter().map(|chunk| self.put_chunk(chunk)).collect::<Result<_, _>>()?;
                    let mut pending = Vec::new();
                    for (chunk, new) in results {
                        chunks.extend(chunk);
                        pending.extend(new);
                    }
                    if !pending.is_empty() {
                        // One flush of the file system makes the whole batch durable: far
                        // cheaper than an fsync per chunk, and a chunk is named only after it.
                        fileio::syncfs(&self.root).map_err(StoreError::io(&self.root))?;
                        for Pending { tmp, dest } in pending {
                            persist_creating_dir(tmp, &dest)?;
                        }
                    }
                    progress(bytes);
                }
                Ok::<(), StoreError>(())
            })();
            let read = reader.join().expect("the chunk reader does not panic");
            stored?;
            read.map_err(StoreError::io(path))
        })?;
        Ok(StoredFile { size: *size, chunking: chunking.to_string(), chunks })
    }

    /// Stores one chunk unless it is all zeros (recorded by its absence) or already present.
    fn put_chunk(&self, chunk: RawChunk) -> Result<(Option<ChunkRef>, Option<Pending>), StoreError> {
        if is_zero(&chunk.data) {
            return Ok((None, None));
        }
        let digest = Digest::of(&chunk.data);
        let dest = self.chunk_path(&digest);
        let chunk_ref = ChunkRef { offset: chunk.offset, size: chunk.data.len() as u64, digest };
        if dest.exists() {
            return Ok((Some(chunk_ref), None));
        }
        let compressed = zstd::bulk::compress(&chunk.data, ZSTD_LEVEL).map_err(StoreError::io(&dest))?;
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::Builder::new()
            .prefix(&temp_prefix("c"))
            .tempfile_in(&tmp_dir)
            .map_err(StoreError::io(&tmp_dir))?;
        tmp.write_all(&compressed).map_err(StoreError::io(tmp.path()))?;
        Ok((Some(chunk_ref), Some(Pending { tmp, dest })))
    }
}

/// `KIND-PID-`: temp files carry their writer's pid, so that the next put can remove those
/// of a writer that was killed instead of leaving them to `gc`.
fn temp_prefix(kind: &str) -> String {
    format!("{kind}-{}-", std::process::id())
}

/// Removes the temp files (see [`temp_prefix`]) whose writer no longer runs. A live writer's
/// files are never touched, so this is safe beside concurrent puts.
fn sweep_dead_temp_files(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').nth(1)).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists; ESRCH says it
        // does not (EPERM would mean it runs under another user).
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Renames a temp file to `dest`, creating `dest`'s directory the first time a chunk lands in
/// it (cheaper than a mkdir per chunk; the put's final flush makes the directory durable).
fn persist_creating_dir(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), StoreError> {
    let failed = |e: tempfile::PersistError| StoreError::Io { path: dest.to_path_buf(), source: e.error };
    let tmp = match tmp.persist(dest) {
        Ok(_) => return Ok(()),
        Err(e) if e.error.kind() == io::ErrorKind::NotFound => e.file,
        Err(e) => return Err(failed(e)),
    };
    let dir = dest.parent().expect("chunk paths have a parent");
    fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    tmp.persist(dest).map(drop).map_err(failed)
}

/// Decompresses a stored manifest, checks that it hashes to `id` and parses it.
fn parse_manifest(id: &ImageId, compressed: &[u8]) -> Result<ImageManifest, StoreError> {
    let damaged = |reason: String| StoreError::CorruptManifest { id: id.to_string(), reason };
    let bytes =
        zstd::stream::decode_all(compressed).map_err(|e| damaged(format!("does not decompress: {e}")))?;
    if Digest::of(&bytes) != id.0 {
        return Err(damaged("its bytes do not hash to its id".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))
}

/// Decompresses a chunk file and checks that the bytes hash to `digest`.
fn decode_chunk(digest: &Digest, compressed: &[u8]) -> Result<Vec<u8>, StoreError> {
    let damaged = |reason: String| StoreError::CorruptChunk { digest: *digest, reason };
    let data =
        zstd::stream::decode_all(compressed).map_err(|e| damaged(format!("does not decompress: {e}")))?;
    if Digest::of(&data) != *digest {
        return Err(damaged("its bytes hash to another digest".into()));
    }
    Ok(data)
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::Io { path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
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
fn encode_name(name: &str) -> String {
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

    #[test]
    fn temp_files_of_dead_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        let dead = exited.id();
        exited.wait().unwrap();
        let mine = format!("{}abc", temp_prefix("c"));
        for name in [format!("c-{dead}-abc"), format!("w-{dead}-def"), mine.clone(), "other".into()] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        sweep_dead_temp_files(dir.path());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [mine, "other".to_string()]);
    }
}
