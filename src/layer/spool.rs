//! The spool: one unlinked temp file per layer holding the data blocks of its files, so each
//! layer is decompressed once and its file data read back by offset when the image is
//! written. Blocks that are all zeros are never written: a sparse file costs no spool space.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::tree::sparse::is_zero;
use crate::tree::{Content, BLOCK_SIZE};

/// A layer's spool file.
pub struct Spool {
    file: File,
    /// `/proc/self/fd/N` of the unlinked file: lets the ext4 writer copy from it inside the
    /// kernel (copy_file_range) through [`Content::source_file`].
    path: PathBuf,
    /// The layer's number in its image (0 = bottom). Set after indexing when the layer's
    /// place was not known while it streamed (a `docker save` stream lists it at the end).
    layer: AtomicU32,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool").field("layer", &self.layer.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Spool {
    pub(crate) fn new(file: File, layer: u32) -> Self {
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Spool { file, path, layer: AtomicU32::new(layer) }
    }

    pub(crate) fn set_layer(&self, layer: u32) {
        self.layer.store(layer, Ordering::Relaxed);
    }
}

/// A run of a file's data blocks and where the run starts in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SpoolRun {
    blocks: Range<u64>,
    spool_offset: u64,
}

/// Where a regular file's bytes are: in a layer's spool, data blocks only.
#[derive(Clone)]
pub struct SpoolRef {
    spool: Arc<Spool>,
    size: u64,
    runs: Arc<[SpoolRun]>,
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
                Some(at) => self.spool.file.read_exact_at(head, at)?,
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
                Some((&self.spool.path, run.spool_offset))
            }
            _ => None,
        }
    }
}

/// Appends files' data blocks to a spool.
pub(crate) struct SpoolWriter {
    spool: Arc<Spool>,
    len: u64,
}

/// What one file became in the spool.
pub(crate) struct Spooled {
    pub content: SpoolRef,
    pub data_blocks: Vec<Range<u64>>,
}

impl SpoolWriter {
    pub fn new(file: File, layer: u32) -> Self {
        SpoolWriter { spool: Arc::new(Spool::new(file, layer)), len: 0 }
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Copies a file of `size` bytes from `data`, keeping only its nonzero blocks.
    /// Read errors come back as `Err(Read)`, write errors as `Err(Write)`.
    pub fn copy_file(
        &mut self,
        data: &mut impl io::Read,
        size: u64,
        buf: &mut [u8],
    ) -> Result<Spooled, SpoolError> {
        debug_assert!(buf.len() as u64 % BLOCK_SIZE == 0 && !buf.is_empty());
        let mut runs: Vec<SpoolRun> = Vec::new();
        let mut pos = 0u64;
        while pos < size {
            let want = (size - pos).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..want];
            read_full(data, chunk).map_err(SpoolError::Read)?;
            // Write each stretch of nonzero blocks with one call.
            let mut i = 0;
            while i < want {
                let block_end = |s: usize| (s + BLOCK_SIZE as usize).min(want);
                if is_zero(&chunk[i..block_end(i)]) {
                    i = block_end(i);
                    continue;
                }
                let start = i;
                while i < want && !is_zero(&chunk[i..block_end(i)]) {
                    i = block_end(i);
                }
                let first_block = (pos + start as u64) / BLOCK_SIZE;
                let end_block = first_block + ((i - start) as u64).div_ceil(BLOCK_SIZE);
                // Data blocks go to the spool back to back, so a run that continues the
                // previous one (across a buffer boundary) also continues it in the spool.
                match runs.last_mut() {
                    Some(run) if run.blocks.end == first_block => run.blocks.end = end_block,
                    _ => runs.push(SpoolRun { blocks: first_block..end_block, spool_offset: self.len }),
                }
                (&self.spool.file).write_all(&chunk[start..i]).map_err(SpoolError::Write)?;
                self.len += (i - start) as u64;
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

/// Fills `buf` or fails with `UnexpectedEof`.
fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
