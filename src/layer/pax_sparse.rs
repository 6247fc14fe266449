//! GNU tar's PAX sparse format 1.0 (`tar --sparse --format=posix`): the member's data starts
//! with a map of the data segments, in decimal, one number a line, padded to a 512-byte
//! block (a count, then offset and size pairs), followed by the segments back to back; the
//! real name and size are the PAX records `GNU.sparse.name` and `GNU.sparse.realsize`.
//! (GNU tar manual, "Storing Sparse Files", format 1.0.) The older GNU header form
//! (type `S`) is expanded by the tar crate itself.

use std::io::{self, Read};

/// Tar's record block.
const BLOCK: usize = 512;
/// A map longer than this is refused: it would describe more segments than any real file.
const MAX_SEGMENTS: u64 = 1 << 20;

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad GNU sparse map: {why}"))
}

/// Reads the map from the start of the member's data; returns the segments (offset, size)
/// and how many bytes the map took.
fn read_map(data: &mut impl Read, real_size: u64) -> io::Result<(Vec<(u64, u64)>, u64)> {
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
    let segments: Vec<(u64, u64)> = numbers[1..].chunks(2).map(|p| (p[0], p[1])).collect();
    let mut end = 0;
    for &(offset, size) in &segments {
        let seg_end = offset.checked_add(size).ok_or_else(|| invalid("segment overflows"))?;
        if offset < end || seg_end > real_size {
            return Err(invalid("segments overlap or pass the real size"));
        }
        end = seg_end;
    }
    Ok((segments, consumed))
}

/// The file's bytes with its holes put back as zeros.
pub(crate) struct Expanded<R> {
    inner: R,
    segments: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    real_size: u64,
}

/// Reads the map off `data` (a member of `stored` bytes) and expands it to `real_size`.
pub(crate) fn expand<R: Read>(mut data: R, stored: u64, real_size: u64) -> io::Result<Expanded<R>> {
    let (segments, map_len) = read_map(&mut data, real_size)?;
    let total: u64 = segments.iter().map(|s| s.1).sum();
    if map_len.checked_add(total) != Some(stored) {
        return Err(invalid("the segments do not add up to the stored size"));
    }
    Ok(Expanded { inner: data, segments, next: 0, pos: 0, real_size })
}

impl<R: Read> Read for Expanded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(offset, size)) = self.segments.get(self.next) {
            if self.pos < offset + size || size == 0 && self.pos < offset {
                break;
            }
            self.next += 1;
        }
        let (limit, from_data) = match self.segments.get(self.next) {
            Some(&(offset, _)) if self.pos < offset => (offset - self.pos, false),
            Some(&(offset, size)) => (offset + size - self.pos, true),
            None => (self.real_size - self.pos, false),
        };
        let n = limit.min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
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

    #[test]
    fn holes_come_back_as_zeros() {
        let mut stored = map("2\n2\n3\n10\n2\n");
        stored.extend_from_slice(b"abcde");
        let mut out = Vec::new();
        expand(&stored[..], stored.len() as u64, 14).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"\0\0abc\0\0\0\0\0de\0\0");
    }

    #[test]
    fn bad_maps_are_errors() {
        for bad in ["x\n", "1\n5\n", "1\n0\n99\n", "2\n5\n1\n0\n1\n"] {
            let stored = map(bad);
            assert!(expand(&stored[..], stored.len() as u64 + 1, 10).is_err(), "{bad:?}");
        }
    }
}
