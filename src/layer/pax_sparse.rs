//! GNU tar's sparse members: which parts of the file hold data, and reading just those.
//!
//! Two forms reach here. The old GNU header form (type `S`) lists the data segments in its
//! headers (see [`super::tar`]). PAX format 1.0 (`tar --sparse --format=posix`) puts the map
//! at the start of the member's data, in decimal, one number a line, padded to a 512-byte
//! block (a count, then offset and size pairs); the real name and size are the PAX records
//! `GNU.sparse.name` and `GNU.sparse.realsize` (GNU tar manual, "Storing Sparse Files").
//! Either way the member's data is the segments back to back.
//!
//! Only the blocks around the segments are read and spooled: a hole costs nothing, however
//! large the file says it is.

use std::io::{self, Read};
use std::ops::Range;

use crate::tree::BLOCK_SIZE;

/// Tar's record block.
const BLOCK: usize = 512;
/// A map longer than this is refused: it would describe more segments than any real file.
const MAX_SEGMENTS: u64 = 1 << 20;

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad GNU sparse map: {why}"))
}

/// Reads a PAX 1.0 map from the start of the member's data; returns the segments (offset,
/// size) and how many bytes the map took.
pub(crate) fn read_map(data: &mut impl Read) -> io::Result<(Vec<(u64, u64)>, u64)> {
    let mut numbers: Vec<u64> = Vec::new();
    let mut wanted: Option<u64> = None;
    let mut current: Option<u64> = None;
    let mut consumed = 0u64;
    let mut block = [0u8; BLOCK];
    loop {
        data.read_exact(&mut block)?;
        consumed += BLOCK as u64;
        for &b in &block {
            if wanted.is_some_and(|w| numbers.len() as u64 == w) {
                break;
            }
            match b {
                b'0'..=b'9' => {
                    let v = current.unwrap_or(0);
                    current = Some(
                        v.checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(b - b'0')))
                            .ok_or_else(|| invalid("number too large"))?,
                    );
                }
                b'\n' => {
                    let n = current.take().ok_or_else(|| invalid("empty line"))?;
                    numbers.push(n);
                    if wanted.is_none() {
                        if n > MAX_SEGMENTS {
                            return Err(invalid("too many segments"));
                        }
                        wanted = Some(1 + 2 * n);
                    }
                }
                _ => return Err(invalid("not a decimal number")),
            }
        }
        if wanted.is_some_and(|w| numbers.len() as u64 == w) {
            break;
        }
    }
    let segments = numbers[1..].chunks(2).map(|p| (p[0], p[1])).collect();
    Ok((segments, consumed))
}

/// Checks that `segments` are in order, apart, inside `real_size`, and that with a map of
/// `map_len` bytes they make up the `stored` bytes of the member.
pub(crate) fn check(segments: &[(u64, u64)], real_size: u64, map_len: u64, stored: u64) -> io::Result<()> {
    let mut end = 0;
    let mut total = 0u64;
    for &(offset, size) in segments {
        let seg_end = offset.checked_add(size).ok_or_else(|| invalid("segment overflows"))?;
        if offset < end || seg_end > real_size {
            return Err(invalid("segments overlap or pass the real size"));
        }
        end = seg_end;
        total += size;
    }
    if map_len.checked_add(total) != Some(stored) {
        return Err(invalid("the segments do not add up to the stored size"));
    }
    Ok(())
}

/// The byte ranges of the file that may hold data: each segment widened to whole blocks
/// (the last one ends at `real_size`), overlapping ones merged. Everything else is a hole.
pub(crate) fn windows(segments: &[(u64, u64)], real_size: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &(offset, size) in segments.iter().filter(|s| s.1 > 0) {
        let start = offset / BLOCK_SIZE * BLOCK_SIZE;
        let end = (offset + size).next_multiple_of(BLOCK_SIZE).min(real_size);
        match out.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    }
    out
}

/// The bytes of a sparse file's windows back to back, holes inside them as zeros: what
/// [`super::spool::SpoolWriter::copy_sparse_file`] takes.
pub(crate) struct Expanded<R> {
    inner: R,
    segments: Vec<(u64, u64)>,
    windows: Vec<Range<u64>>,
    next_segment: usize,
    next_window: usize,
    pos: u64,
}

impl<R: Read> Expanded<R> {
    /// `inner` is the member's data after its map; `segments` checked, `windows` theirs.
    pub(crate) fn new(inner: R, segments: Vec<(u64, u64)>, windows: Vec<Range<u64>>) -> Self {
        Expanded { inner, segments, windows, next_segment: 0, next_window: 0, pos: 0 }
    }
}

impl<R: Read> Read for Expanded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let window_end = loop {
            let Some(window) = self.windows.get(self.next_window) else { return Ok(0) };
            self.pos = self.pos.max(window.start);
            if self.pos < window.end {
                break window.end;
            }
            self.next_window += 1;
        };
        while self.segments.get(self.next_segment).is_some_and(|&(offset, size)| offset + size <= self.pos) {
            self.next_segment += 1;
        }
        let (limit, from_data) = match self.segments.get(self.next_segment) {
            Some(&(offset, _)) if self.pos < offset => (offset.min(window_end) - self.pos, false),
            Some(&(offset, size)) => (offset + size - self.pos, true),
            None => (window_end - self.pos, false),
        };
        let n = limit.min(buf.len() as u64) as usize;
        let n = if from_data {
            let got = self.inner.read(&mut buf[..n])?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got
        } else {
            buf[..n].fill(0);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    /// The whole file, from the windows' bytes.
    fn expand(stored: &[u8], real_size: u64) -> io::Result<Vec<u8>> {
        let mut data = stored;
        let (segments, map_len) = read_map(&mut data)?;
        check(&segments, real_size, map_len, stored.len() as u64)?;
        let windows = windows(&segments, real_size);
        let mut bytes = Vec::new();
        Expanded::new(data, segments, windows.clone()).read_to_end(&mut bytes)?;
        let mut file = vec![0u8; real_size as usize];
        let mut at = 0;
        for w in windows {
            let len = (w.end - w.start) as usize;
            file[w.start as usize..w.end as usize].copy_from_slice(&bytes[at..at + len]);
            at += len;
        }
        assert_eq!(at, bytes.len(), "the windows' bytes and nothing else");
        Ok(file)
    }

    #[test]
    fn holes_come_back_as_zeros() {
        let mut stored = map("2\n2\n3\n10\n2\n");
        stored.extend_from_slice(b"abcde");
        assert_eq!(expand(&stored, 14).unwrap(), b"\0\0abc\0\0\0\0\0de\0\0");
    }

    #[test]
    fn only_the_blocks_around_the_data_are_read() {
        let segments = [(10, 5), (BLOCK_SIZE + 1, 1), (1 << 40, 3), ((1 << 40) + 3, 0)];
        let real = (1 << 40) + 10;
        assert_eq!(windows(&segments, real), [0..2 * BLOCK_SIZE, (1 << 40)..real]);
        let mut stored = map(&format!("3\n10\n5\n{}\n1\n{}\n3\n", BLOCK_SIZE + 1, 1u64 << 40));
        stored.extend_from_slice(b"helloxabc");
        let mut data = &stored[..];
        let (segments, map_len) = read_map(&mut data).unwrap();
        check(&segments, real, map_len, stored.len() as u64).unwrap();
        let windows = windows(&segments, real);
        let mut bytes = Vec::new();
        Expanded::new(data, segments, windows).read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, 2 * BLOCK_SIZE + 10);
        assert_eq!(&bytes[10..15], b"hello");
        assert_eq!(&bytes[2 * BLOCK_SIZE as usize..], b"abc\0\0\0\0\0\0\0");
    }

    #[test]
    fn bad_maps_are_errors() {
        for bad in ["x\n", "1\n5\n", "1\n0\n99\n", "2\n5\n1\n0\n1\n"] {
            let stored = map(bad);
            let mut longer = stored.clone();
            longer.push(1);
            assert!(expand(&longer, 10).is_err(), "{bad:?}");
        }
    }
}
