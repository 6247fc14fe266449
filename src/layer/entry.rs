//! From a layer's tar stream to its entries: each tar entry checked for what a Linux root
//! filesystem can hold (ids of 32 bits, device numbers the kernel can encode, files ext4
//! can store, times it can store), its file data spooled.

use std::io::{self, Read};

use super::pax_sparse;
use super::spool::{SpoolError, SpoolRef, SpoolWriter, Spooled};
use super::tar::{self as tarball, Kind, Sparse, SparseFile, TarEntry, TarError, TarReader};
use super::{LayerError, COPY_BUFFER};
use crate::digest::{BackgroundHasher, Digest};
use crate::tree::flatten::{Entry, EntryKind};
use crate::tree::{DeviceNumber, FileData, Metadata, BLOCK_SIZE};

/// The largest file ext4 holds with 4 KiB blocks: an extent-mapped file has at most
/// 2^32 - 1 blocks (fs/ext4/super.c, `ext4_max_size`).
pub const MAX_FILE_SIZE: u64 = ((1 << 32) - 1) * BLOCK_SIZE;

/// What the tar stream held.
pub(super) struct ParsedTar {
    pub entries: Vec<Entry<SpoolRef>>,
    /// The tar stream's digest; `None` when it was not hashed (it is the blob itself).
    pub digest: Option<Digest>,
    pub size: u64,
}

/// Parses the uncompressed tar stream `plain` to its end; with `hash`, hashes all of it.
pub(super) fn parse_tar<R: Read>(
    plain: R,
    hash: bool,
    writer: &mut SpoolWriter,
    blob: &str,
) -> Result<ParsedTar, LayerError> {
    let corrupt = |source: io::Error| LayerError::Corrupt { blob: blob.to_string(), source };
    let mut hashed = CountingReader { inner: plain, hasher: hash.then(BackgroundHasher::new), count: 0 };
    let mut entries = Vec::new();
    let mut tar = TarReader::new(&mut hashed);
    let mut buf = vec![0u8; COPY_BUFFER];
    while let Some(entry) = tar.next_entry().map_err(|e| tar_error(e, blob))? {
        entries.push(layer_entry(&mut tar, entry, writer, &mut buf, blob)?);
    }
    // The entries stay until the layers are merged: without the room grown for more.
    entries.shrink_to_fit();
    // The end-of-archive blocks and the padding after them are part of the diff_id.
    io::copy(&mut hashed, &mut io::sink()).map_err(corrupt)?;
    Ok(ParsedTar { entries, digest: hashed.hasher.map(BackgroundHasher::finish), size: hashed.count })
}

fn tar_error(e: TarError, blob: &str) -> LayerError {
    match e {
        TarError::Read(source) => LayerError::Corrupt { blob: blob.to_string(), source },
        TarError::Header { .. } => LayerError::Corrupt {
            blob: blob.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        },
        TarError::Entry { path, problem } => {
            LayerError::BadEntry { blob: blob.to_string(), entry: path, problem }
        }
    }
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

/// The layer entry of tar entry `t`, its data (if any) read from `tar` into the spool.
fn layer_entry<R: Read>(
    tar: &mut TarReader<R>,
    t: TarEntry,
    writer: &mut SpoolWriter,
    buf: &mut [u8],
    blob: &str,
) -> Result<Entry<SpoolRef>, LayerError> {
    let shown = tarball::shown(&t.path);
    let bad =
        |problem: String| LayerError::BadEntry { blob: blob.to_string(), entry: shown.clone(), problem };
    let uid = u32::try_from(t.uid).map_err(|_| bad(format!("uid {} does not fit 32 bits", t.uid)))?;
    let gid = u32::try_from(t.gid).map_err(|_| bad(format!("gid {} does not fit 32 bits", t.gid)))?;
    let mut meta = Metadata {
        mode: (t.mode & 0o7777) as u16,
        uid,
        gid,
        atime: t.atime.unwrap_or(t.mtime),
        mtime: t.mtime,
        ctime: t.ctime.unwrap_or(t.mtime),
        xattrs: t.xattrs,
    };
    if meta.clamp_times() {
        tracing::warn!(
            "layer {blob}: {shown:?}: a time outside what ext4 stores (1901-12-13 to 2446-05-10), clamped to it"
        );
    }
    let device = || -> Result<DeviceNumber, LayerError> {
        let (major, minor) = (t.dev_major, t.dev_minor);
        match (u32::try_from(major), u32::try_from(minor)) {
            (Ok(major), Ok(minor))
                if major <= DeviceNumber::MAX_MAJOR && minor <= DeviceNumber::MAX_MINOR =>
            {
                Ok(DeviceNumber { major, minor })
            }
            _ => Err(bad(format!(
                "device {major}:{minor} cannot be encoded (Linux has majors up to {} and minors up to {})",
                DeviceNumber::MAX_MAJOR,
                DeviceNumber::MAX_MINOR
            ))),
        }
    };
    let link = |target: Vec<u8>| {
        if target.is_empty() {
            Err(bad("link without a target".to_string()))
        } else {
            Ok(target)
        }
    };
    let kind = match t.kind {
        Kind::Directory => EntryKind::Directory,
        Kind::Symlink => EntryKind::Symlink(link(t.link)?),
        Kind::HardLink => EntryKind::HardLink(link(t.link)?),
        Kind::CharDevice => EntryKind::CharDevice(device()?),
        Kind::BlockDevice => EntryKind::BlockDevice(device()?),
        Kind::Fifo => EntryKind::Fifo,
        Kind::File => {
            let size = t.sparse.as_ref().map_or(t.size, |s| s.real_size);
            if size > MAX_FILE_SIZE {
                return Err(bad(format!("a file of {size} bytes; ext4 holds at most {MAX_FILE_SIZE}")));
            }
            let spooled = spool_file(tar, t.size, t.sparse, writer, buf).map_err(|e| match e {
                SpoolError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    bad(format!("data ends before its {} bytes", t.size))
                }
                SpoolError::Read(e) if e.kind() == io::ErrorKind::InvalidData => bad(e.to_string()),
                SpoolError::Read(source) => LayerError::Corrupt { blob: blob.to_string(), source },
                SpoolError::Write(source) => LayerError::Spool { blob: blob.to_string(), source },
            })?;
            EntryKind::File(FileData { size, content: spooled.content, data_blocks: spooled.data_blocks })
        }
        Kind::Other(flag) => {
            return Err(bad(format!("unsupported tar entry type {:?}", char::from(flag))));
        }
    };
    Ok(Entry { path: t.path, kind, meta })
}

/// Spools a regular file whose `stored` bytes follow in `tar`; a sparse one by its windows
/// only, so its holes cost nothing.
fn spool_file<R: Read>(
    tar: &mut TarReader<R>,
    stored: u64,
    sparse: Option<SparseFile>,
    writer: &mut SpoolWriter,
    buf: &mut [u8],
) -> Result<Spooled, SpoolError> {
    let mut data = tar.data();
    let Some(SparseFile { real_size, map }) = sparse else {
        return writer.copy_file(&mut data, stored, buf);
    };
    let (segments, map_len) = match map {
        Sparse::Segments(segments) => (segments, 0),
        Sparse::MapInData => pax_sparse::read_map(&mut data).map_err(SpoolError::Read)?,
    };
    pax_sparse::check(&segments, real_size, map_len, stored).map_err(SpoolError::Read)?;
    let windows = pax_sparse::windows(&segments, real_size);
    let mut expanded = pax_sparse::Expanded::new(data, segments, windows.clone());
    writer.copy_sparse_file(&mut expanded, real_size, &windows, buf)
}
