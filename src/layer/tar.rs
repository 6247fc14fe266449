//! Our own tar reader: layers, and the archives that hold them, read once, in order.
//!
//! A layer is untrusted, and every point where two tar readers disagree is a point where a
//! layer can show diskc one tree and Docker another. So this reader reads POSIX.1-2001
//! (pax), ustar, GNU and v7 archives the way Go's `archive/tar` does (the reader behind
//! the Docker Engine and containerd), and refuses what cannot be read one way only:
//!
//! - A PAX extended header is a sequence of records `"%d %s=%s\n"` whose length counts the
//!   whole record (POSIX.1-2001, pax, "pax Extended Header"): records are split by that
//!   length, never at a newline, so values may hold newlines and NULs. When a key repeats,
//!   the last record wins; an empty value leaves the header's own field in force. NUL is
//!   refused in keys and in `path` and `linkpath` values.
//! - Header-only types (hard link, symlink, character and block device, directory, fifo)
//!   carry no data, whatever `size` says (Go's `isHeaderOnlyType`).
//! - Two zero blocks end the archive (so does its end at a header boundary); one zero block
//!   followed by anything else is an error, not an end.
//! - Numbers are octal, or GNU base-256 two's complement, negative values included.
//! - GNU long names and link names (`L`, `K`), old GNU sparse members (`S`), PAX global
//!   headers (parsed, then ignored, as Docker ignores them; Go reads one as an entry of its
//!   own, so the extended header or long name before it applies to no entry).
//! - Names as Go assembles them: a ustar prefix whatever the version field says, and the
//!   prefix Go's writer before 1.8 put into GNU headers.
//! - Memory stays bounded whatever the sizes claim: an extended header or long name is at
//!   most [`MAX_META_HEADER`] bytes, a path at most [`PATH_MAX`] - 1 bytes, as the kernel
//!   takes them.
//!
//! The reader does not judge what entries mean (ids that must fit 32 bits, device numbers
//! Linux can hold, whiteouts, `..`): its caller does.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};

use crate::tree::Timestamp;

mod header;
mod pax;

use header::*;
use pax::{Pax, PAX_LINKPATH, PAX_PATH};

/// Tar's record block.
pub const BLOCK: u64 = 512;
/// Linux's PATH_MAX, which counts the terminating NUL: a path has at most 4095 bytes.
pub const PATH_MAX: usize = 4096;
/// The largest PAX extended header or GNU long name read (Go's `maxSpecialFileSize`).
pub const MAX_META_HEADER: u64 = 1 << 20;
/// An old GNU sparse member may list at most this many segments.
const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
    /// Any other type flag (GNU volume labels, multi-volume continuations, vendor types).
    Other(u8),
}

impl Kind {
    fn of(typeflag: u8) -> Self {
        match typeflag {
            b'0' | b'\0' | b'7' | b'S' => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }

    /// Types whose `size` field says nothing about the data that follows: none does.
    fn header_only(self) -> bool {
        !matches!(self, Kind::File | Kind::Other(_))
    }
}

/// How a sparse member stores its holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sparse {
    /// Old GNU form (type `S`): the data segments (offset, length) come from the headers,
    /// the data is the segments back to back.
    Segments(Vec<(u64, u64)>),
    /// GNU PAX format 1.0: the data starts with the segment map (see `pax_sparse`).
    MapInData,
}

/// A sparse member: its real size, and where its map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseFile {
    pub real_size: u64,
    pub map: Sparse,
}

/// One entry, its headers merged: PAX records over GNU long names over the header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// A link's target (hard link or symlink); empty for other kinds.
    pub link: Vec<u8>,
    /// The mode field as written, permission bits and more.
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Timestamp,
    /// PAX `atime` and `ctime`, when given.
    pub atime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    /// Device numbers; 0 where the format has none.
    pub dev_major: u64,
    pub dev_minor: u64,
    /// Bytes of data that follow in the archive (0 for header-only types).
    pub size: u64,
    /// Extended attributes by full name, from `SCHILY.xattr.*` records.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub sparse: Option<SparseFile>,
    /// Where the entry's data starts in the archive.
    pub data_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The archive could not be read, or it ends in the middle of something.
    #[error("{0}")]
    Read(#[source] io::Error),
    /// The archive's structure is broken at this offset.
    #[error("bad tar header at byte {offset}: {problem}")]
    Header { offset: u64, problem: String },
    /// One entry's headers hold a value that cannot be read one way only.
    #[error("tar entry {path:?}: {problem}")]
    Entry { path: String, problem: String },
}

/// A path for an error message: lossy, and cut short when long.
pub fn shown(path: &[u8]) -> String {
    const MAX_SHOWN: usize = 200;
    let text = String::from_utf8_lossy(&path[..path.len().min(MAX_SHOWN)]).into_owned();
    if path.len() > MAX_SHOWN {
        format!("{text}… ({} bytes)", path.len())
    } else {
        text
    }
}

/// Reads entries from a tar stream. `next_entry` moves to the next entry, skipping what is
/// left of the current one's data; `data` reads the current entry's data.
pub struct TarReader<R> {
    inner: R,
    /// How data that is not read is passed over: read and dropped, or seeked over.
    skip: fn(&mut R, u64) -> io::Result<()>,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Data bytes of the current entry not read yet, and the padding after them.
    remaining: u64,
    padding: u64,
    ended: bool,
}

fn skip_by_reading<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn skip_by_seeking<R: Read + Seek>(r: &mut R, n: u64) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    // Seeking past the end succeeds: read the last byte skipped, so a cut archive shows.
    r.seek(SeekFrom::Current(i64::try_from(n - 1).map_err(|_| io::ErrorKind::InvalidData)?))?;
    r.read_exact(&mut [0u8])
}

impl<R: Read> TarReader<R> {
    /// A reader of a stream: data not read is read and dropped.
    pub fn new(inner: R) -> Self {
        TarReader { inner, skip: skip_by_reading::<R>, pos: 0, remaining: 0, padding: 0, ended: false }
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.ended {
            return Ok(None);
        }
        let rest = self.remaining + self.padding;
        (self.skip)(&mut self.inner, rest).map_err(TarError::Read)?;
        self.pos += rest;
        (self.remaining, self.padding) = (0, 0);
        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let offset = self.pos;
            let Some(block) = self.read_header()? else {
                self.ended = true;
                return Ok(None);
            };
            let bad = |problem: String| TarError::Header { offset, problem };
            let typeflag = block[TYPEFLAG];
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    let size = unsigned(&block[SIZE]).map_err(|p| bad(format!("size: {p}")))?;
                    let data = self.read_meta(size).map_err(|e| match e {
                        MetaError::Read(e) => TarError::Read(e),
                        MetaError::TooLarge => bad(format!(
                            "an extended header of {size} bytes (at most {MAX_META_HEADER} are read)"
                        )),
                    })?;
                    match typeflag {
                        // A global header applies to every later entry; Docker ignores it, so
                        // do we, once it is known to be well formed. Go returns it as an entry
                        // of its own: the headers before it apply to nothing.
                        b'g' => {
                            Pax::parse(&data).map_err(bad)?;
                            (pax, long_name, long_link) = (None, None, None);
                        }
                        b'x' => pax = Some(Pax::parse(&data).map_err(bad)?),
                        b'L' => long_name = Some(until_nul(&data).to_vec()),
                        _ => long_link = Some(until_nul(&data).to_vec()),
                    }
                }
                _ => {
                    let meta = Meta { pax: pax.unwrap_or_default(), long_name, long_link };
                    return self.entry(&block, meta, offset).map(Some);
                }
            }
        }
    }

    /// The current entry's data (what is left of it).
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }

    /// Reads exactly one block, or nothing at the end of the stream.
    fn read_block(&mut self) -> Result<Option<[u8; BLOCK as usize]>, TarError> {
        let mut block = [0u8; BLOCK as usize];
        let mut filled = 0;
        while filled < block.len() {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(TarError::Read(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Read(e)),
            }
        }
        self.pos += BLOCK;
        Ok(Some(block))
    }

    /// The next header block with its checksum verified; `None` at the end of the archive.
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK as usize]>, TarError> {
        let offset = self.pos;
        let Some(block) = self.read_block()? else { return Ok(None) };
        if is_zero(&block) {
            return match self.read_block()? {
                Some(next) if !is_zero(&next) => Err(TarError::Header {
                    offset,
                    problem: "a single zero block inside the archive (two end it)".into(),
                }),
                _ => Ok(None),
            };
        }
        let stated = octal(&block[CHKSUM])
            .map_err(|p| TarError::Header { offset, problem: format!("checksum field: {p}") })?;
        let (unsigned, signed) = checksums(&block);
        if stated != unsigned && stated as i64 != signed {
            return Err(TarError::Header { offset, problem: "header checksum mismatch".into() });
        }
        Ok(Some(block))
    }

    /// The data of an extended header or long name, padding passed over.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, MetaError> {
        if size > MAX_META_HEADER {
            return Err(MetaError::TooLarge);
        }
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data).map_err(MetaError::Read)?;
        let pad = padding(size);
        (self.skip)(&mut self.inner, pad).map_err(MetaError::Read)?;
        self.pos += size + pad;
        Ok(data)
    }

    /// Builds the entry of header `block`, reading its sparse extension blocks if any.
    fn entry(&mut self, block: &[u8; BLOCK as usize], meta: Meta, offset: u64) -> Result<TarEntry, TarError> {
        let format = Format::of(block);
        let Meta { pax, long_name, long_link } = meta;
        let header_name = || -> Vec<u8> {
            let name = until_nul(&block[NAME]);
            match format.prefix(block) {
                [] => name.to_vec(),
                prefix => [prefix, b"/", name].concat(),
            }
        };
        // Go's order: the header, then PAX records, then GNU long names.
        let mut path =
            long_name.or_else(|| pax.get(PAX_PATH).map(<[u8]>::to_vec)).unwrap_or_else(header_name);
        let link = long_link
            .or_else(|| pax.get(PAX_LINKPATH).map(<[u8]>::to_vec))
            .unwrap_or_else(|| until_nul(&block[LINKNAME]).to_vec());
        let typeflag = block[TYPEFLAG];
        let mut kind = Kind::of(typeflag);
        // v7 archives mark a directory by a trailing slash on a regular file's name.
        if typeflag == b'\0' && path.ends_with(b"/") {
            kind = Kind::Directory;
        }
        let pax_sparse = typeflag != b'S' && kind == Kind::File && pax.is_sparse();
        let at_header = |field: &str, problem: String| TarError::Header {
            offset,
            problem: format!("{field}: {problem}"),
        };
        let mut entry = TarEntry {
            path: Vec::new(),
            kind,
            link: Vec::new(),
            mode: unsigned(&block[MODE]).map_err(|p| at_header("mode", p))?,
            uid: unsigned(&block[UID]).map_err(|p| at_header("uid", p))?,
            gid: unsigned(&block[GID]).map_err(|p| at_header("gid", p))?,
            mtime: Timestamp::new(numeric(&block[MTIME]).map_err(|p| at_header("mtime", p))?, 0),
            atime: None,
            ctime: None,
            dev_major: 0,
            dev_minor: 0,
            size: unsigned(&block[SIZE]).map_err(|p| at_header("size", p))?,
            xattrs: BTreeMap::new(),
            sparse: None,
            data_offset: 0,
        };
        if format != Format::V7 {
            entry.dev_major = unsigned(&block[DEVMAJOR]).map_err(|p| at_header("device major", p))?;
            entry.dev_minor = unsigned(&block[DEVMINOR]).map_err(|p| at_header("device minor", p))?;
        }
        if pax_sparse {
            if let Some(name) = pax.sparse("name") {
                path = name.to_vec();
            }
        }
        let bad = |problem: String| TarError::Entry { path: shown(&path), problem };
        pax.apply(&mut entry).map_err(bad)?;
        if path.len() >= PATH_MAX {
            return Err(bad(format!("its name is {} bytes, longer than PATH_MAX allows", path.len())));
        }
        if kind.header_only() {
            entry.size = 0;
        }
        if matches!(kind, Kind::HardLink | Kind::Symlink) {
            if link.len() >= PATH_MAX {
                return Err(bad(format!("its target is {} bytes, longer than PATH_MAX allows", link.len())));
            }
            entry.link = link;
        }
        if typeflag == b'S' {
            // star has a sparse form of its own under the same flag, laid out otherwise.
            if format != Format::Gnu {
                return Err(at_header(
                    "type",
                    "an old GNU sparse member in a header that is not GNU's".into(),
                ));
            }
            let real_size = unsigned(&block[GNU_REAL_SIZE]).map_err(|p| at_header("sparse real size", p))?;
            let segments = self.old_gnu_sparse_map(block).map_err(|e| match e {
                TarError::Header { offset, problem } => {
                    TarError::Header { offset, problem: format!("sparse map: {problem}") }
                }
                other => other,
            })?;
            entry.sparse = Some(SparseFile { real_size, map: Sparse::Segments(segments) });
        } else if pax_sparse {
            entry.sparse = Some(pax.sparse_1_0().map_err(bad)?);
        }
        entry.path = path;
        entry.data_offset = self.pos;
        self.remaining = entry.size;
        self.padding = padding(entry.size);
        Ok(entry)
    }

    /// The segments of an old GNU sparse member: those of its header, then those of each
    /// extension block that follows it.
    fn old_gnu_sparse_map(&mut self, block: &[u8; BLOCK as usize]) -> Result<Vec<(u64, u64)>, TarError> {
        let mut segments = Vec::new();
        let mut extended = sparse_pairs(&block[GNU_SPARSE], &mut segments, block[GNU_IS_EXTENDED])
            .map_err(|problem| TarError::Header { offset: self.pos - BLOCK, problem })?;
        while extended {
            let offset = self.pos;
            let ext = self.read_block()?.ok_or(TarError::Read(io::ErrorKind::UnexpectedEof.into()))?;
            extended = sparse_pairs(&ext[GNU_EXT_SPARSE], &mut segments, ext[GNU_EXT_IS_EXTENDED])
                .map_err(|problem| TarError::Header { offset, problem })?;
            if segments.len() > MAX_SPARSE_SEGMENTS {
                return Err(TarError::Header { offset, problem: "too many segments".into() });
            }
        }
        Ok(segments)
    }
}

impl<R: Read + Seek> TarReader<R> {
    /// A reader of a file: data not read is seeked over.
    pub fn seekable(inner: R) -> Self {
        TarReader { skip: skip_by_seeking::<R>, ..TarReader::new(inner) }
    }
}

enum MetaError {
    Read(io::Error),
    TooLarge,
}

/// The special headers that came before an entry's own.
struct Meta {
    pax: Pax,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

/// Reads the current entry's data; fails with `UnexpectedEof` when the archive ends first.
pub struct EntryData<'a, R> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        let want = r.remaining.min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry's data",
            ));
        }
        r.remaining -= n as u64;
        r.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
