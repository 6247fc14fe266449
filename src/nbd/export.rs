//! One image's rootfs as a block device: byte ranges assembled from the stored chunks, each
//! fetched and decompressed on first read and kept in the export's [`ChunkCache`].
//!
//! Parts of the file no chunk covers (holes, all-zero runs the store never kept) read as
//! zeros without touching the store. A chunk that cannot be read or fails its digest fails
//! the read that needs it — the client gets an I/O error, never other bytes — and is named
//! once on stderr with the image.
//!
//! Where chunks come from is a [`ChunkSource`]: the local store here; a store that reads
//! through to a remote one plugs in the same way and reports what it fetched.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::cache::{CacheStats, ChunkCache};
use crate::digest::Digest;
use crate::store::{ChunkRef, ImageId, Store, StoreError, StoredFile};

/// Where an export's chunks come from.
pub trait ChunkSource: Send + Sync {
    /// A chunk's bytes, checked against its digest.
    fn chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError>;

    /// Bytes fetched from another machine so far (a local store fetches none).
    fn fetched_bytes(&self) -> u64 {
        0
    }

    /// Fetches (round trips for one or more chunks) made so far.
    fn fetches(&self) -> u64 {
        0
    }
}

impl ChunkSource for Store {
    fn chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
        self.fetch_chunk(chunk)
    }

    fn fetched_bytes(&self) -> u64 {
        Store::fetched_bytes(self)
    }

    fn fetches(&self) -> u64 {
        Store::fetches(self)
    }
}

/// A read that could not be served.
#[derive(Debug, thiserror::Error)]
#[error("image {image}: reading {length} bytes at offset {offset}: {source}")]
pub struct ReadError {
    pub image: ImageId,
    pub offset: u64,
    pub length: u64,
    #[source]
    pub source: Box<StoreError>,
}

/// What an export has served.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ExportStats {
    pub size: u64,
    /// Connections that reached transmission.
    pub clients: u64,
    pub read_requests: u64,
    pub read_bytes: u64,
    pub failed_reads: u64,
    pub fetched_bytes: u64,
    /// Fetches from a remote store, each of the chunks one read needed.
    #[serde(default)]
    pub fetches: u64,
    pub cache: CacheStats,
}

/// What the clients of one session (one boot: export name `<id>.<session>`) read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    pub read_requests: u64,
    pub read_bytes: u64,
    pub failed_reads: u64,
}

/// One session's reads, and the chunks it read in the order it first read them, with when
/// (milliseconds since the epoch: the boot compares them with its own clock), for the boot
/// profile.
#[derive(Default)]
struct Session {
    stats: SessionStats,
    seen: HashSet<usize>,
    first_reads: Vec<(usize, u64)>,
}

/// Now, in milliseconds since the epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A stored image's rootfs, served read-only.
pub struct Export {
    image: ImageId,
    file: StoredFile,
    source: Arc<dyn ChunkSource>,
    cache: ChunkCache,
    /// Chunks already named on stderr as unreadable.
    reported: Mutex<HashSet<usize>>,
    clients: AtomicU64,
    /// Clients in transmission now.
    connected: AtomicU64,
    sessions: Mutex<HashMap<String, Session>>,
    read_requests: AtomicU64,
    read_bytes: AtomicU64,
    failed_reads: AtomicU64,
}

impl Export {
    /// The rootfs of image `id` in `store`, with a cache of `cache_bytes`.
    pub fn from_store(store: &Store, id: &ImageId, cache_bytes: u64) -> Result<Export, StoreError> {
        let image = store.image(id)?;
        Export::new(*id, image.rootfs.file, Arc::new(store.clone()), cache_bytes)
    }

    /// `file` of image `image`, its chunks read from `source`. The chunk list must be in
    /// offset order, without overlaps, inside the file (a manifest diskc wrote is).
    pub fn new(
        image: ImageId,
        file: StoredFile,
        source: Arc<dyn ChunkSource>,
        cache_bytes: u64,
    ) -> Result<Export, StoreError> {
        let mut end = 0;
        for chunk in &file.chunks {
            if chunk.offset < end || chunk.offset.checked_add(chunk.size).is_none_or(|e| e > file.size) {
                return Err(StoreError::CorruptManifest {
                    id: image.to_string(),
                    reason: format!("rootfs chunk at offset {} overlaps another or the end", chunk.offset),
                });
            }
            end = chunk.offset + chunk.size;
        }
        Ok(Export {
            image,
            file,
            source,
            cache: ChunkCache::new(cache_bytes),
            reported: Mutex::default(),
            clients: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            sessions: Mutex::default(),
            read_requests: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            failed_reads: AtomicU64::new(0),
        })
    }

    pub fn image(&self) -> ImageId {
        self.image
    }

    pub fn size(&self) -> u64 {
        self.file.size
    }

    pub(super) fn client_connected(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn client_left(&self) {
        self.connected.fetch_sub(1, Ordering::SeqCst);
    }

    /// Clients connected now (in transmission).
    pub fn connected_clients(&self) -> u64 {
        self.connected.load(Ordering::SeqCst)
    }

    /// Counts a read of `length` bytes at `offset` by a client of `session` (failed or not)
    /// and notes the chunks it needed that the session had not read yet.
    pub(super) fn count_session_read(&self, session: &str, offset: u64, length: u64, failed: bool) {
        let now = unix_ms();
        let chunks = &self.file.chunks;
        let first = chunks.partition_point(|c| c.offset + c.size <= offset);
        let end = offset + length;
        let mut sessions = self.sessions.lock().expect("never poisoned");
        let s = sessions.entry(session.to_string()).or_default();
        s.stats.read_requests += 1;
        if failed {
            s.stats.failed_reads += 1;
        } else {
            s.stats.read_bytes += length;
        }
        for index in (first..chunks.len()).take_while(|&i| chunks[i].offset < end) {
            if s.seen.insert(index) {
                s.first_reads.push((index, now));
            }
        }
    }

    /// What the clients of `session` read so far.
    pub fn session_stats(&self, session: &str) -> SessionStats {
        self.sessions.lock().expect("never poisoned").get(session).map(|s| s.stats).unwrap_or_default()
    }

    /// The chunks (indexes into the rootfs's chunk list) `session` first read before
    /// `until_ms`, in the order it read them.
    pub fn session_profile(&self, session: &str, until_ms: u64) -> Vec<usize> {
        let sessions = self.sessions.lock().expect("never poisoned");
        let Some(s) = sessions.get(session) else { return Vec::new() };
        s.first_reads.iter().take_while(|(_, at)| *at <= until_ms).map(|(index, _)| *index).collect()
    }

    /// Loads the chunks `digests` names (a boot profile: what a boot read before its program
    /// started, in that order) into the cache ahead of the clients that will ask for them, as
    /// far as half the cache; returns how many it loaded. A chunk that cannot be read is left
    /// for the read that needs it, which reports it.
    pub fn warm(&self, digests: &[Digest]) -> usize {
        let mut first_index = HashMap::new();
        for (i, chunk) in self.file.chunks.iter().enumerate() {
            first_index.entry(chunk.digest).or_insert(i);
        }
        let budget = self.cache.stats().limit_bytes / 2;
        let (mut bytes, mut loaded) = (0, 0);
        for index in digests.iter().filter_map(|d| first_index.get(d).copied()) {
            let chunk = &self.file.chunks[index];
            if bytes + chunk.size > budget {
                break;
            }
            if self.cache.get_or_load(index, || self.source.chunk(chunk)).is_ok() {
                bytes += chunk.size;
                loaded += 1;
            }
        }
        loaded
    }

    /// Fills `buf` with the bytes at `offset`. The range must lie inside the export.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = offset + buf.len() as u64;
        assert!(end <= self.file.size, "the server checks ranges before reading");
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        let chunks = &self.file.chunks;
        // The first chunk that ends after `offset`.
        let first = chunks.partition_point(|c| c.offset + c.size <= offset);
        let mut filled = 0u64; // bytes of buf settled, from its start
        for (index, chunk) in chunks.iter().enumerate().skip(first) {
            if chunk.offset >= end {
                break;
            }
            // A hole before this chunk reads as zeros.
            let data_start = chunk.offset.max(offset);
            let hole = (data_start - offset) as usize;
            buf[filled as usize..hole].fill(0);
            let data = self
                .cache
                .get_or_load(index, || self.source.chunk(chunk))
                .map_err(|source| self.failed(index, offset, buf.len() as u64, source))?;
            let from = (data_start - chunk.offset) as usize;
            let to = (chunk.offset + chunk.size).min(end) - chunk.offset;
            buf[hole..hole + (to as usize - from)].copy_from_slice(&data[from..to as usize]);
            filled = (hole + to as usize - from) as u64;
        }
        buf[filled as usize..].fill(0);
        self.read_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn failed(&self, index: usize, offset: u64, length: u64, source: StoreError) -> ReadError {
        self.failed_reads.fetch_add(1, Ordering::Relaxed);
        let err = ReadError { image: self.image, offset, length, source: Box::new(source) };
        if self.reported.lock().expect("never poisoned").insert(index) {
            eprintln!("diskc: serve: {err}; the client gets an I/O error");
        }
        err
    }

    pub fn stats(&self) -> ExportStats {
        ExportStats {
            size: self.file.size,
            clients: self.clients.load(Ordering::Relaxed),
            read_requests: self.read_requests.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            failed_reads: self.failed_reads.load(Ordering::Relaxed),
            fetched_bytes: self.source.fetched_bytes(),
            fetches: self.source.fetches(),
            cache: self.cache.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    /// Chunks held in memory; `bad` ones fail as a damaged chunk does.
    struct Memory {
        bad: Vec<Digest>,
        fetched: AtomicU64,
    }

    fn data(chunk: &ChunkRef) -> Vec<u8> {
        (0..chunk.size).map(|i| ((chunk.offset + i) % 251 + 1) as u8).collect()
    }

    impl ChunkSource for Memory {
        fn chunk(&self, chunk: &ChunkRef) -> Result<Vec<u8>, StoreError> {
            if self.bad.contains(&chunk.digest) {
                return Err(StoreError::CorruptChunk { digest: chunk.digest, reason: "test".into() });
            }
            self.fetched.fetch_add(chunk.size, Ordering::Relaxed);
            Ok(data(chunk))
        }
        fn fetched_bytes(&self) -> u64 {
            self.fetched.load(Ordering::Relaxed)
        }
    }

    fn chunk(offset: u64, size: u64) -> ChunkRef {
        ChunkRef { offset, size, digest: Digest::of(&offset.to_le_bytes()) }
    }

    /// 10000 bytes: chunks at [100, 1100) and [1100, 1600), a hole, [5000, 9000), a hole.
    fn export(bad: Vec<Digest>, cache: u64) -> Export {
        let file = StoredFile {
            size: 10_000,
            chunking: "cdc:64K".into(),
            chunks: vec![chunk(100, 1000), chunk(1100, 500), chunk(5000, 4000)],
        };
        let source = Arc::new(Memory { bad, fetched: AtomicU64::new(0) });
        Export::new(ImageId(Digest::of(b"img")), file, source, cache).unwrap()
    }

    /// The whole file as the store would export it.
    fn expected() -> Vec<u8> {
        let mut out = vec![0u8; 10_000];
        for c in [chunk(100, 1000), chunk(1100, 500), chunk(5000, 4000)] {
            out[c.offset as usize..(c.offset + c.size) as usize].copy_from_slice(&data(&c));
        }
        out
    }

    #[test]
    fn any_range_reads_as_the_exported_file() {
        let e = export(Vec::new(), 1 << 20);
        let whole = expected();
        for (offset, len) in [(0, 10_000), (0, 50), (90, 20), (1099, 2), (1500, 4000), (9999, 1), (3000, 100)]
        {
            let mut buf = vec![0xAA; len];
            e.read(offset as u64, &mut buf).unwrap();
            assert_eq!(buf, whole[offset..offset + len], "{offset}+{len}");
        }
    }

    #[test]
    fn holes_do_not_touch_the_store() {
        let e = export(Vec::new(), 1 << 20);
        let mut buf = vec![1u8; 3000];
        e.read(1700, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(e.stats().fetched_bytes, 0);
        assert_eq!(e.stats().cache.loads, 0);
    }

    #[test]
    fn a_damaged_chunk_fails_the_reads_that_need_it_only() {
        let e = export(vec![chunk(1100, 500).digest], 1 << 20);
        let err = e.read(1000, &mut [0u8; 200]).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
        e.read(0, &mut [0u8; 1000]).unwrap();
        e.read(1600, &mut [0u8; 1000]).unwrap();
        assert_eq!(e.stats().failed_reads, 1);
    }

    #[test]
    fn a_small_cache_still_serves_every_byte() {
        let e = export(Vec::new(), 1024);
        let whole = expected();
        for _ in 0..2 {
            let mut buf = vec![0u8; 10_000];
            e.read(0, &mut buf).unwrap();
            assert_eq!(buf, whole);
        }
        let stats = e.stats();
        assert!(stats.cache.bytes <= 1024 && stats.cache.loads == 6, "{stats:?}");
    }

    #[test]
    fn overlapping_chunks_are_refused() {
        let file = StoredFile { size: 100, chunking: "x".into(), chunks: vec![chunk(0, 60), chunk(50, 10)] };
        let source = Arc::new(Memory { bad: Vec::new(), fetched: AtomicU64::new(0) });
        assert!(Export::new(ImageId(Digest::of(b"i")), file, source, 1).is_err());
    }
}
