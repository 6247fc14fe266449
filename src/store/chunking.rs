//! Cutting a file into chunks: where its data is (holes are never read), and where the
//! chunk boundaries fall.
//!
//! Two strategies, recorded in each manifest so that any image can be reassembled whatever
//! the store's current choice (see `docs/chunking.md` for the measurements behind the
//! default):
//! - `cdc:AVG` (the default, `cdc:64K`) cuts where the content says (FastCDC 2020, min AVG/4,
//!   max AVG×4), so content that moved between two images (a deleted directory shifts all
//!   data after it) still lands in the same chunks.
//! - `fixed:SIZE` cuts at multiples of SIZE from the start of the file. It needs no pass to
//!   find boundaries, but shares only what sits at the same offset in both images.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::str::FromStr;

use fastcdc::v2020::StreamCDC;

use super::blocks::BLOCK;
use super::view::ReadAt;
use super::ChunkRef;

/// How a store cuts files into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// Boundaries at every multiple of the size, counted from the start of the file.
    Fixed(u64),
    /// Content-defined boundaries with this average size.
    Cdc(u64),
}

impl Chunking {
    /// The store's default; see `docs/chunking.md`.
    pub const DEFAULT: Chunking = Chunking::Cdc(64 << 10);

    /// The largest chunk this strategy makes, which bounds memory per chunk in flight.
    pub fn max_chunk(self) -> u64 {
        match self {
            Chunking::Fixed(size) => size,
            Chunking::Cdc(avg) => avg * 4,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid chunking {0:?}: expected fixed:SIZE or cdc:SIZE, SIZE a power of two from 4K to 4M (suffix K or M)")]
pub struct ParseChunkingError(pub String);

impl FromStr for Chunking {
    type Err = ParseChunkingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseChunkingError(s.to_string());
        let (kind, size) = s.split_once(':').ok_or_else(err)?;
        let (digits, unit) = match size.as_bytes().last() {
            Some(b'K') => (&size[..size.len() - 1], 1 << 10),
            Some(b'M') => (&size[..size.len() - 1], 1 << 20),
            _ => (size, 1),
        };
        let bytes = digits.parse::<u64>().map_err(|_| err())?.checked_mul(unit).ok_or_else(err)?;
        if !bytes.is_power_of_two() || !(4 << 10..=4 << 20).contains(&bytes) {
            return Err(err());
        }
        match kind {
            "fixed" => Ok(Chunking::Fixed(bytes)),
            "cdc" => Ok(Chunking::Cdc(bytes)),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Chunking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, size) = match *self {
            Chunking::Fixed(size) => ("fixed", size),
            Chunking::Cdc(size) => ("cdc", size),
        };
        if size % (1 << 20) == 0 {
            write!(f, "{kind}:{}M", size >> 20)
        } else {
            write!(f, "{kind}:{}K", size >> 10)
        }
    }
}

/// One fixed-size chunk: its range in the file and the parts of it that hold data (the rest
/// is hole, filled with zeros without reading).
#[derive(Debug, PartialEq, Eq)]
pub struct FixedChunk {
    pub range: Range<u64>,
    pub reads: Vec<Range<u64>>,
}

/// The fixed-size chunks that hold any data, in file order.
pub fn fixed_plan(extents: &[Range<u64>], size: u64, chunk: u64) -> Vec<FixedChunk> {
    let mut plan: Vec<FixedChunk> = Vec::new();
    for extent in extents {
        let mut at = extent.start;
        while at < extent.end {
            let index = at / chunk;
            let range = index * chunk..((index + 1) * chunk).min(size);
            let read = at..extent.end.min(range.end);
            match plan.last_mut() {
                Some(last) if last.range == range => last.reads.push(read.clone()),
                _ => plan.push(FixedChunk { range, reads: vec![read.clone()] }),
            }
            at = read.end;
        }
    }
    plan
}

/// A chunk's place in the file and its bytes.
pub struct RawChunk {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Reads `file`'s data (at `extents`, from [`crate::fileio::data_extents`]) as chunks, in
/// file order, handing each to `sink`. Holes are never read; chunks made only of hole are not
/// produced. With content-defined chunking, `reuse` gives a base image's chunks, taken
/// unread where they are the chunks this file's chunker makes.
pub fn read_chunks<E: From<io::Error>>(
    file: &dyn ReadAt,
    size: u64,
    extents: &[Range<u64>],
    chunking: Chunking,
    reuse: Option<&Reuse<'_>>,
    mut sink: impl FnMut(Piece) -> Result<(), E>,
) -> Result<(), E> {
    match chunking {
        Chunking::Fixed(chunk) => {
            for planned in fixed_plan(extents, size, chunk) {
                let mut data = vec![0u8; (planned.range.end - planned.range.start) as usize];
                for read in &planned.reads {
                    let from = (read.start - planned.range.start) as usize;
                    let to = (read.end - planned.range.start) as usize;
                    file.read_bytes_at(&mut data[from..to], read.start)?;
                }
                sink(Piece::Read(RawChunk { offset: planned.range.start, data }))?;
            }
            Ok(())
        }
        Chunking::Cdc(avg) => read_cdc(file, extents, avg, reuse, sink),
    }
}

/// What a put may take from a base image whose rootfs resembles the file being put: which
/// MiBs hold the same bytes in both (see `blocks`), the base's chunks by offset, and the
/// base's data extents (where its chunker restarted).
pub struct Reuse<'a> {
    pub same: &'a [bool],
    pub chunks: &'a BTreeMap<u64, ChunkRef>,
    pub extents: &'a [Range<u64>],
}

impl Reuse<'_> {
    /// The base's chunk at `at`, if it is the chunk this file's chunker makes from `at` (a
    /// cut, in `extent`): a chunk starts afresh at each cut, so the same bytes give the same
    /// next cut, as long as the chunker sees the same window — both extents reach at least
    /// the largest chunk past `at`, or both end at the same place. The bytes that decide a
    /// cut include the first one past it (FastCDC hashes a byte, then cuts before it), so
    /// the MiB holding that byte must be the same too.
    fn chunk_at(&self, at: u64, extent: &Range<u64>, max: u64) -> Option<ChunkRef> {
        let chunk = self.chunks.get(&at).filter(|c| c.size > 0)?;
        let end = chunk.offset + chunk.size;
        let base_extent = self.extents.get(self.extents.partition_point(|e| e.end <= at))?;
        let decided_by = at..(end + 1).min(extent.end);
        let same_bytes = (decided_by.start / BLOCK..decided_by.end.div_ceil(BLOCK))
            .all(|i| self.same.get(i as usize) == Some(&true));
        let same_window =
            (extent.end - at >= max && base_extent.end - at >= max) || extent.end == base_extent.end;
        (end <= extent.end && base_extent.start <= at && same_bytes && same_window).then(|| chunk.clone())
    }
}

/// A piece of a file as a put takes it: read and cut here, or a base's chunk taken whole.
pub enum Piece {
    Read(RawChunk),
    Known(ChunkRef),
}

impl Piece {
    /// The bytes of the file it stands for.
    pub fn bytes(&self) -> u64 {
        match self {
            Piece::Read(chunk) => chunk.data.len() as u64,
            Piece::Known(chunk) => chunk.size,
        }
    }
}

/// Content-defined chunks, each extent cut afresh from its start; where a cut lands on a
/// chunk `reuse` says is this file's, that chunk is taken and the cutting resumes after it.
fn read_cdc<E: From<io::Error>>(
    file: &dyn ReadAt,
    extents: &[Range<u64>],
    avg: u64,
    reuse: Option<&Reuse<'_>>,
    mut sink: impl FnMut(Piece) -> Result<(), E>,
) -> Result<(), E> {
    let (min, max) = (avg / 4, avg * 4);
    let known = |at, extent: &Range<u64>| reuse.and_then(|r| r.chunk_at(at, extent, max));
    for extent in extents {
        let mut at = extent.start;
        while at < extent.end {
            while let Some(chunk) = known(at, extent) {
                at = chunk.offset + chunk.size;
                sink(Piece::Known(chunk))?;
            }
            if at == extent.end {
                break;
            }
            // Cut from here until a cut lands where the base's chunks can be taken again.
            let from = at;
            let reader = RangeReader { file, pos: from, end: extent.end };
            for piece in StreamCDC::new(reader, min as usize, avg as usize, max as usize) {
                let piece = piece.map_err(io::Error::from)?;
                at = from + piece.offset + piece.length as u64;
                sink(Piece::Read(RawChunk { offset: from + piece.offset, data: piece.data }))?;
                if known(at, extent).is_some() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Reads one byte range of a file, in positioned reads.
struct RangeReader<'a> {
    file: &'a dyn ReadAt,
    pos: u64,
    end: u64,
}

impl io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        self.file.read_bytes_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    /// A base's chunk ending on a MiB boundary inside an extent was cut there partly because
    /// of the byte after it, in the next MiB: where that MiB differs, the chunk is not taken.
    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a base of one extent: a list of one range
    fn a_base_chunk_is_taken_only_if_the_byte_past_it_is_the_same() {
        const MIB: u64 = BLOCK;
        let chunk = ChunkRef { offset: MIB - 4096, size: 4096, digest: Digest::of(b"x") };
        let chunks = BTreeMap::from([(chunk.offset, chunk.clone())]);
        let extents = [0..3 * MIB];
        let reuse = |same: &'static [bool]| Reuse { same, chunks: &chunks, extents: &extents };
        let (at, max) = (chunk.offset, 256 << 10);
        assert_eq!(reuse(&[true, true, true]).chunk_at(at, &(0..3 * MIB), max), Some(chunk.clone()));
        assert_eq!(
            reuse(&[true, false, true]).chunk_at(at, &(0..3 * MIB), max),
            None,
            "the next MiB differs"
        );
        assert_eq!(reuse(&[false, true, true]).chunk_at(at, &(0..3 * MIB), max), None, "its own MiB differs");
        // Where both extents end with the chunk, no byte past it took part.
        let extents = [0..MIB];
        let ends = Reuse { same: &[true, false], chunks: &chunks, extents: &extents };
        assert_eq!(ends.chunk_at(at, &(0..MIB), max), Some(chunk.clone()));
        // A chunk of no bytes (a damaged manifest) is never taken: it would not move the cut.
        let empty = ChunkRef { size: 0, ..chunk };
        let chunks = BTreeMap::from([(empty.offset, empty)]);
        let damaged = Reuse { same: &[true, true, true], chunks: &chunks, extents: &extents };
        assert_eq!(damaged.chunk_at(at, &(0..MIB), max), None);
    }

    #[test]
    fn chunking_parses_and_prints_round_trip() {
        for text in ["fixed:1M", "fixed:256K", "cdc:256K", "cdc:4M"] {
            assert_eq!(text.parse::<Chunking>().unwrap().to_string(), text);
        }
        assert_eq!("fixed:1M".parse::<Chunking>().unwrap(), Chunking::Fixed(1 << 20));
        for bad in ["fixed", "fixed:3K", "cdc:1K", "cdc:8M", "rabin:1M", "fixed:xM"] {
            assert!(bad.parse::<Chunking>().is_err(), "{bad}");
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // each chunk here has one read: a list of one range
    fn fixed_plan_covers_data_and_skips_holes() {
        const M: u64 = 1 << 20;
        // Data in [0, 4K), [1.5M, 2.5M) and the last partial chunk; chunk 3 is all hole.
        let extents = [0..4096, 3 * M / 2..5 * M / 2, 4 * M..4 * M + 10];
        let plan = fixed_plan(&extents, 4 * M + 10, M);
        let expect = vec![
            FixedChunk { range: 0..M, reads: vec![0..4096] },
            FixedChunk { range: M..2 * M, reads: vec![3 * M / 2..2 * M] },
            FixedChunk { range: 2 * M..3 * M, reads: vec![2 * M..5 * M / 2] },
            FixedChunk { range: 4 * M..4 * M + 10, reads: vec![4 * M..4 * M + 10] },
        ];
        assert_eq!(plan, expect);
    }

    #[test]
    fn fixed_plan_of_a_file_without_data_is_empty() {
        assert!(fixed_plan(&[], 1 << 30, 1 << 20).is_empty());
    }
}
