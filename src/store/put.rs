//! Putting an image into the store: files cut into chunks on a reading thread, the rootfs
//! hashed whole on another (when the caller has not), each batch hashed and its new chunks
//! compressed on every core (one zstd compressor per thread), the frames appended to packs
//! on a thread of their own (one fsync per pack, while the next batch is compressed), then
//! the manifest, once everything it references is durable.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use super::atomic::sweep_dead_temp_files;
use super::chunking::{self, RawChunk};
use super::packs::PackWriter;
use super::{
    ChunkRef, ImageId, ImageRecord, Store, StoreError, StoredFile, StoredImage, StoredRootfs, STORE_FORMAT,
};
use crate::digest::{Digest, FileDigest};
use crate::fileio::{self, is_zero};

/// zstd level for chunks: level 1 stores ext4 data about 3 % larger than level 3 at about
/// two thirds of its CPU time (measured on a 262 MiB Debian rootfs: 73 vs 71 MiB of packs,
/// put 1.1 vs 1.45 s), and decompression speed does not depend on it.
const ZSTD_LEVEL: i32 = 1;
/// Manifests are small and written once: a higher level is affordable.
const MANIFEST_ZSTD_LEVEL: i32 = 9;
/// Bytes of chunks per batch: enough work to keep every core busy. The stages hand batches on
/// without a queue between reader, whole-file hasher and pool, so about three raw batches
/// and two of frames are in flight: under 100 MiB.
const BATCH_BYTES: usize = 16 << 20;

thread_local! {
    /// One compressor per pool thread, reused for every chunk: making a zstd context per
    /// 64 KiB chunk costs about as much as compressing it.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// How far a put has come, in bytes of file data (holes excluded) hashed and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutProgress {
    pub done: u64,
    pub total: u64,
}

impl Store {
    /// Stores a rootfs image and boot files (`("kernel", path)`, `("initrd", path)`) and
    /// returns the image id. Storing the same inputs again returns the same id.
    pub fn put_image(
        &self,
        rootfs: &Path,
        boot_files: &[(&str, &Path)],
        record: ImageRecord,
    ) -> Result<ImageId, StoreError> {
        Ok(self.put_image_with_progress(rootfs, boot_files, record, &|_| {})?.id)
    }

    /// [`Store::put_image`], reporting progress after each batch of chunks. Without a
    /// `record.rootfs_digest`, the put hashes the rootfs as it reads it (one pass over the
    /// data instead of two) and returns the digest with the id.
    pub fn put_image_with_progress(
        &self,
        rootfs: &Path,
        boot_files: &[(&str, &Path)],
        record: ImageRecord,
        progress: &(dyn Fn(PutProgress) + Sync),
    ) -> Result<Stored, StoreError> {
        let _lock = self.shared_lock()?;
        sweep_dead_temp_files(&self.tmp_dir());
        // With the lock held, no gc runs until this put ends: what the index says is present
        // now stays present.
        self.refresh_packs()?;
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
        let mut rootfs_digest = record.rootfs_digest;
        let mut files = BTreeMap::new();
        let mut writer = PackWriter::new(self);
        for input in &inputs {
            let hash_whole = input.name.is_none() && rootfs_digest.is_none();
            let (stored, digest) = self.store_file(input, hash_whole, &mut writer, &mut |bytes| {
                done += bytes;
                progress(PutProgress { done, total });
            })?;
            rootfs_digest = rootfs_digest.or(digest);
            match input.name {
                None => rootfs_file = Some(stored),
                Some(name) => {
                    files.insert(name.to_string(), stored);
                }
            }
        }
        writer.seal()?;
        // Every pack, and its name, must be durable before a manifest can reference it; that
        // includes packs a concurrent put published and this one found chunks in.
        self.sync_packs_dir()?;
        let manifest = StoredImage {
            store_format: STORE_FORMAT,
            rootfs: StoredRootfs {
                uuid: record.uuid,
                digest: rootfs_digest,
                file: rootfs_file.expect("the rootfs is the first input"),
            },
            files,
            boot: record.boot,
            source: record.source,
            config: record.config,
            build: record.build,
        };
        let bytes = manifest.canonical_bytes();
        let id = manifest.id();
        let path = self.manifest_path(&id);
        // An existing manifest is this very image (its content hashes to its name); keeping
        // it keeps the image's creation time and the provenance of its first store.
        if !path.exists() {
            // Compressed: a manifest lists every chunk, and half of each entry is hex.
            let compressed =
                zstd::bulk::compress(&bytes, MANIFEST_ZSTD_LEVEL).map_err(StoreError::io(&path))?;
            self.write_atomic_durable(&path, &compressed)?;
        }
        // Into a remote store: what landed here goes there, manifest last.
        if self.upstream.is_some() {
            self.publish(&id, fs::read(&path).map_err(StoreError::io(&path))?)?;
        }
        Ok(Stored { id, rootfs_digest: rootfs_digest.expect("the rootfs is hashed unless given") })
    }

    /// Cuts `file` into chunks, stores the ones not yet present and returns the chunk list,
    /// with the whole file's BLAKE3 if `hash_whole`. The stages run at once: one thread reads
    /// and cuts, one hashes the whole file, the pool hashes and compresses a batch, and one
    /// thread appends the previous batch to the pack, so a pack's fsync stalls nothing.
    fn store_file(
        &self,
        input: &Input,
        hash_whole: bool,
        writer: &mut PackWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(StoredFile, Option<FileDigest>), StoreError> {
        let Input { path, file, size, extents, .. } = input;
        let chunking = self.chunking;
        // Hand-offs, not queues: each stage holds the batch it works on, and no more.
        let (send_read, receive_read) = sync_channel::<Vec<RawChunk>>(0);
        let (send, receive) = sync_channel::<Vec<RawChunk>>(0);
        let (send_prepared, receive_prepared) = sync_channel::<Vec<Prepared>>(1);
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
                        send_read
                            .send(std::mem::take(&mut batch))
                            .map_err(|_| io::Error::other("put stopped"))?;
                    }
                    Ok::<(), io::Error>(())
                });
                sent.and_then(|()| send_read.send(batch).map_err(|_| io::Error::other("put stopped")))
            });
            // The whole-file hash is sequential: a stage of its own, so that cutting (on the
            // reader) and hashing the whole (here) each take one core.
            let whole_hasher = scope.spawn(move || {
                let mut whole = hash_whole.then(WholeFile::default);
                for batch in receive_read {
                    if let Some(whole) = &mut whole {
                        for chunk in &batch {
                            whole.update(chunk.offset, &chunk.data);
                        }
                    }
                    if send.send(batch).is_err() {
                        return None; // storing failed: that error wins
                    }
                }
                whole.map(|w| w.finish(*size))
            });
            let appender = scope.spawn(move || {
                let mut chunks = Vec::new();
                for batch in receive_prepared {
                    for (chunk, frame) in batch {
                        if let (Some(chunk), Some(frame)) = (&chunk, frame) {
                            writer.append(chunk.digest, &frame, chunk.size as u32)?;
                        }
                        chunks.extend(chunk);
                    }
                }
                Ok::<_, StoreError>(chunks)
            });
            let prepared = (|| {
                for batch in receive {
                    let bytes: u64 = batch.iter().map(|c| c.data.len() as u64).sum();
                    let results: Vec<Prepared> = batch
                        .into_par_iter()
                        .map(|chunk| self.prepare_chunk(chunk))
                        .collect::<Result<_, _>>()?;
                    if send_prepared.send(results).is_err() {
                        break; // the appender failed: its error is the one to report
                    }
                    progress(bytes);
                }
                Ok::<(), StoreError>(())
            })();
            drop(send_prepared);
            // Dropping the receivers stops the other stages early when one fails.
            let appended = appender.join().expect("the pack appender does not panic");
            let whole = whole_hasher.join().expect("the whole-file hasher does not panic");
            let read = reader.join().expect("the chunk reader does not panic");
            prepared?;
            let chunks = appended?;
            read.map_err(StoreError::io(path))?;
            Ok((StoredFile { size: *size, chunking: chunking.to_string(), chunks }, whole))
        })
    }

    /// Hashes one chunk and, unless it is all zeros (recorded by its absence) or already
    /// stored, compresses it: the frame to append to a pack.
    fn prepare_chunk(&self, chunk: RawChunk) -> Result<Prepared, StoreError> {
        if is_zero(&chunk.data) {
            return Ok((None, None));
        }
        let digest = Digest::of(&chunk.data);
        let chunk_ref = ChunkRef { offset: chunk.offset, size: chunk.data.len() as u64, digest };
        if self.has_chunk(&digest) {
            return Ok((Some(chunk_ref), None));
        }
        let frame = COMPRESSOR
            .with(|cell| {
                let mut cell = cell.borrow_mut();
                let compressor = match &mut *cell {
                    Some(compressor) => compressor,
                    None => cell.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
                };
                compressor.compress(&chunk.data)
            })
            .map_err(StoreError::io(&self.tmp_dir()))?;
        Ok((Some(chunk_ref), Some(frame)))
    }
}

/// What a put returns: the image's id and its rootfs digest (given or computed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub id: ImageId,
    pub rootfs_digest: FileDigest,
}

/// A chunk as listed in the manifest (none if all zeros) and its frame, if it is new here.
type Prepared = (Option<ChunkRef>, Option<Vec<u8>>);

/// The BLAKE3 of a file hashed chunk by chunk in file order; holes hash as the zeros they
/// read as (the same digest as `pipeline::digest_file`).
#[derive(Default)]
struct WholeFile {
    hasher: blake3::Hasher,
    at: u64,
}

impl WholeFile {
    fn update(&mut self, offset: u64, data: &[u8]) {
        self.zeros_to(offset);
        self.hasher.update(data);
        self.at = offset + data.len() as u64;
    }

    fn zeros_to(&mut self, end: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while self.at < end {
            let n = (end - self.at).min(ZEROS.len() as u64);
            self.hasher.update(&ZEROS[..n as usize]);
            self.at += n;
        }
    }

    fn finish(mut self, size: u64) -> FileDigest {
        self.zeros_to(size);
        FileDigest::Blake3(self.hasher.finalize().into())
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
