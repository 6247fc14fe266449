//! The spool: where a layer's file data goes while the layer streams, so each layer is
//! decompressed once.
//!
//! Every layer of an image spools into one file, the file the ext4 image is then written
//! into, each layer in its own slot, far enough apart that no layer runs into the next.
//! Blocks that are all zeros are never written, and files of 1 MiB or more start on a MiB.
//! Once the layers are merged, [`SpoolFile::settle`] zeroes the data the image no longer
//! holds (deleted, replaced) and moves the layers down next to each other, bottom layer first,
//! so the data lies where the image wants it: from 1 MiB, lower layers first. The bottom
//! layer, usually the largest, is already there; the layers above it move inside the kernel,
//! page cache to page cache. The ext4 writer then writes the metadata around the data.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::meter::LayerMeter;
use crate::fileio::{self, copy_extents, copy_range, data_extents_in, merge_ranges, punch_hole};
use crate::layout::{ALIGN_BYTES, ALIGN_FILES_FROM, BLOCK_SIZE, DATA_START_BYTES};
use crate::tree::Content;

/// Room for one layer's data: 120 GiB, so 135 slots fit in the 16 TiB an ext4 host allows
/// for one file (Docker stops at 127 layers).
const SLOT_BYTES: u64 = 120 << 30;
const MAX_SLOTS: u32 = 135;
/// Every layer's data is a whole number of these (1 MiB), so the alignment of its large
/// files (see [`crate::layout`]) holds wherever the layer lands.
const MIB: u64 = ALIGN_BYTES;

/// The file an image's layers spool into.
pub struct SpoolFile {
    file: Arc<File>,
    /// SLOT_BYTES; smaller in tests.
    slot_bytes: u64,
    spools: Mutex<Vec<Arc<Spool>>>,
    /// Counts what the layer readers read, for progress displays.
    meter: Arc<LayerMeter>,
}

/// One layer's part of the spool file.
pub struct Spool {
    file: Arc<File>,
    /// `/proc/self/fd/N` of the file: lets the ext4 writer copy from it inside the kernel
    /// (copy_file_range) through [`Content::source_file`].
    fd_path: PathBuf,
    slot: u32,
    /// Where the slot starts, and how much it holds.
    base: u64,
    slot_bytes: u64,
    /// Bytes spooled.
    len: AtomicU64,
    /// Where the layer's data starts in the file: its slot, until [`SpoolFile::settle`]
    /// moves it.
    at: AtomicU64,
    /// Whether `settle` put the data at its place in the image.
    settled: AtomicBool,
    /// The layer's number in its image (0 = bottom). Set after indexing when the layer's
    /// place was not known while it streamed (a `docker save` stream lists it at the end).
    layer: AtomicU32,
    /// A restored layer's bytes left in the file they were saved in (see
    /// [`SpoolWriter::refer`]): read there, and never written into the image file.
    backing: OnceLock<Backing>,
    /// Set by `settle`: the layer's place in the image.
    placement: OnceLock<Placement>,
}

/// The file a referred layer's bytes stay in, from its start.
struct Backing {
    file: Arc<File>,
    fd_path: PathBuf,
}

/// Where [`SpoolFile::settle`] put a layer's data in the image: `len` bytes (a whole number
/// of MiB) from `at`, less the `dead` ranges (from the layer's start), which the image does
/// not keep and which read as zeros.
#[derive(Clone, Debug)]
pub struct Placement {
    pub at: u64,
    pub len: u64,
    pub dead: Vec<Range<u64>>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("slot", &self.slot)
            .field("layer", &self.layer.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Spool {
    pub(crate) fn set_layer(&self, layer: u32) {
        self.layer.store(layer, Ordering::Relaxed);
    }

    fn at(&self) -> u64 {
        self.at.load(Ordering::Acquire)
    }

    /// Where the byte `offset` bytes into the layer's data is: the backing file, or the image
    /// file from where the layer lies now.
    fn data_at(&self, offset: u64) -> (&File, u64) {
        match self.backing.get() {
            Some(backing) => (&backing.file, offset),
            None => (&self.file, self.at() + offset),
        }
    }

    /// Where the layer's data lies in the image, once settled.
    pub fn placement(&self) -> Option<&Placement> {
        self.placement.get()
    }

    /// The file a referred layer's bytes stay in (see `SpoolWriter::refer`): the image file
    /// does not hold them.
    pub fn referred(&self) -> Option<&Arc<File>> {
        self.backing.get().map(|b| &b.file)
    }

    /// Bytes spooled.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Copies the layer's spooled bytes into `out` from its start, data only (holes stay
    /// holes): what a later conversion restores instead of reading the layer again. Only
    /// before [`SpoolFile::settle`], which drops the data the image does not keep.
    pub(crate) fn save_data(&self, out: &File) -> io::Result<()> {
        debug_assert!(!self.settled.load(Ordering::Acquire));
        let (base, len) = (self.at(), self.len());
        copy_extents(&self.file, &data_extents_in(&self.file, base..base + len)?, out, -(base as i64))?;
        out.set_len(len)
    }
}

impl SpoolFile {
    /// Spools into `file`: empty, open for reading and writing, on a filesystem with sparse
    /// files.
    pub fn new(file: File) -> Self {
        SpoolFile {
            file: Arc::new(file),
            slot_bytes: SLOT_BYTES,
            spools: Mutex::new(Vec::new()),
            meter: Arc::new(LayerMeter::new([])),
        }
    }

    /// Counts the layers' reading in `meter` (see [`LayerMeter`]).
    pub fn with_meter(mut self, meter: Arc<LayerMeter>) -> Self {
        self.meter = meter;
        self
    }

    pub(crate) fn meter(&self) -> &LayerMeter {
        &self.meter
    }

    /// Spools into an unlinked temporary file in `dir`: for layers read only to be looked at.
    pub fn temp_in(dir: &Path) -> io::Result<Self> {
        Ok(Self::new(tempfile::tempfile_in(dir)?))
    }

    /// A writer for slot `slot`, for the layer numbered `slot` until told otherwise.
    pub fn slot(&self, slot: u32) -> io::Result<SpoolWriter> {
        if slot >= MAX_SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an image of more than {MAX_SLOTS} layers is not supported"),
            ));
        }
        let base = DATA_START_BYTES + u64::from(slot) * self.slot_bytes;
        let spool = Arc::new(Spool {
            file: self.file.clone(),
            fd_path: PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd())),
            slot,
            base,
            slot_bytes: self.slot_bytes,
            len: AtomicU64::new(0),
            at: AtomicU64::new(base),
            settled: AtomicBool::new(false),
            layer: AtomicU32::new(slot),
            backing: OnceLock::new(),
            placement: OnceLock::new(),
        });
        self.spools.lock().unwrap_or_else(|e| e.into_inner()).push(spool.clone());
        Ok(SpoolWriter { spool, len: 0 })
    }

    /// Makes the spooled data the data region of the image to be written into the returned
    /// file: zeroes every block no file in `live` uses, then moves the layers' data next to
    /// each other from 1 MiB, bottom layer first, each layer a whole number of MiB. The
    /// file's contents `live` points at are afterwards reported by [`Content::placed`].
    pub fn settle<'a>(self, live: impl IntoIterator<Item = &'a SpoolRef>) -> io::Result<File> {
        let spools = self.spools.into_inner().unwrap_or_else(|e| e.into_inner());
        // Live byte ranges of each spool, by its slot.
        let mut used: Vec<Vec<Range<u64>>> = vec![Vec::new(); MAX_SLOTS as usize];
        for r in live {
            for run in r.runs.iter() {
                let len = (run.blocks.end - run.blocks.start) * BLOCK_SIZE;
                used[r.spool.slot as usize].push(run.spool_offset..run.spool_offset + len);
            }
        }
        let file = &*self.file;
        let mut regions = Vec::new();
        for spool in &spools {
            let live = merge_ranges(std::mem::take(&mut used[spool.slot as usize]));
            let spooled = spool.len.load(Ordering::Relaxed);
            let mut dead = Vec::new();
            let mut pos = 0;
            for r in live.iter().chain(std::iter::once(&(spooled..u64::MAX))) {
                if r.start > pos {
                    dead.push(pos..r.start.min(spooled));
                }
                pos = r.end;
            }
            // A referred layer's bytes are not in this file: nothing to drop or move.
            if spool.backing.get().is_none() {
                let at = spool.at();
                for d in &dead {
                    punch_hole(file, at + d.start..at + d.end)?;
                }
            }
            let len = live.last().map_or(0, |r| r.end.next_multiple_of(MIB));
            regions.push((Region { spool: spool.clone(), from: spool.at(), len, to: 0 }, dead));
        }
        // Bottom layer first; a blob used by two layers was spooled once, for the lower.
        regions.sort_by_key(|(r, _)| (r.spool.layer.load(Ordering::Relaxed), r.spool.slot));
        let mut to = DATA_START_BYTES;
        for (r, _) in &mut regions {
            r.to = to;
            to += r.len;
        }
        let moving: Vec<Region> = regions
            .iter()
            .filter(|(r, _)| r.len > 0 && r.spool.backing.get().is_none())
            .map(|(r, _)| Region { spool: r.spool.clone(), ..*r })
            .collect();
        move_regions(file, &moving, to, self.slot_bytes)?;
        for (r, dead) in regions {
            let _ = r.spool.placement.set(Placement { at: r.to, len: r.len, dead });
            r.spool.at.store(r.to, Ordering::Release);
            r.spool.settled.store(true, Ordering::Release);
        }
        // The tree's references keep the spool's descriptor open: write through another.
        self.file.try_clone()
    }
}

/// A layer's data on its way from its slot to its place in the image.
struct Region {
    spool: Arc<Spool>,
    from: u64,
    len: u64,
    to: u64,
}

/// Moves every region from `from` down to `to` (in `to` order) and ends the file at `end`.
/// The kernel copies page cache to page cache (copy_file_range), data extents only, so holes
/// stay holes. A region lands below its slot and below every slot still to be moved (each
/// slot holds at most one slot's worth); where a region overlaps its own slot, it moves in
/// steps that do not.
fn move_regions(file: &File, regions: &[Region], end: u64, slot_bytes: u64) -> io::Result<()> {
    for (i, r) in regions.iter().enumerate() {
        let clear = r.to <= r.from && regions[i + 1..].iter().all(|later| r.to + r.len <= later.from);
        if !clear {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the image's data is larger than {} GiB, the most diskc lays out", slot_bytes >> 30),
            ));
        }
    }
    let size = file.metadata()?.len();
    let extents = fileio::data_extents(file, size)?;
    for (i, r) in regions.iter().enumerate().filter(|(_, r)| r.from != r.to) {
        let (start, stop) = (r.from, r.from + r.len);
        let step = r.from - r.to;
        // Where the region lands on data moved before (or on itself), its holes must be
        // made holes again: only its data is copied.
        let dest = r.to..r.to + r.len;
        let stale =
            regions[..=i].iter().any(|s| s.from != s.to && s.from < dest.end && dest.start < s.from + s.len);
        let mut pos = start;
        for e in extents.iter().filter(|e| e.end > start && e.start < stop) {
            let (mut at, until) = (e.start.max(start), e.end.min(stop));
            if stale && at > pos {
                punch_hole(file, pos - step..at - step)?;
            }
            pos = until;
            while at < until {
                let n = (until - at).min(step);
                copy_range(file, at, file, at - step, n)?;
                at += n;
            }
        }
        if stale && stop > pos {
            punch_hole(file, pos - step..stop - step)?;
        }
    }
    file.set_len(end)
}

/// A run of a file's data blocks and where the run starts in its layer's spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SpoolRun {
    pub blocks: Range<u64>,
    pub spool_offset: u64,
}

/// Where a regular file's bytes are: in a layer's spool, data blocks only.
#[derive(Clone)]
pub struct SpoolRef {
    spool: Arc<Spool>,
    size: u64,
    runs: Arc<[SpoolRun]>,
}

impl SpoolRef {
    /// The runs of the file's data blocks in its spool.
    pub(super) fn runs(&self) -> &[SpoolRun] {
        &self.runs
    }
}

impl fmt::Debug for SpoolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolRef").field("size", &self.size).field("runs", &self.runs).finish()
    }
}

impl Content for SpoolRef {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > self.size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut pos = offset;
        let mut out = buf;
        while !out.is_empty() {
            let block = pos / BLOCK_SIZE;
            // The first run that ends after `block`.
            let i = self.runs.partition_point(|r| r.blocks.end <= block);
            let (len, source) = match self.runs.get(i) {
                Some(run) if run.blocks.start <= block => {
                    let run_end = (run.blocks.end * BLOCK_SIZE).min(self.size);
                    let at = run.spool_offset + (pos - run.blocks.start * BLOCK_SIZE);
                    ((run_end - pos).min(out.len() as u64) as usize, Some(at))
                }
                Some(run) => ((run.blocks.start * BLOCK_SIZE - pos).min(out.len() as u64) as usize, None),
                None => (out.len(), None),
            };
            let (head, rest) = out.split_at_mut(len);
            match source {
                Some(at) => {
                    let (file, at) = self.spool.data_at(at);
                    file.read_exact_at(head, at)?
                }
                None => head.fill(0),
            }
            pos += len as u64;
            out = rest;
        }
        Ok(())
    }

    fn layer(&self) -> u32 {
        self.spool.layer.load(Ordering::Relaxed)
    }

    /// A file without holes lies in the spool in one piece; one with holes is read through
    /// [`Content::read_at`].
    fn source_file(&self) -> Option<(&Path, u64)> {
        match &*self.runs {
            [run] if run.blocks.start == 0 && run.blocks.end == self.size.div_ceil(BLOCK_SIZE) => {
                match self.spool.backing.get() {
                    Some(backing) => Some((&backing.fd_path, run.spool_offset)),
                    None => Some((&self.spool.fd_path, self.spool.at() + run.spool_offset)),
                }
            }
            _ => None,
        }
    }

    fn placed(&self) -> Option<Vec<u64>> {
        if !self.spool.settled.load(Ordering::Acquire) {
            return None;
        }
        let base = self.spool.at();
        Some(self.runs.iter().map(|r| (base + r.spool_offset) / BLOCK_SIZE).collect())
    }
}

/// Writes a layer's file data into its slot.
pub struct SpoolWriter {
    spool: Arc<Spool>,
    len: u64,
}

/// What one file became in the spool.
pub(crate) struct Spooled {
    pub content: SpoolRef,
    pub data_blocks: Vec<Range<u64>>,
}

impl SpoolWriter {
    pub(crate) fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Fills the slot with a layer's bytes saved by [`Spool::save_data`] (`data`, `len` bytes
    /// long) by reference: they stay in `data`, the layer's files (made with
    /// [`SpoolWriter::file_at`]) are read there, and the image file gets none of them; whoever
    /// needs the image whole lays them in from [`Spool::referred`] (a store reads them there
    /// without a copy).
    pub(crate) fn refer(&mut self, data: Arc<File>, len: u64) -> io::Result<()> {
        if len > self.spool.slot_bytes {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the saved layer is larger than a slot"));
        }
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", data.as_raw_fd()));
        if self.spool.backing.set(Backing { file: data, fd_path }).is_err() {
            return Err(io::Error::other("the layer's slot is filled already"));
        }
        self.len = len;
        self.spool.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    /// A file of the restored layer: `size` bytes whose data blocks lie at `runs` in the
    /// spool (checked by the caller to lie in the restored bytes, in block order).
    pub(super) fn file_at(&self, size: u64, runs: Vec<SpoolRun>) -> SpoolRef {
        SpoolRef { spool: self.spool.clone(), size, runs: runs.into() }
    }

    /// Copies a file of `size` bytes from `data`, keeping only its nonzero blocks.
    /// Read errors come back as `Err(Read)`, write errors as `Err(Write)`.
    pub(crate) fn copy_file(
        &mut self,
        data: &mut impl Read,
        size: u64,
        buf: &mut [u8],
    ) -> Result<Spooled, SpoolError> {
        self.copy_sparse_file(data, size, std::slice::from_ref(&(0..size)), buf)
    }

    /// Copies a file of `size` bytes of which only `windows` (byte ranges starting on a
    /// block, sorted, disjoint) may hold data, and `data` gives the windows' bytes back to
    /// back. The rest of the file is holes, and costs nothing however large.
    pub(crate) fn copy_sparse_file(
        &mut self,
        data: &mut impl Read,
        size: u64,
        windows: &[Range<u64>],
        buf: &mut [u8],
    ) -> Result<Spooled, SpoolError> {
        debug_assert!(buf.len() as u64 % BLOCK_SIZE == 0 && !buf.is_empty());
        let base = self.spool.base;
        let mut runs: Vec<SpoolRun> = Vec::new();
        let mut windows = windows.iter();
        let (mut pos, mut end) = (0u64, 0u64);
        loop {
            if pos == end {
                let Some(window) = windows.next() else { break };
                debug_assert!(window.start % BLOCK_SIZE == 0 && window.end <= size);
                (pos, end) = (window.start, window.end);
                continue;
            }
            let want = (end - pos).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..want];
            data.read_exact(chunk).map_err(SpoolError::Read)?;
            // Write each stretch of nonzero blocks with one call.
            for run in fileio::nonzero_runs(chunk, pos) {
                if runs.is_empty() && size >= ALIGN_FILES_FROM {
                    self.len = self.len.next_multiple_of(ALIGN_BYTES);
                }
                let first_block = (pos + run.start as u64) / BLOCK_SIZE;
                let end_block = first_block + (run.len() as u64).div_ceil(BLOCK_SIZE);
                // Data blocks go to the spool back to back, so a run that continues the
                // previous one (across a buffer boundary) also continues it in the spool.
                match runs.last_mut() {
                    Some(run) if run.blocks.end == first_block => run.blocks.end = end_block,
                    _ => runs.push(SpoolRun { blocks: first_block..end_block, spool_offset: self.len }),
                }
                let stored = (end_block - first_block) * BLOCK_SIZE;
                if self.len + stored > self.spool.slot_bytes {
                    return Err(SpoolError::Write(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("the layer unpacks to more than {} GiB", self.spool.slot_bytes >> 30),
                    )));
                }
                self.spool.file.write_all_at(&chunk[run], base + self.len).map_err(SpoolError::Write)?;
                self.len += stored;
                self.spool.len.store(self.len, Ordering::Relaxed);
            }
            pos += want as u64;
        }
        let data_blocks = runs.iter().map(|r| r.blocks.clone()).collect();
        Ok(Spooled { content: SpoolRef { spool: self.spool.clone(), size, runs: runs.into() }, data_blocks })
    }
}

pub(crate) enum SpoolError {
    Read(io::Error),
    Write(io::Error),
}

#[cfg(test)]
mod tests;
