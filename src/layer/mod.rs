//! Layers: one blob in, a [`LayerIndex`] out — its tar entries and where their data is.
//!
//! A blob is read once, as a stream: its bytes are hashed (the manifest's digest), the
//! compression is found by its magic bytes and undone (gzip, zstd or none), the tar stream
//! is hashed again (the config's diff_id) and parsed, and each file's data blocks go to the
//! layer's spool (see [`spool`]). Nothing waits for a whole blob and nothing holds one in
//! memory. The entries are not interpreted here (whiteouts, links, `..` are the business of
//! [`crate::tree::flatten`]); this module only reads bytes it does not trust and reports the
//! blob and the entry when they are wrong.

use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex};

use crate::digest::{BackgroundHasher, Digest, HashingReader};
use crate::error::{Classify, ErrorClass};
use crate::tree::flatten::{self, Entry, EntryKind, FlattenError, LayerChanges};
use crate::tree::{DeviceNumber, FileData, FsTree, Metadata, Timestamp};

mod pax_sparse;
mod relay;
pub(crate) mod spool;

use relay::relay;

use spool::{Spool, SpoolError};
pub use spool::{SpoolFile, SpoolRef, SpoolWriter};

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
    fn class(&self) -> ErrorClass {
        match self {
            LayerError::Read { source, .. } => ErrorClass::of_io(source),
            LayerError::Spool { source, .. } if source.kind() == io::ErrorKind::InvalidInput => {
                ErrorClass::BadInput
            }
            LayerError::Spool { .. } => ErrorClass::Environment,
            _ => ErrorClass::BadInput,
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

struct ParsedTar {
    entries: Vec<Entry<SpoolRef>>,
    /// The tar stream's digest; `None` when it was not hashed (it is the blob itself).
    digest: Option<Digest>,
    size: u64,
}

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
            // Producers may use long windows; the default limit (8 MiB) would refuse them.
            decoder.window_log_max(31).map_err(corrupt)?;
            relay(decoder, |tar| parse_tar(tar, true, writer, name))?
        }
        Compression::None => parse_tar(&mut input, false, writer, name)?,
    };
    io::copy(&mut input, &mut io::sink()).map_err(corrupt)?;
    Ok(Decoded { tar, compression })
}

/// Parses the uncompressed tar stream `plain` to its end; with `hash`, hashes all of it.
fn parse_tar<R: Read>(
    plain: R,
    hash: bool,
    writer: &mut SpoolWriter,
    name: &str,
) -> Result<ParsedTar, LayerError> {
    let corrupt = |source: io::Error| LayerError::Corrupt { blob: name.to_string(), source };
    let mut hashed = CountingReader { inner: plain, hasher: hash.then(BackgroundHasher::new), count: 0 };
    let mut entries = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashed);
        let mut buf = vec![0u8; COPY_BUFFER];
        for item in archive.entries().map_err(corrupt)? {
            let mut item = item.map_err(corrupt)?;
            if let Some(entry) = read_entry(&mut item, writer, &mut buf, name)? {
                entries.push(entry);
            }
        }
    }
    // The end-of-archive blocks and the padding after them are part of the diff_id.
    io::copy(&mut hashed, &mut io::sink()).map_err(corrupt)?;
    Ok(ParsedTar { entries, digest: hashed.hasher.map(BackgroundHasher::finish), size: hashed.count })
}

/// Counts what passes, and hashes it when asked.
struct CountingReader<R> {
    inner: R,
    hasher: Option<BackgroundHasher>,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// PAX records this module reads besides those the tar crate applies (path, linkpath, size,
/// uid, gid): sub-second times and extended attributes.
#[derive(Default)]
struct PaxExtras {
    mtime: Option<Timestamp>,
    atime: Option<Timestamp>,
    ctime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `GNU.sparse.*` records, by key without the prefix.
    sparse: Vec<(Vec<u8>, Vec<u8>)>,
}

/// `GNU.sparse.KEY=value`: GNU tar's sparse files in PAX form.
const PAX_SPARSE_PREFIX: &[u8] = b"GNU.sparse.";

/// `SCHILY.xattr.NAME=value`, as GNU tar, bsdtar and Go's archive/tar write xattrs.
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

fn pax_extras<R: Read>(item: &mut tar::Entry<'_, R>) -> io::Result<PaxExtras> {
    let mut extras = PaxExtras::default();
    let Some(exts) = item.pax_extensions()? else { return Ok(extras) };
    for ext in exts {
        let ext = ext?;
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        match key {
            b"mtime" => extras.mtime = parse_pax_time(value),
            b"atime" => extras.atime = parse_pax_time(value),
            b"ctime" => extras.ctime = parse_pax_time(value),
            _ => {
                if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    extras.xattrs.push((name.to_vec(), value.to_vec()));
                } else if let Some(name) = key.strip_prefix(PAX_SPARSE_PREFIX) {
                    extras.sparse.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(extras)
}

/// A PAX time: decimal seconds, optionally negative, optionally with a fraction.
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let sec: i64 = whole.parse().ok()?;
    let mut nsec: u32 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nsec = format!("{digits:0<9}").parse().ok()?;
    }
    Some(if negative {
        if nsec == 0 {
            Timestamp::new(-sec, 0)
        } else {
            Timestamp::new(-sec - 1, 1_000_000_000 - nsec)
        }
    } else {
        Timestamp::new(sec, nsec)
    })
}

/// A numeric header field; an empty one (all NUL or spaces) reads as 0, as GNU tar and Go
/// read it, where the tar crate refuses it.
fn numeric<T: Default>(parsed: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(T::default()),
        other => other,
    }
}

/// The real name and size of a GNU sparse 1.0 member, `None` for any other member; the
/// 0.x PAX forms (long obsolete) are refused rather than misread.
fn sparse_1_0(records: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<(Vec<u8>, u64)>, String> {
    if records.is_empty() {
        return Ok(None);
    }
    let get = |k: &[u8]| records.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_slice());
    if get(b"major") != Some(b"1") || get(b"minor") != Some(b"0") {
        return Err("GNU sparse format 0.x is not supported (only 1.0)".into());
    }
    let name = get(b"name").ok_or("GNU sparse member without GNU.sparse.name")?;
    let size = get(b"realsize")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .ok_or("GNU sparse member without a valid GNU.sparse.realsize")?;
    Ok(Some((name.to_vec(), size)))
}

fn read_entry<R: Read>(
    item: &mut tar::Entry<'_, R>,
    writer: &mut SpoolWriter,
    buf: &mut [u8],
    blob: &str,
) -> Result<Option<Entry<SpoolRef>>, LayerError> {
    let mut path = item.path_bytes().into_owned();
    let bad_at = |path: &[u8], problem: String| LayerError::BadEntry {
        blob: blob.to_string(),
        entry: String::from_utf8_lossy(path).into_owned(),
        problem,
    };
    let extras = pax_extras(item).map_err(|e| bad_at(&path, format!("bad PAX header: {e}")))?;
    let sparse = sparse_1_0(&extras.sparse).map_err(|problem| bad_at(&path, problem))?;
    if let Some((name, _)) = &sparse {
        path = name.clone();
    }
    let bad = |problem: String| bad_at(&path, problem);
    let header = item.header();
    let entry_type = header.entry_type();
    if entry_type.is_pax_global_extensions() {
        return Ok(None);
    }
    let old = header.as_old();
    let mode = numeric(header.mode(), &old.mode).map_err(|e| bad(format!("bad mode: {e}")))?;
    let uid = numeric(header.uid(), &old.uid).map_err(|e| bad(format!("bad uid: {e}")))?;
    let gid = numeric(header.gid(), &old.gid).map_err(|e| bad(format!("bad gid: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} does not fit 32 bits")))?;
    let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} does not fit 32 bits")))?;
    let mtime = match extras.mtime {
        Some(t) => t,
        None => {
            let sec = numeric(header.mtime(), &old.mtime).map_err(|e| bad(format!("bad mtime: {e}")))?;
            Timestamp::new(i64::try_from(sec).unwrap_or(i64::MAX), 0)
        }
    };
    let meta = Metadata {
        mode: (mode & 0o7777) as u16,
        uid,
        gid,
        atime: extras.atime.unwrap_or(mtime),
        mtime,
        ctime: extras.ctime.unwrap_or(mtime),
        xattrs: extras.xattrs.into_iter().collect(),
    };
    let link = || {
        item.link_name_bytes().map(|l| l.into_owned()).ok_or_else(|| bad("link without a target".to_string()))
    };
    let device = || -> Result<DeviceNumber, LayerError> {
        let major = header.device_major().map_err(|e| bad(format!("bad device major: {e}")))?;
        let minor = header.device_minor().map_err(|e| bad(format!("bad device minor: {e}")))?;
        Ok(DeviceNumber { major: major.unwrap_or(0), minor: minor.unwrap_or(0) })
    };
    let kind = match entry_type {
        tar::EntryType::Directory => EntryKind::Directory,
        tar::EntryType::Symlink => EntryKind::Symlink(link()?),
        tar::EntryType::Link => EntryKind::HardLink(link()?),
        tar::EntryType::Char => EntryKind::CharDevice(device()?),
        tar::EntryType::Block => EntryKind::BlockDevice(device()?),
        tar::EntryType::Fifo => EntryKind::Fifo,
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let stored = item.size();
            let copied = match sparse {
                Some((_, real_size)) => pax_sparse::expand(&mut *item, stored, real_size)
                    .map_err(SpoolError::Read)
                    .and_then(|mut expanded| {
                        writer.copy_file(&mut expanded, real_size, buf).map(|s| (s, real_size))
                    }),
                None => writer.copy_file(item, stored, buf).map(|s| (s, stored)),
            };
            let (spooled, size) = copied.map_err(|e| match e {
                SpoolError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    bad(format!("data ends before its {stored} bytes"))
                }
                SpoolError::Read(e) if e.kind() == io::ErrorKind::InvalidData => bad(e.to_string()),
                SpoolError::Read(source) => LayerError::Corrupt { blob: blob.to_string(), source },
                SpoolError::Write(source) => LayerError::Spool { blob: blob.to_string(), source },
            })?;
            EntryKind::File(FileData { size, content: spooled.content, data_blocks: spooled.data_blocks })
        }
        other => return Err(bad(format!("unsupported tar entry type {:?}", other.as_byte() as char))),
    };
    Ok(Some(Entry { path, kind, meta }))
}

/// One layer to read with [`index_layers`].
#[derive(Clone, Debug)]
pub struct LayerJob {
    pub expect: LayerExpect,
    /// The blob's size when known: larger layers start first.
    pub size: Option<u64>,
}

/// Reads many layers in parallel on rayon's pool (bounded by the cores), the largest first
/// since the largest sets the critical path, each into the spool slot of its number.
/// `open(i)` opens the blob of `jobs[i]`. Results come back in input order whatever order
/// they finish in; the first failing layer (in input order) is the error.
pub fn index_layers<F>(jobs: &[LayerJob], open: F, spool: &SpoolFile) -> Result<Vec<LayerIndex>, LayerError>
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
                let layer = i as u32;
                let expect = &jobs[i].expect;
                let name = || blob_name(expect, layer);
                let result = match (open(i), spool.slot(layer)) {
                    (Ok(blob), Ok(writer)) => index_layer(blob, expect, layer, writer),
                    (Err(source), _) => Err(LayerError::Read { blob: name(), source }),
                    (_, Err(source)) => Err(LayerError::Spool { blob: name(), source }),
                };
                *results[i].lock().expect("no panics while holding the lock") = Some(result);
            });
        }
    });
    results
        .into_iter()
        .map(|slot| slot.into_inner().expect("no panics while holding the lock").expect("every job ran"))
        .collect()
}
