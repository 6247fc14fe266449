//! The pack file: many chunks in one file, made durable with one fsync, never changed once
//! written, so that the same bytes can be one object in a remote store too.
//!
//! ```text
//! frame 0 | frame 1 | …         one zstd frame per chunk, in the order they were written
//! index                        N entries sorted by digest, 48 bytes each:
//!                              digest[32] | offset u64 | stored length u32 | raw length u32
//! footer (56 bytes)            index offset u64 | N u64 | sha256(index)[32] | "diskcpk1"
//! ```
//!
//! All integers little-endian. The pack's name is the hex sha256 of its index: two packs
//! holding the same frames at the same places have the same name, and a reader that knows
//! the name can check the index it fetched (from a local file or a range of a remote
//! object) before trusting any offset in it.

use std::io::{self, Write};

use crate::digest::{Digest, Hasher};

/// Bytes after which a writer closes its pack and starts the next: big enough that a store
/// of hundreds of GiB has thousands of packs, not millions of files, small enough that gc
/// rewriting a mostly dead pack copies little and a remote fetch of a whole pack is cheap.
pub const PACK_TARGET_BYTES: u64 = 32 << 20;
/// One index entry.
pub const ENTRY_BYTES: usize = 48;
/// The fixed-size footer at the end of every pack.
pub const FOOTER_BYTES: usize = 56;
const MAGIC: &[u8; 8] = b"diskcpk1";

/// Where one chunk sits in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub digest: Digest,
    pub offset: u64,
    /// Bytes of its zstd frame.
    pub stored_len: u32,
    /// Bytes once decompressed.
    pub raw_len: u32,
}

/// What a pack's footer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub index_offset: u64,
    pub entries: u64,
    /// The pack's name: the sha256 of its index bytes.
    pub name: Digest,
}

impl Footer {
    pub fn index_len(&self) -> u64 {
        self.entries * ENTRY_BYTES as u64
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackFormatError {
    #[error("too short to be a pack ({0} bytes)")]
    TooShort(u64),
    #[error("the footer does not end in the pack magic")]
    BadMagic,
    #[error("the footer places the index outside the file")]
    IndexOutOfRange,
    #[error("the index does not hash to the name in the footer")]
    IndexDigest,
    #[error("index entry {0} is out of order or points outside the frames")]
    BadEntry(usize),
}

/// Parses the last [`FOOTER_BYTES`] of a pack of `pack_len` bytes.
pub fn parse_footer(bytes: &[u8], pack_len: u64) -> Result<Footer, PackFormatError> {
    if pack_len < FOOTER_BYTES as u64 || bytes.len() != FOOTER_BYTES {
        return Err(PackFormatError::TooShort(pack_len));
    }
    if &bytes[48..56] != MAGIC {
        return Err(PackFormatError::BadMagic);
    }
    let index_offset = u64_at(bytes, 0);
    let entries = u64_at(bytes, 8);
    let name = Digest::from_bytes(bytes[16..48].try_into().expect("32 bytes"));
    let end = entries
        .checked_mul(ENTRY_BYTES as u64)
        .and_then(|len| len.checked_add(index_offset))
        .ok_or(PackFormatError::IndexOutOfRange)?;
    if end != pack_len - FOOTER_BYTES as u64 {
        return Err(PackFormatError::IndexOutOfRange);
    }
    Ok(Footer { index_offset, entries, name })
}

/// Parses and checks an index against its footer: it hashes to the name, it is sorted and
/// every frame lies before the index.
pub fn parse_index(bytes: &[u8], footer: &Footer) -> Result<Vec<PackEntry>, PackFormatError> {
    if bytes.len() as u64 != footer.index_len() {
        return Err(PackFormatError::IndexOutOfRange);
    }
    if Digest::of(bytes) != footer.name {
        return Err(PackFormatError::IndexDigest);
    }
    let mut out: Vec<PackEntry> = Vec::with_capacity(footer.entries as usize);
    for (i, raw) in bytes.chunks_exact(ENTRY_BYTES).enumerate() {
        let entry = PackEntry {
            digest: Digest::from_bytes(raw[..32].try_into().expect("32 bytes")),
            offset: u64_at(raw, 32),
            stored_len: u32::from_le_bytes(raw[40..44].try_into().expect("4 bytes")),
            raw_len: u32::from_le_bytes(raw[44..48].try_into().expect("4 bytes")),
        };
        let sorted = out.last().is_none_or(|last| last.digest < entry.digest);
        if !sorted || entry.offset + u64::from(entry.stored_len) > footer.index_offset {
            return Err(PackFormatError::BadEntry(i));
        }
        out.push(entry);
    }
    Ok(out)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Writes frames to `out`, then (at [`PackBuilder::finish`]) the sorted index and footer.
/// The caller makes `out` durable and names it.
pub struct PackBuilder<W: Write> {
    out: W,
    len: u64,
    entries: Vec<PackEntry>,
}

impl<W: Write> PackBuilder<W> {
    pub fn new(out: W) -> Self {
        PackBuilder { out, len: 0, entries: Vec::new() }
    }

    /// Bytes of frames written so far.
    pub fn frame_bytes(&self) -> u64 {
        self.len
    }

    /// Appends one chunk's zstd frame.
    pub fn append(&mut self, digest: Digest, frame: &[u8], raw_len: u32) -> io::Result<()> {
        self.out.write_all(frame)?;
        self.entries.push(PackEntry { digest, offset: self.len, stored_len: frame.len() as u32, raw_len });
        self.len += frame.len() as u64;
        Ok(())
    }

    /// Writes the index and footer; returns the writer, the pack's name and its entries.
    pub fn finish(mut self) -> io::Result<(W, Digest, Vec<PackEntry>)> {
        self.entries.sort_by_key(|e| e.digest);
        self.entries.dedup_by_key(|e| e.digest);
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for entry in &self.entries {
            index.extend_from_slice(entry.digest.as_bytes());
            index.extend_from_slice(&entry.offset.to_le_bytes());
            index.extend_from_slice(&entry.stored_len.to_le_bytes());
            index.extend_from_slice(&entry.raw_len.to_le_bytes());
        }
        let mut hasher = Hasher::new();
        hasher.update(&index);
        let name = hasher.finish();
        self.out.write_all(&index)?;
        self.out.write_all(&self.len.to_le_bytes())?;
        self.out.write_all(&(self.entries.len() as u64).to_le_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(MAGIC)?;
        self.out.flush()?;
        Ok((self.out, name, self.entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Digest, Vec<PackEntry>) {
        let mut builder = PackBuilder::new(Vec::new());
        for word in [b"bb".as_slice(), b"a", b"ccc"] {
            builder.append(Digest::of(word), word, word.len() as u32).unwrap();
        }
        builder.finish().unwrap()
    }

    #[test]
    fn a_pack_round_trips_through_footer_and_index() {
        let (bytes, name, entries) = sample();
        let len = bytes.len() as u64;
        let footer = parse_footer(&bytes[bytes.len() - FOOTER_BYTES..], len).unwrap();
        assert_eq!(footer.name, name);
        assert_eq!(footer.index_offset, 6);
        let at = footer.index_offset as usize;
        let parsed = parse_index(&bytes[at..at + footer.index_len() as usize], &footer).unwrap();
        assert_eq!(parsed, entries);
        for entry in parsed {
            let frame = &bytes[entry.offset as usize..][..entry.stored_len as usize];
            assert_eq!(Digest::of(frame), entry.digest);
        }
    }

    #[test]
    fn a_damaged_index_or_footer_is_refused() {
        let (mut bytes, _, _) = sample();
        let len = bytes.len() as u64;
        let footer = parse_footer(&bytes[bytes.len() - FOOTER_BYTES..], len).unwrap();
        let at = footer.index_offset as usize;
        bytes[at + 40] ^= 1;
        let index = &bytes[at..at + footer.index_len() as usize];
        assert_eq!(parse_index(index, &footer), Err(PackFormatError::IndexDigest));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(parse_footer(&bytes[bytes.len() - FOOTER_BYTES..], len), Err(PackFormatError::BadMagic));
        assert!(matches!(parse_footer(b"short", 5), Err(PackFormatError::TooShort(5))));
    }
}
