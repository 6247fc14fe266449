//! Block maps: what a put learned about an image's rootfs that a later put of a similar image
//! can use without reading it again — the file's data extents and the BLAKE3 chaining value
//! of each MiB, kept beside the manifest (`images/<id>.blocks`).
//!
//! The rootfs digest is BLAKE3, a tree hash: the chaining value of a MiB depends only on its
//! bytes and its offset, and the whole file's hash is those values merged. A put given a base
//! image hashes each MiB of the new file (on every core), and where a MiB's value equals the
//! base's at the same offset, the two files hold the same bytes there: the base's chunks
//! that lie in such MiBs are taken as they are, without being cut, hashed or compressed
//! again (see `put`). The extents tell where the base's chunker restarted, which decides
//! whether its cuts are the ones this file's chunker would make.
//!
//! A block map is a cache, local only: a missing or damaged one costs a full put.

use std::fs;
use std::io;
use std::ops::Range;
use std::path::PathBuf;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
use rayon::prelude::*;

use super::view::ReadAt;
use super::{ImageId, Store};
use crate::digest::FileDigest;

/// The span of one chaining value: a whole BLAKE3 subtree (1024 chunks).
pub const BLOCK: u64 = 1 << 20;

const MAGIC: &[u8; 16] = b"diskc-blocks-v1\n";

/// A rootfs's data extents and the chaining value of each of its MiBs (none for a file of
/// one MiB or less, whose hash has no subtrees).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    pub size: u64,
    pub extents: Vec<Range<u64>>,
    pub values: Vec<ChainingValue>,
}

impl BlockMap {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 16 * self.extents.len() + 32 * self.values.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.start.to_le_bytes());
            out.extend_from_slice(&e.end.to_le_bytes());
        }
        for v in &self.values {
            out.extend_from_slice(v);
        }
        out
    }

    /// Parses a block map, checking that it describes a file of `size` bytes.
    pub fn decode(bytes: &[u8], size: u64) -> Option<BlockMap> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        let word =
            |at: usize| -> Option<u64> { Some(u64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?)) };
        if word(0)? != size {
            return None;
        }
        let count = usize::try_from(word(8)?).ok()?;
        let values_at = count.checked_mul(16)?.checked_add(16)?;
        let mut extents = Vec::with_capacity(count.min(rest.len() / 16));
        let mut end = 0;
        for i in 0..count {
            let (start, stop) = (word(16 + 16 * i)?, word(24 + 16 * i)?);
            if start < end || stop <= start || stop > size {
                return None;
            }
            end = stop;
            extents.push(start..stop);
        }
        let values_bytes = rest.get(values_at..)?;
        if values_bytes.len() as u64 != 32 * block_count(size) {
            return None;
        }
        let values = values_bytes.chunks_exact(32).map(|v| v.try_into().expect("32 bytes")).collect();
        Some(BlockMap { size, extents, values })
    }
}

impl Store {
    fn block_map_path(&self, id: &ImageId) -> PathBuf {
        self.root.join("images").join(format!("{id}.blocks"))
    }

    /// Image `id`'s block map, if it has a sound one for a rootfs of `size` bytes.
    pub(super) fn block_map(&self, id: &ImageId, size: u64) -> Option<BlockMap> {
        let bytes = fs::read(self.block_map_path(id)).ok()?;
        let map = BlockMap::decode(&bytes, size);
        if map.is_none() {
            tracing::warn!("the block map of image {} is damaged; putting without it", id.short());
        }
        map
    }

    /// Keeps image `id`'s block map. A cache: written atomically (a crash leaves the whole
    /// map or none), and a failure to write it is only a warning.
    pub(super) fn save_block_map(&self, id: &ImageId, map: &BlockMap) {
        if let Err(e) = self.write_atomic(&self.block_map_path(id), &map.encode()) {
            tracing::warn!("cannot keep the block map of image {}: {e}", id.short());
        }
    }
}

/// How many chaining values a file of `size` bytes has: one per MiB begun, none at all for
/// a file of one MiB or less.
pub fn block_count(size: u64) -> u64 {
    if size <= BLOCK {
        0
    } else {
        size.div_ceil(BLOCK)
    }
}

/// The chaining value of the MiB numbered `index` of a file, given its bytes (a whole MiB,
/// or less for the last).
pub fn block_value(index: u64, bytes: &[u8]) -> ChainingValue {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * BLOCK);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// The chaining values of every MiB of `file`, whose data lies at `extents` (holes hash as
/// the zeros they are, without being read), computed on every core.
pub fn file_values(
    file: &dyn ReadAt,
    size: u64,
    extents: &[Range<u64>],
    known: &(dyn Fn(u64) -> Option<ChainingValue> + Sync),
) -> io::Result<Vec<ChainingValue>> {
    (0..block_count(size))
        .into_par_iter()
        .map_init(
            || vec![0u8; BLOCK as usize],
            |buf, index| match known(index) {
                Some(value) => Ok(value),
                None => Ok(block_value(index, read_block(file, size, extents, index, buf)?)),
            },
        )
        .collect()
}

/// The BLAKE3 of `file` (data at `extents`, holes as zeros), hashed on every core: the same
/// digest as a put records.
pub fn file_digest(file: &dyn ReadAt, size: u64, extents: &[Range<u64>]) -> io::Result<FileDigest> {
    if size <= BLOCK {
        let mut buf = vec![0u8; size as usize];
        let bytes = read_block(file, size, extents, 0, &mut buf)?;
        return Ok(FileDigest::Blake3(blake3::hash(bytes).into()));
    }
    Ok(root_digest(&file_values(file, size, extents, &|_| None)?, size))
}

/// MiB `index` of the file into `buf`: zeros, and the data `extents` hold there read in.
fn read_block<'b>(
    file: &dyn ReadAt,
    size: u64,
    extents: &[Range<u64>],
    index: u64,
    buf: &'b mut [u8],
) -> io::Result<&'b [u8]> {
    let block = index * BLOCK..((index + 1) * BLOCK).min(size);
    let buf = &mut buf[..(block.end - block.start) as usize];
    buf.fill(0);
    for e in &extents[extents.partition_point(|e| e.end <= block.start)..] {
        if e.start >= block.end {
            break;
        }
        let (from, to) = (e.start.max(block.start), e.end.min(block.end));
        file.read_bytes_at(&mut buf[(from - block.start) as usize..(to - block.start) as usize], from)?;
    }
    Ok(buf)
}

/// The BLAKE3 hash of a file of `size` bytes (more than a MiB) from the chaining values of
/// its MiBs, merged as BLAKE3's tree merges them (each left subtree a power of two, here a
/// power of two of MiBs).
pub fn root_digest(values: &[ChainingValue], size: u64) -> FileDigest {
    assert!(
        size > BLOCK && values.len() as u64 == block_count(size),
        "one value per MiB of a file over a MiB"
    );
    let split = blake3::hazmat::left_subtree_len(size);
    let left = subtree(values, 0, split);
    let right = subtree(values, split, size);
    FileDigest::Blake3(merge_subtrees_root(&left, &right, Mode::Hash).into())
}

/// The chaining value of the subtree covering bytes `start..end` (start a multiple of the
/// subtree's size, as BLAKE3's tree makes it).
fn subtree(values: &[ChainingValue], start: u64, end: u64) -> ChainingValue {
    if end - start <= BLOCK {
        return values[(start / BLOCK) as usize];
    }
    let split = start + blake3::hazmat::left_subtree_len(end - start);
    merge_subtrees_non_root(&subtree(values, start, split), &subtree(values, split, end), Mode::Hash)
}

/// Hashes a file fed in file order, pieces of data with holes between them: the chaining
/// value of each MiB, and the whole file's hash at the end (the same as [`file_digest`]).
pub struct BlockHasher {
    /// The MiB being hashed: the one `at` lies in, or the one that ends at `at`.
    hasher: blake3::Hasher,
    /// The next byte to hash.
    at: u64,
    values: Vec<ChainingValue>,
}

impl Default for BlockHasher {
    fn default() -> Self {
        BlockHasher { hasher: blake3::Hasher::new(), at: 0, values: Vec::new() }
    }
}

impl BlockHasher {
    /// Hashes `data`, found at `offset` (at or after the end of what came before); the gap
    /// before it hashes as zeros.
    pub fn update(&mut self, offset: u64, data: &[u8]) {
        self.zeros_to(offset);
        let mut data = data;
        while !data.is_empty() {
            let n = self.room().min(data.len() as u64) as usize;
            self.hasher.update(&data[..n]);
            self.at += n as u64;
            data = &data[n..];
        }
    }

    fn zeros_to(&mut self, end: u64) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        while self.at < end {
            let n = self.room().min(end - self.at).min(ZEROS.len() as u64);
            self.hasher.update(&ZEROS[..n as usize]);
            self.at += n;
        }
    }

    /// Bytes left in the current MiB. A full MiB is closed only when the next byte comes:
    /// until then it may be the whole file, whose hash is a root, not a chaining value.
    fn room(&mut self) -> u64 {
        if self.at > 0 && self.at % BLOCK == 0 && self.values.len() as u64 * BLOCK < self.at {
            self.values.push(self.hasher.finalize_non_root());
            self.hasher = blake3::Hasher::new();
            self.hasher.set_input_offset(self.at);
        }
        BLOCK - self.at % BLOCK
    }

    /// The hash of the file of `size` bytes, and the chaining values of its MiBs (none for
    /// a file of a MiB or less).
    pub fn finish(mut self, size: u64) -> (FileDigest, Vec<ChainingValue>) {
        self.zeros_to(size);
        if size <= BLOCK {
            return (FileDigest::Blake3(self.hasher.finalize().into()), Vec::new());
        }
        self.values.push(self.hasher.finalize_non_root());
        let digest = root_digest(&self.values, size);
        (digest, self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn merged_values_give_blake3_of_the_whole_file() {
        let sizes =
            [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 5, 8 * BLOCK, 9 * BLOCK + 4096];
        for size in sizes {
            // Zeros in the middle, left out of what the hasher is fed: a hole.
            let hole = size / 3..size / 3 + (size / 3).min(3 * BLOCK / 2);
            let mut data = pattern(size);
            data[hole.start as usize..hole.end as usize].fill(0);
            let mut hasher = BlockHasher::default();
            for part in [0..hole.start, hole.end..size] {
                for at in part.clone().step_by(300_007) {
                    let end = (at + 300_007).min(part.end);
                    hasher.update(at, &data[at as usize..end as usize]);
                }
            }
            let (digest, values) = hasher.finish(size);
            assert_eq!(digest, FileDigest::Blake3(blake3::hash(&data).into()), "size {size}");
            assert_eq!(values.len() as u64, block_count(size), "size {size}");
            for (index, value) in values.iter().enumerate() {
                let start = index as u64 * BLOCK;
                let bytes = &data[start as usize..(start + BLOCK).min(size) as usize];
                assert_eq!(*value, block_value(index as u64, bytes), "size {size}, MiB {index}");
            }
            if size > BLOCK {
                assert_eq!(root_digest(&values, size), digest, "size {size}");
            }
        }
    }

    #[test]
    fn block_maps_round_trip_and_reject_what_does_not_fit() {
        let size = 3 * BLOCK + 10;
        let map = BlockMap {
            size,
            extents: vec![0..4096, BLOCK..size],
            values: (0..4).map(|i| [i as u8; 32]).collect(),
        };
        let bytes = map.encode();
        assert_eq!(BlockMap::decode(&bytes, size), Some(map.clone()));
        assert_eq!(BlockMap::decode(&bytes, size + 1), None, "another size");
        assert_eq!(BlockMap::decode(&bytes[..bytes.len() - 1], size), None, "truncated");
        let mut bad = map.clone();
        bad.extents = vec![BLOCK..size, 0..4096];
        assert_eq!(BlockMap::decode(&bad.encode(), size), None, "extents out of order");
    }
}
