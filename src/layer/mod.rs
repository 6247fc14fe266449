//! Layers: one blob in, a [`LayerIndex`] out — its tar entries and where their data is.
//!
//! A blob is read once, as a stream: its bytes are hashed (the manifest's digest), the
//! compression is found by its magic bytes and undone (gzip, zstd or none), the tar stream
//! is hashed again (the config's diff_id) and parsed, and each file's data blocks go to the
//! layer's spool (see `layer::spool`). Nothing waits for a whole blob and nothing holds one in
//! memory. The entries are not interpreted here (whiteouts, links, `..` are the business of
//! [`crate::tree::flatten`]); this module only reads bytes it does not trust and reports the
//! blob and the entry when they are wrong.

use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex};

use crate::digest::{Digest, HashingReader};
use crate::error::{Classify, ErrorKind};
use crate::tree::flatten::{self, Entry, FlattenError, LayerChanges};
use crate::tree::FsTree;

mod entry;
mod meter;
mod pax_sparse;
mod relay;
mod saved;
pub(crate) mod spool;
pub mod tar;

use relay::relay;

pub use entry::MAX_FILE_SIZE;
use entry::{parse_tar, ParsedTar};
pub use meter::{LayerMeter, LayerReading};
pub use saved::{save_index, SavedIndex};
pub use spool::{Placement, Spool, SpoolFile, SpoolRef, SpoolWriter};

/// What the manifest and config say a blob should be. A `None` digest is computed, not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerExpect {
    pub digest: Option<Digest>,
    pub diff_id: Option<Digest>,
    /// The manifest's media type; compression is found by magic bytes, this only rejects
    /// layer kinds we cannot read (encrypted ones).
    pub media_type: String,
}

/// How a blob was compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer read: its entries in tar order, its digests, and its spool.
#[derive(Clone, Debug)]
pub struct LayerIndex {
    pub entries: Vec<Entry<SpoolRef>>,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// sha256 of the blob as stored.
    pub digest: Digest,
    pub compression: Compression,
    /// Bytes of the blob as stored.
    pub compressed_size: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    spool: Arc<Spool>,
}

impl LayerIndex {
    /// The layer as a changeset for [`flatten`](crate::tree::flatten::flatten), named by digest.
    pub fn changes<'a>(&'a self, name: &'a str) -> LayerChanges<'a, SpoolRef> {
        LayerChanges { name, entries: &self.entries }
    }

    /// Sets the layer number file data reports through [`crate::tree::Content::layer`], for
    /// a layer indexed before its place in the image was known.
    pub fn set_layer(&self, layer: u32) {
        self.spool.set_layer(layer);
    }

    /// Copies the layer's spooled file data into `out`, for [`SavedIndex`]; before the
    /// spool is settled.
    pub fn save_data(&self, out: &std::fs::File) -> io::Result<()> {
        self.spool.save_data(out)
    }

    /// The layer's spool: where its data lies in the image once settled
    /// ([`Spool::placement`]).
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }
}

/// Merges indexed layers, bottom first, into the image's tree.
pub fn flatten_layers(layers: &[LayerIndex]) -> Result<FsTree<SpoolRef>, FlattenError> {
    let names: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let changes: Vec<_> = layers.iter().zip(&names).map(|(l, n)| l.changes(n)).collect();
    flatten::flatten(&changes)
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {blob}: the blob's digest is {actual}, the manifest says {expected}")]
    DigestMismatch { blob: String, expected: Digest, actual: Digest },
    #[error("layer {blob}: the uncompressed layer's digest is {actual}, the image config says {expected}")]
    DiffIdMismatch { blob: String, expected: Digest, actual: Digest },
    #[error("layer {blob}: corrupt or truncated data: {source}")]
    Corrupt { blob: String, source: io::Error },
    #[error(
        "layer {blob}: a zstd frame needs a window larger than {} MiB, the most diskc decodes \
         (zstd --long=28 or more); recompress it with a smaller window",
        (1u64 << ZSTD_WINDOW_LOG_MAX) >> 20
    )]
    ZstdWindow { blob: String },
    #[error("layer {blob}: tar entry {entry:?}: {problem}")]
    BadEntry { blob: String, entry: String, problem: String },
    #[error("layer {blob}: unsupported media type {media_type}")]
    Unsupported { blob: String, media_type: String },
    #[error("layer {blob}: cannot read the blob: {source}")]
    Read { blob: String, source: io::Error },
    #[error("layer {blob}: cannot write its data: {source}")]
    Spool { blob: String, source: io::Error },
}

impl Classify for LayerError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            LayerError::Read { source, .. } => ErrorKind::of_io(source),
            LayerError::Spool { source, .. } if source.kind() == io::ErrorKind::InvalidInput => {
                ErrorKind::BadInput
            }
            LayerError::Spool { .. } => ErrorKind::Environment,
            _ => ErrorKind::BadInput,
        }
    }
}

/// gzip's magic bytes (RFC 1952 §2.3.1).
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// A zstd frame's magic number, little-endian (RFC 8878 §3.1.1).
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Decompressed bytes are read and spooled this many at a time (a multiple of BLOCK_SIZE).
const COPY_BUFFER: usize = 256 * 1024;

/// The blob's name in errors: its expected digest, or its place.
fn blob_name(expect: &LayerExpect, layer: u32) -> String {
    match (expect.digest, expect.diff_id) {
        (Some(d), _) | (None, Some(d)) => d.to_string(),
        (None, None) => format!("#{layer}"),
    }
}

/// Remembers whether a read error came from the blob itself (the disk, the daemon, the
/// network) rather than from decoding it.
struct Source<R> {
    inner: HashingReader<R>,
    failed: Option<io::ErrorKind>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| self.failed = Some(e.kind()))
    }
}

/// Reads one layer blob: verifies it, parses its tar, spools its file data with `writer`.
/// `layer` is its place in the image, bottom = 0.
pub fn index_layer<R: Read>(
    blob: R,
    expect: &LayerExpect,
    layer: u32,
    mut writer: SpoolWriter,
) -> Result<LayerIndex, LayerError> {
    let name = blob_name(expect, layer);
    if expect.media_type.contains("encrypted") {
        return Err(LayerError::Unsupported { blob: name, media_type: expect.media_type.clone() });
    }
    writer.spool().set_layer(layer);
    let mut source = Source { inner: HashingReader::new(blob), failed: None };

    let result = decode(&mut source, &mut writer, &name);
    let Decoded { tar, compression } = match result {
        Ok(v) => v,
        Err(e) => {
            return Err(match (source.failed.take(), e) {
                (Some(_), LayerError::Corrupt { source: io_err, .. }) => {
                    LayerError::Read { blob: name, source: io_err }
                }
                (_, e) => e,
            });
        }
    };
    let (digest, compressed_size) = source.inner.finish();
    // An uncompressed blob is its own tar: one hash serves as both digests.
    let diff_id = tar.digest.unwrap_or(digest);
    // A blob named by its digest is named by what it should have been; report both.
    if let Some(expected) = expect.digest {
        if expected != digest {
            return Err(LayerError::DigestMismatch { blob: name, expected, actual: digest });
        }
    }
    if let Some(expected) = expect.diff_id {
        if expected != diff_id {
            return Err(LayerError::DiffIdMismatch { blob: name, expected, actual: diff_id });
        }
    }
    Ok(LayerIndex {
        entries: tar.entries,
        diff_id,
        digest,
        compression,
        compressed_size,
        uncompressed_size: tar.size,
        spool: writer.spool().clone(),
    })
}

struct Decoded {
    tar: ParsedTar,
    compression: Compression,
}

/// The largest zstd window decoded (128 MiB), as zstd's own default: the decoder allocates
/// the window a frame declares, and a frame of a few bytes may declare 2 GiB.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// What zstd says of a frame whose window is over the limit.
const ZSTD_WINDOW_ERROR: &str = "Frame requires too much memory";

/// Detects the compression, then parses the tar through it, then reads the blob to its end
/// so that its digest covers every byte.
fn decode<R: Read>(
    source: &mut Source<R>,
    writer: &mut SpoolWriter,
    name: &str,
) -> Result<Decoded, LayerError> {
    let corrupt = |source: io::Error| LayerError::Corrupt { blob: name.to_string(), source };
    // Read the magic bytes whole: a reader may hand out fewer bytes than asked.
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match source.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(corrupt(e)),
        }
    }
    let head = &magic[..got];
    let compression = if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let mut input = BufReader::with_capacity(COPY_BUFFER, head.chain(source));
    let tar = match compression {
        Compression::Gzip => {
            let decoder = flate2::bufread::MultiGzDecoder::new(&mut input);
            relay(decoder, |tar| parse_tar(tar, true, writer, name))?
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(&mut input).map_err(corrupt)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(corrupt)?;
            relay(decoder, |tar| parse_tar(tar, true, writer, name)).map_err(|e| match e {
                LayerError::Corrupt { blob, source } if source.to_string().contains(ZSTD_WINDOW_ERROR) => {
                    LayerError::ZstdWindow { blob }
                }
                e => e,
            })?
        }
        Compression::None => parse_tar(&mut input, false, writer, name)?,
    };
    io::copy(&mut input, &mut io::sink()).map_err(corrupt)?;
    Ok(Decoded { tar, compression })
}

/// One layer to read with [`index_layers`].
#[derive(Clone, Debug)]
pub struct LayerJob {
    pub expect: LayerExpect,
    /// The blob's size when known (its descriptor's): larger layers start first, and the
    /// blob must be exactly this long. It is read no further than one byte past it, so a
    /// blob that never ends is refused, not read forever.
    pub size: Option<u64>,
}

/// A blob that must be `size` bytes long: reading past that, or ending before it, fails.
struct SizedBlob<R> {
    inner: R,
    size: u64,
    read: u64,
}

impl<R: Read> Read for SizedBlob<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than the size may come in: that byte shows the blob is too long.
        let room = (self.size + 1).saturating_sub(self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the blob is longer than the {} bytes its descriptor gives", self.size),
            ));
        }
        if n == 0 && !buf.is_empty() && self.read < self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the blob ends after {} of the {} bytes its descriptor gives", self.read, self.size),
            ));
        }
        Ok(n)
    }
}

/// Reads many layers in parallel on rayon's pool (bounded by the cores), the largest first
/// since the largest sets the critical path, each into the spool slot of its number.
/// `open(i)` opens the blob of `jobs[i]`. Results come back in input order whatever order
/// they finish in; the first failing layer (in input order) is the error.
pub fn index_layers<F>(jobs: &[LayerJob], open: F, spool: &SpoolFile) -> Result<Vec<LayerIndex>, LayerError>
where
    F: Fn(usize) -> io::Result<Box<dyn Read + Send>> + Sync,
{
    index_layers_from(0, jobs, open, spool)
}

/// [`index_layers`] for the layers of an image from its layer number `first` up (the ones
/// below come from elsewhere): `jobs[i]` is layer `first + i`, and spools into that slot.
pub fn index_layers_from<F>(
    first: usize,
    jobs: &[LayerJob],
    open: F,
    spool: &SpoolFile,
) -> Result<Vec<LayerIndex>, LayerError>
where
    F: Fn(usize) -> io::Result<Box<dyn Read + Send>> + Sync,
{
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(jobs[i].size.unwrap_or(0)), i));
    let results: Vec<Mutex<Option<Result<LayerIndex, LayerError>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    rayon::scope_fifo(|scope| {
        for &i in &order {
            let (open, results) = (&open, &results);
            scope.spawn_fifo(move |_| {
                let layer = (first + i) as u32;
                let expect = &jobs[i].expect;
                let name = || blob_name(expect, layer);
                let result = match (open(i), spool.slot(layer)) {
                    (Ok(blob), Ok(writer)) => {
                        let blob = spool.meter().reader(layer, blob);
                        match jobs[i].size {
                            Some(size) => {
                                index_layer(SizedBlob { inner: blob, size, read: 0 }, expect, layer, writer)
                            }
                            None => index_layer(blob, expect, layer, writer),
                        }
                    }
                    (Err(source), _) => Err(LayerError::Read { blob: name(), source }),
                    (_, Err(source)) => Err(LayerError::Spool { blob: name(), source }),
                };
                if result.is_ok() {
                    spool.meter().finish(layer);
                }
                *results[i].lock().expect("no panics while holding the lock") = Some(result);
            });
        }
    });
    results
        .into_iter()
        .map(|slot| slot.into_inner().expect("no panics while holding the lock").expect("every job ran"))
        .collect()
}
