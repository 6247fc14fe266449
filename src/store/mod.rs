//! The content-addressed image store: every image's rootfs and boot files kept as
//! zstd-compressed chunks named by their sha256, gathered in pack files, one small manifest
//! per image, names and cache entries pointing at image ids. Images that share content share
//! chunks, which is what lets a build farm keep thousands of images and a devbox boot one by
//! id at once. `docs/store.md` describes the format and the reasons for it.
//!
//! Layout under the root (`--store DIR`, `DISKC_STORE`, `$XDG_CACHE_HOME/diskc`,
//! `~/.cache/diskc`):
//!
//! ```text
//! lock                 flock: writers share it, gc and migrate hold it alone
//! tmp/                 files being written; anything here when gc runs is stale
//! packs/<name>.pack    zstd frames of many chunks, then their sorted index (see `pack`);
//!                      <name> is the sha256 of that index
//! chunks/ab/abcd…      format 2 (read, swept by gc, moved into packs by migrate): one chunk
//! images/<id>.json.zst zstd frame of the canonical manifest; its sha256 is <id>
//! images/<id>.boot     the image's boot profile: chunks its first boot read (see `profile`)
//! images/<id>.blocks   its rootfs's data extents and per-MiB BLAKE3 chaining values, so a put
//!                      of a similar rootfs reads only what differs (see `blocks`); local only
//! names/<name>         an image id (name percent-encoded)
//! cache/<sha256(key)>  an image id
//! remote-index/<name>.idx      a remote pack's index and footer, as fetched (see `transfer`)
//! remote-images/<id>.json.zst  a remote image's manifest, as fetched (see `upstream`)
//! layers/<chain id>/   a saved layer, for incremental conversions (see `layers`)
//! run/<key>.sock|ctl   the NBD server the boots of one image share (see `boot::disk_server`)
//! ```
//!
//! Crash safety: every file is written to `tmp/`, made durable and renamed into place. A put
//! appends new chunks to a temp pack; a full pack gets its index, one fsync and a rename;
//! before the manifest is written (temp, fsync, rename, fsync dir) the `packs/` directory is
//! fsynced, so an image is visible only once everything it references is durable. A put
//! killed at any point leaves only unreferenced packs, which `gc` drops, and temp files
//! named after its pid, which the next put (or `gc`) removes.
//!
//! Concurrency: puts, exports, removals and verification hold the lock shared; `gc` holds it
//! exclusively, so it never drops a pack holding a chunk a put has found present but not yet
//! referenced from a published manifest. Two puts writing the same chunk store it twice
//! (in two packs), which is harmless: the next gc keeps one copy.
//!
//! The code, by responsibility:
//! - here: the [`Store`] type, opening, the paths under the root, [`StoreError`];
//! - `lock`: the flock; `atomic`: temp files, durable renames, sweeping dead writers' files;
//! - `pack`: the pack file format; `packs`: the chunk → pack index and the pack writer;
//! - `put`: files into chunks and a manifest (`blocks`: what a later put can take from
//!   it); `export`: manifests and chunks read back
//!   and checked, files written out;
//! - `names`: ids, names, resolve, tag, ls, rm; `cache`: the conversion cache;
//! - `gc` and `verify`: the two sweeps over the whole store; `migrate`: format 2 to packs;
//! - [`chunking`]: where chunk boundaries fall; `image`: the stored image's types.

mod atomic;
mod blocks;
mod cache;
pub mod chunking;
mod export;
mod gc;
pub(crate) mod image;
mod layers;
mod lock;
mod migrate;
mod names;
mod pack;
mod packs;
mod profile;
mod put;
mod remote;
mod remote_gc;
mod transfer;
mod upstream;
mod verify;
mod view;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};
pub use blocks::file_digest;
pub use chunking::Chunking;
pub use gc::GcReport;
pub use image::{ChunkRef, ImageId, ImageRecord, StoredFile, StoredImage, StoredRootfs, STORE_FORMAT};
pub use layers::{chain_ids, LayerData, LayerValues, SavedLayer};
pub use migrate::MigrateReport;
use names::encode_name;
pub use names::{ImageSummary, Removed};
pub use put::{PutProgress, Stored};
pub use remote::{is_remote, Remote};
pub use remote_gc::DEFAULT_GRACE;
pub use transfer::{Transfer, TransferProgress};
pub use upstream::StoreLocation;
pub use verify::{DamagedImage, VerifyReport};
pub use view::{LaidLayer, ReadAt, RootfsView};

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
    #[error("invalid remote store {url:?}: {reason}")]
    InvalidRemote { url: String, reason: String },
    #[error("remote store {url}: {source}")]
    Remote { url: String, source: object_store::Error },
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { path: path.to_path_buf(), source }
    }
}

impl Classify for StoreError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            StoreError::Io { source, .. } => ErrorKind::of_io(source),
            StoreError::Ambiguous { .. }
            | StoreError::InvalidName { .. }
            | StoreError::InvalidRemote { .. } => ErrorKind::Usage,
            StoreError::Remote { source: object_store::Error::NotFound { .. }, .. } => ErrorKind::BadInput,
            StoreError::Remote { .. } => ErrorKind::Environment,
            StoreError::NotFound(_)
            | StoreError::CorruptManifest { .. }
            | StoreError::CorruptChunk { .. }
            | StoreError::MissingChunk(_)
            | StoreError::NoSuchFile { .. } => ErrorKind::BadInput,
        }
    }
}

/// An open store: a path, the chunking choice and the chunk → pack index, loaded at first
/// use and shared by clones. A store opened at a URL is the local store at `root` in front
/// of an upstream [`Remote`]: images, names and cache entries are the remote's, chunks are
/// read through the local packs (see `upstream`).
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    chunking: Chunking,
    packs: Arc<RwLock<packs::PackIndex>>,
    upstream: Option<Arc<Remote>>,
    /// Where the upstream's chunks are, as last listed (loaded at the first fetch).
    upstream_chunks: Arc<Mutex<Option<Arc<transfer::RemoteChunks>>>>,
    /// Batches of chunks fetched from the upstream ([`Store::fetch_missing`] calls that
    /// fetched any).
    fetches: Arc<AtomicU64>,
    /// The manifest read last: a boot reads its image's several times, and a large image's
    /// lists tens of thousands of chunks. An id names one manifest's bytes forever, so only
    /// whether it is still there needs a look.
    last_image: Arc<Mutex<Option<(ImageId, StoredImage)>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("upstream", &self.upstream.as_ref().map(|r| r.url()))
            .field("chunking", &self.chunking)
            .finish()
    }
}

impl Store {
    /// Opens the store at `root`, creating its layout if absent.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
            chunking: Chunking::DEFAULT,
            packs: Default::default(),
            upstream: None,
            upstream_chunks: Default::default(),
            fetches: Default::default(),
            last_image: Default::default(),
        };
        for dir in ["tmp", "packs", "images", "names", "cache"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
        }
        let lock = store.lock_path();
        fs::OpenOptions::new().create(true).append(true).open(&lock).map_err(StoreError::io(&lock))?;
        // A killed writer's temp files go with the next open, not the next put: the next
        // command may be a cache hit that puts nothing.
        atomic::sweep_dead_temp_files(&store.tmp_dir());
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

    /// The local store's directory: `DISKC_STORE` when it names a directory (not a URL),
    /// else `$XDG_CACHE_HOME/diskc`, else `~/.cache/diskc`. A remote store is cached here.
    pub fn default_root() -> PathBuf {
        let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(root) = set("DISKC_STORE").filter(|r| !r.to_str().is_some_and(is_remote)) {
            return root;
        }
        if let Some(cache) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            return cache.join("diskc");
        }
        set("HOME").unwrap_or_else(|| PathBuf::from("/")).join(".cache/diskc")
    }

    // ---- where things are under the root ----

    fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Where files are written before they are renamed into place.
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
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
}
