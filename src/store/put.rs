//! Putting an image into the store: files cut into chunks on a reading thread, the rootfs
//! hashed MiB by MiB on another (its digest and its block map, see `blocks`), each batch
//! hashed and its new chunks compressed on every core (one zstd compressor per thread), the
//! frames appended to packs on a thread of their own (one fsync per pack, while the next
//! batch is compressed), then the manifest, once everything it references is durable. Given
//! a base image, the rootfs's MiBs are hashed first, and the base's chunks in the MiBs the two
//! share are taken without being read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use blake3::hazmat::ChainingValue;
use rayon::prelude::*;

use super::atomic::sweep_dead_temp_files;
use super::blocks::{self, root_digest, BlockHasher, BlockMap};
use super::chunking::{self, Chunking, Piece, RawChunk, Reuse};
use super::packs::PackWriter;
use super::{
    ChunkRef, ImageId, ImageRecord, LaidLayer, ReadAt, RootfsView, Store, StoreError, StoredFile,
    StoredImage, StoredRootfs, STORE_FORMAT,
};
use crate::digest::{Digest, FileDigest};
use crate::fileio::is_zero;

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
/// Pieces per batch at most: a run of a base's chunks, taken without reading, is handed on
/// in batches too, for progress.
const BATCH_PIECES: usize = 4096;

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

    /// [`Store::put_image`], reporting progress after each batch of chunks. The put hashes
    /// the rootfs as it reads it (one pass over the data), for its block map and, unless
    /// `record.rootfs_digest` gives it, its digest, returned with the id.
    pub fn put_image_with_progress(
        &self,
        rootfs: &Path,
        boot_files: &[(&str, &Path)],
        record: ImageRecord,
        progress: &(dyn Fn(PutProgress) + Sync),
    ) -> Result<Stored, StoreError> {
        self.put_image_like(rootfs, boot_files, record, None, &[], progress)
    }

    /// [`Store::put_image_with_progress`] for a rootfs that resembles image `base`'s (the
    /// same lower layers, say): where a MiB holds the same bytes as the base's, the base's
    /// chunks there are taken without being cut, hashed or compressed again. The image stored
    /// is the same as without a base; a base that is gone, or has no block map, only costs
    /// that saving.
    pub fn put_image_like(
        &self,
        rootfs: &Path,
        boot_files: &[(&str, &Path)],
        record: ImageRecord,
        base: Option<&ImageId>,
        laid: &[LaidLayer],
        progress: &(dyn Fn(PutProgress) + Sync),
    ) -> Result<Stored, StoreError> {
        let _lock = self.shared_lock()?;
        sweep_dead_temp_files(&self.tmp_dir());
        // With the lock held, no gc runs until this put ends: what the index says is present
        // now stays present, the base's chunks included.
        self.refresh_packs()?;
        let mut inputs = Vec::new();
        for (name, path) in
            std::iter::once((None, rootfs)).chain(boot_files.iter().map(|(n, p)| (Some(*n), *p)))
        {
            let file = File::open(path).map_err(StoreError::io(path))?;
            let size = file.metadata().map_err(StoreError::io(path))?.len();
            // The laid layers are the rootfs's.
            let data = RootfsView::new(file, if name.is_none() { laid } else { &[] });
            let extents = data.extents(size).map_err(StoreError::io(path))?;
            inputs.push(Input { name, path, data, size, extents });
        }
        let total = inputs.iter().flat_map(|i| &i.extents).map(|r| r.end - r.start).sum();
        let mut done = 0;
        let mut rootfs_file = None;
        let mut rootfs_digest = record.rootfs_digest;
        let mut rootfs_values = Vec::new();
        let mut reused = 0;
        let mut files = BTreeMap::new();
        let mut writer = PackWriter::new(self);
        for input in &inputs {
            let mut report = |bytes| {
                done += bytes;
                progress(PutProgress { done, total });
            };
            let like = match input.name {
                None => self.like_base(input, base)?,
                Some(_) => None,
            };
            let reuse = like.as_ref().map(Like::reuse);
            // The rootfs's MiBs are hashed as it is read, unless comparing them with the
            // base's hashed them already.
            let hash_blocks = input.name.is_none() && like.is_none();
            let stored = self.store_file(input, reuse.as_ref(), hash_blocks, &mut writer, &mut report)?;
            match input.name {
                None => {
                    let (digest, values) = match (stored.hashed, like) {
                        (Some(hashed), _) => hashed,
                        (None, Some(like)) => (root_digest(&like.values, input.size), like.values),
                        (None, None) => unreachable!("the rootfs is hashed one way or the other"),
                    };
                    rootfs_digest = rootfs_digest.or(Some(digest));
                    rootfs_values = values;
                    reused = stored.reused;
                    rootfs_file = Some(stored.file);
                }
                Some(name) => {
                    files.insert(name.to_string(), stored.file);
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
        // A block map serves later puts into this store; a remote store's puts start cold.
        if !rootfs_values.is_empty() && self.upstream.is_none() {
            let rootfs = &inputs[0];
            let values = rootfs_values.clone();
            let map = BlockMap { size: rootfs.size, extents: rootfs.extents.clone(), values };
            self.save_block_map(&id, &map);
        }
        // Into a remote store: what landed here goes there, manifest last.
        if self.upstream.is_some() {
            self.publish(&id, fs::read(&path).map_err(StoreError::io(&path))?)?;
        }
        let rootfs_digest = rootfs_digest.expect("the rootfs is hashed unless given");
        Ok(Stored { id, rootfs_digest, rootfs_values, reused })
    }

    /// What the put of `input` can take from `base`: its chunks and block map, and the
    /// chaining values of `input`'s MiBs (computed here, on every core, to find which MiBs
    /// the two share). None where the base cannot help.
    fn like_base(&self, input: &Input, base: Option<&ImageId>) -> Result<Option<Like>, StoreError> {
        let Some(base) = base else { return Ok(None) };
        let cdc = matches!(self.chunking, Chunking::Cdc(_));
        if !cdc || self.upstream.is_some() || input.size <= blocks::BLOCK {
            return Ok(None);
        }
        let Ok(image) = self.image(base) else { return Ok(None) };
        let Some(map) = self.block_map(base, image.rootfs.file.size) else { return Ok(None) };
        if image.rootfs.file.chunking != self.chunking.to_string() {
            return Ok(None);
        }
        let known = |index| input.data.known_value(index);
        let values = blocks::file_values(&input.data, input.size, &input.extents, &known)
            .map_err(StoreError::io(input.path))?;
        let same = values.iter().enumerate().map(|(i, v)| map.values.get(i) == Some(v)).collect();
        let chunks = image.rootfs.file.chunks.into_iter().map(|c| (c.offset, c)).collect();
        Ok(Some(Like { same, chunks, extents: map.extents, values }))
    }

    /// Cuts `file` into chunks (taking `reuse`'s where it can), stores the ones not yet
    /// present and returns the chunk list, with the file's BLAKE3 and the chaining values of
    /// its MiBs if `hash_blocks`. The stages run at once: one thread reads and cuts, one
    /// hashes the file, the pool hashes and compresses a batch, and one thread appends the
    /// previous batch to the pack, so a pack's fsync stalls nothing.
    fn store_file(
        &self,
        input: &Input,
        reuse: Option<&Reuse<'_>>,
        hash_blocks: bool,
        writer: &mut PackWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<FileStored, StoreError> {
        let Input { path, data: file, size, extents, .. } = input;
        let chunking = self.chunking;
        // Hand-offs, not queues: each stage holds the batch it works on, and no more.
        let (send_read, receive_read) = sync_channel::<Vec<Piece>>(0);
        let (send, receive) = sync_channel::<Vec<Piece>>(0);
        let (send_prepared, receive_prepared) = sync_channel::<Vec<Prepared>>(1);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut batch = Vec::new();
                let (mut bytes, mut known) = (0, 0);
                let mut take = |piece: Piece| {
                    match &piece {
                        Piece::Read(chunk) => bytes += chunk.data.len(),
                        Piece::Known(chunk) => known += chunk.size,
                    }
                    batch.push(piece);
                    if bytes >= BATCH_BYTES || batch.len() >= BATCH_PIECES {
                        bytes = 0;
                        // The receiver is gone only when storing failed; that error wins.
                        send_read
                            .send(std::mem::take(&mut batch))
                            .map_err(|_| io::Error::other("put stopped"))?;
                    }
                    Ok::<(), io::Error>(())
                };
                chunking::read_chunks(file, *size, extents, chunking, reuse, &mut take)?;
                send_read.send(batch).map_err(|_| io::Error::other("put stopped"))?;
                Ok(known)
            });
            // The file's hash is sequential: a stage of its own, so that cutting (on the
            // reader) and hashing (here) each take one core.
            let block_hasher = scope.spawn(move || {
                let mut hasher = hash_blocks.then(BlockHasher::default);
                for batch in receive_read {
                    if let Some(hasher) = &mut hasher {
                        for piece in &batch {
                            if let Piece::Read(chunk) = piece {
                                hasher.update(chunk.offset, &chunk.data);
                            }
                        }
                    }
                    if send.send(batch).is_err() {
                        return None; // storing failed: that error wins
                    }
                }
                hasher.map(|h| h.finish(*size))
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
                    let bytes: u64 = batch.iter().map(Piece::bytes).sum();
                    let results: Vec<Prepared> = batch
                        .into_par_iter()
                        .map(|piece| match piece {
                            Piece::Read(chunk) => self.prepare_chunk(chunk),
                            Piece::Known(chunk) => {
                                self.prepare_known(file, chunk).map_err(StoreError::io(path))
                            }
                        })
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
            let hashed = block_hasher.join().expect("the block hasher does not panic");
            let read = reader.join().expect("the chunk reader does not panic");
            prepared?;
            let chunks = appended?;
            let reused = read.map_err(StoreError::io(path))?;
            Ok(FileStored {
                file: StoredFile { size: *size, chunking: chunking.to_string(), chunks },
                hashed,
                reused,
            })
        })
    }

    /// A base's chunk taken as it is, if the store still has it; read from the file and
    /// stored again if not (a base damaged since it was stored).
    fn prepare_known(&self, file: &dyn ReadAt, chunk: ChunkRef) -> io::Result<Prepared> {
        if self.has_chunk(&chunk.digest) {
            return Ok((Some(chunk), None));
        }
        let mut data = vec![0; chunk.size as usize];
        file.read_bytes_at(&mut data, chunk.offset)?;
        self.prepare_chunk(RawChunk { offset: chunk.offset, data }).map_err(io::Error::other)
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

/// What a put returns: the image's id, its rootfs digest (given or computed), the chaining
/// values of the rootfs's MiBs (see `blocks`), and how many bytes of the rootfs were taken
/// from the base image without being read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub id: ImageId,
    pub rootfs_digest: FileDigest,
    pub rootfs_values: Vec<ChainingValue>,
    pub reused: u64,
}

/// A chunk as listed in the manifest (none if all zeros) and its frame, if it is new here.
type Prepared = (Option<ChunkRef>, Option<Vec<u8>>);

/// A file stored: its chunks, its hash and its MiBs' chaining values (if asked for), and the
/// bytes taken from a base without being read.
struct FileStored {
    file: StoredFile,
    hashed: Option<(FileDigest, Vec<ChainingValue>)>,
    reused: u64,
}

/// A base image, as a put of a rootfs like its own sees it (see [`Store::put_image_like`]).
struct Like {
    /// Per MiB of the new rootfs: whether the base holds the same bytes there.
    same: Vec<bool>,
    chunks: BTreeMap<u64, ChunkRef>,
    extents: Vec<std::ops::Range<u64>>,
    /// The new rootfs's chaining values.
    values: Vec<ChainingValue>,
}

impl Like {
    fn reuse(&self) -> Reuse<'_> {
        Reuse { same: &self.same, chunks: &self.chunks, extents: &self.extents }
    }
}

/// A file to put: its name among the boot files (none for the rootfs) and where its data is.
struct Input<'a> {
    name: Option<&'a str>,
    path: &'a Path,
    data: RootfsView<'a>,
    size: u64,
    extents: Vec<std::ops::Range<u64>>,
}
