//! Hand-made tar bytes for tests of hostile input: raw 512-byte headers (ustar, GNU, PAX)
//! written field by field, so a test can put in them what no tar writer would. Shared by
//! the unit tests of the tar reader and the integration tests (included by path).
#![allow(dead_code)]

use std::ops::Range;

pub const BLOCK: usize = 512;

pub const NAME: Range<usize> = 0..100;
pub const MODE: Range<usize> = 100..108;
pub const UID: Range<usize> = 108..116;
pub const GID: Range<usize> = 116..124;
pub const SIZE: Range<usize> = 124..136;
pub const MTIME: Range<usize> = 136..148;
pub const CHKSUM: Range<usize> = 148..156;
pub const TYPEFLAG: usize = 156;
pub const LINKNAME: Range<usize> = 157..257;
pub const MAGIC: Range<usize> = 257..265;
pub const DEVMAJOR: Range<usize> = 329..337;
pub const DEVMINOR: Range<usize> = 337..345;
pub const PREFIX: Range<usize> = 345..500;
pub const GNU_SPARSE: Range<usize> = 386..482;
pub const GNU_IS_EXTENDED: usize = 482;
pub const GNU_REAL_SIZE: Range<usize> = 483..495;

/// One header block; its checksum is computed when it is written.
#[derive(Clone)]
pub struct Header {
    pub block: [u8; BLOCK],
}

impl Header {
    /// A POSIX ustar header: mode 0644, owner 0:0, mtime 1 700 000 000.
    pub fn ustar(name: &[u8], typeflag: u8, size: u64) -> Self {
        Self::with_magic(b"ustar\x0000", name, typeflag, size)
    }

    /// A GNU header (magic `ustar  \0`, no prefix field).
    pub fn gnu(name: &[u8], typeflag: u8, size: u64) -> Self {
        Self::with_magic(b"ustar  \0", name, typeflag, size)
    }

    fn with_magic(magic: &[u8], name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut h = Header { block: [0; BLOCK] };
        h.block[MAGIC].copy_from_slice(magic);
        h.block[TYPEFLAG] = typeflag;
        h.set(NAME, name)
            .octal(MODE, 0o644)
            .octal(UID, 0)
            .octal(GID, 0)
            .octal(MTIME, 1_700_000_000)
            .octal(SIZE, size)
    }

    /// Puts `bytes` at the start of `field` (the rest stays as it was).
    pub fn set(mut self, field: Range<usize>, bytes: &[u8]) -> Self {
        assert!(bytes.len() <= field.len(), "{} bytes do not fit {field:?}", bytes.len());
        self.block[field.start..field.start + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// An octal number, zero-padded, NUL-terminated, as ustar writes it.
    pub fn octal(mut self, field: Range<usize>, value: u64) -> Self {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        assert!(text.len() == field.len(), "{value} does not fit {field:?} in octal");
        self.block[field].copy_from_slice(text.as_bytes());
        self
    }

    /// GNU base-256: big-endian two's complement with the top bit of the field set.
    pub fn base256(mut self, field: Range<usize>, value: i64) -> Self {
        let len = field.len();
        let mut bytes = vec![if value < 0 { 0xff } else { 0 }; len];
        bytes[len - 8..].copy_from_slice(&value.to_be_bytes());
        bytes[0] |= 0x80;
        self.block[field].copy_from_slice(&bytes);
        self
    }

    pub fn mode(self, mode: u64) -> Self {
        self.octal(MODE, mode)
    }

    pub fn link(self, target: &[u8]) -> Self {
        self.set(LINKNAME, target)
    }

    pub fn device(self, major: u64, minor: u64) -> Self {
        self.octal(DEVMAJOR, major).octal(DEVMINOR, minor)
    }

    /// The block with its checksum.
    pub fn bytes(&self) -> [u8; BLOCK] {
        let mut b = self.block;
        b[CHKSUM].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }
}

/// A PAX record: its length prefix counts the whole record, itself included.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    [len.to_string().as_bytes(), b" ", key, b"=", value, b"\n"].concat()
}

/// An archive built entry by entry.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }

    /// A header followed by `data` and its padding.
    pub fn entry(mut self, header: Header, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(&header.bytes());
        self.data(data)
    }

    /// Bytes and the zeros that pad them to a block.
    pub fn data(mut self, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().next_multiple_of(BLOCK), 0);
        self
    }

    /// A file with `data`.
    pub fn file(self, name: &[u8], data: &[u8]) -> Self {
        self.entry(Header::ustar(name, b'0', data.len() as u64), data)
    }

    /// A special header (`x`, `g`, `L`, `K`) holding `data`.
    pub fn special(self, typeflag: u8, data: &[u8]) -> Self {
        self.entry(Header::ustar(b"././@Special", typeflag, data.len() as u64), data)
    }

    /// A PAX extended header for the next entry.
    pub fn pax(self, records: &[(&[u8], &[u8])]) -> Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.special(b'x', &data)
    }

    /// Raw bytes, unpadded.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The archive with its two zero blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 2 * BLOCK, 0);
        self.bytes
    }
}
