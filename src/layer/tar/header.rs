//! The header block: its fields, its checksum, its numbers, and which format wrote it.

use std::ops::Range;

use super::BLOCK;

// Header fields (POSIX.1-1988 ustar; GNU tar's manual, "Tar Internals", for the GNU ones).
pub(super) const NAME: Range<usize> = 0..100;
pub(super) const MODE: Range<usize> = 100..108;
pub(super) const UID: Range<usize> = 108..116;
pub(super) const GID: Range<usize> = 116..124;
pub(super) const SIZE: Range<usize> = 124..136;
pub(super) const MTIME: Range<usize> = 136..148;
pub(super) const CHKSUM: Range<usize> = 148..156;
pub(super) const TYPEFLAG: usize = 156;
pub(super) const LINKNAME: Range<usize> = 157..257;
pub(super) const MAGIC: Range<usize> = 257..263;
pub(super) const VERSION: Range<usize> = 263..265;
pub(super) const DEVMAJOR: Range<usize> = 329..337;
pub(super) const DEVMINOR: Range<usize> = 337..345;
pub(super) const PREFIX: Range<usize> = 345..500;
/// star (Schily's tar) keeps times in the end of the ustar prefix and marks it with a trailer.
pub(super) const STAR_PREFIX: Range<usize> = 345..476;
pub(super) const STAR_TRAILER: Range<usize> = 508..512;
/// Old GNU sparse: four (offset, numbytes) pairs of 12 bytes each, a continuation flag, the
/// real size; each extension block holds 21 more pairs and its own flag.
pub(super) const GNU_ATIME: Range<usize> = 345..357;
pub(super) const GNU_CTIME: Range<usize> = 357..369;
pub(super) const GNU_SPARSE: Range<usize> = 386..482;
pub(super) const GNU_IS_EXTENDED: usize = 482;
pub(super) const GNU_REAL_SIZE: Range<usize> = 483..495;
pub(super) const GNU_EXT_SPARSE: Range<usize> = 0..504;
pub(super) const GNU_EXT_IS_EXTENDED: usize = 504;

/// The header formats, told apart by magic (and version, for GNU) as Go tells them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

impl Format {
    pub(super) fn of(block: &[u8; BLOCK as usize]) -> Self {
        match (&block[MAGIC], &block[VERSION]) {
            (b"ustar\0", _) if &block[STAR_TRAILER] == b"tar\0" => Format::Star,
            (b"ustar\0", _) => Format::Ustar,
            (b"ustar ", b" \0") => Format::Gnu,
            _ => Format::V7,
        }
    }

    /// The path prefix of the header, empty when there is none.
    pub(super) fn prefix(self, block: &[u8; BLOCK as usize]) -> &[u8] {
        match self {
            Format::Ustar => until_nul(&block[PREFIX]),
            Format::Star => until_nul(&block[STAR_PREFIX]),
            // Go's writer before 1.8 put a ustar prefix into GNU headers, where atime and
            // ctime are; Go (and so Docker) reads such a header's prefix when those fields
            // are not numbers and the prefix is ASCII. So must we, to see the same name.
            Format::Gnu => {
                let not_a_time = |field: &[u8]| field[0] != 0 && numeric(field).is_err();
                let prefix = until_nul(&block[PREFIX]);
                if (not_a_time(&block[GNU_ATIME]) || not_a_time(&block[GNU_CTIME])) && prefix.is_ascii() {
                    prefix
                } else {
                    &[]
                }
            }
            Format::V7 => &[],
        }
    }
}

pub(super) fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

pub(super) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The header's checksum computed both ways tar writers have computed it: the sum of its
/// bytes as unsigned and as signed chars, with the checksum field counted as spaces.
pub(super) fn checksums(block: &[u8; BLOCK as usize]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in block.iter().enumerate() {
        let b = if CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    (unsigned, signed)
}

/// A string field: up to its first NUL.
pub(super) fn until_nul(field: &[u8]) -> &[u8] {
    field.iter().position(|&b| b == 0).map_or(field, |end| &field[..end])
}

/// An octal field, padded with spaces or NULs on either side; empty reads as 0.
pub(super) fn octal(field: &[u8]) -> Result<u64, String> {
    let start = field.iter().position(|&b| b != b' ' && b != 0).unwrap_or(field.len());
    let digits = until_nul(&field[start..]);
    let end = digits.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    let digits = &digits[..end];
    let mut value = 0u64;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return Err(format!("{:?} is not an octal number", String::from_utf8_lossy(field)));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| "the number overflows 64 bits".to_string())?;
    }
    Ok(value)
}

/// A numeric field: octal, or GNU's base-256 (the high bit of the first byte set), a big-
/// endian two's complement number whose sign is the next bit.
pub(super) fn numeric(field: &[u8]) -> Result<i64, String> {
    let Some(&first) = field.first() else { return Ok(0) };
    if first & 0x80 == 0 {
        return octal(field)
            .and_then(|v| i64::try_from(v).map_err(|_| "the number overflows 64 bits".to_string()));
    }
    // -a-1 == !a: read the inverted bytes of a negative number, then invert the result.
    let invert = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut value = 0u64;
    for (i, &b) in field.iter().enumerate() {
        let b = if i == 0 { (b ^ invert) & 0x7f } else { b ^ invert };
        if value >> 56 != 0 {
            return Err("the base-256 number overflows 64 bits".into());
        }
        value = value << 8 | u64::from(b);
    }
    let value = i64::try_from(value).map_err(|_| "the base-256 number overflows 64 bits".to_string())?;
    Ok(if invert != 0 { !value } else { value })
}

/// A numeric field that cannot be negative.
pub(super) fn unsigned(field: &[u8]) -> Result<u64, String> {
    let v = numeric(field)?;
    u64::try_from(v).map_err(|_| format!("{v} is negative"))
}

/// Appends the (offset, numbytes) pairs of a sparse map area; returns whether an extension
/// block follows. A pair of empty fields ends the list.
pub(super) fn sparse_pairs(area: &[u8], out: &mut Vec<(u64, u64)>, is_extended: u8) -> Result<bool, String> {
    for pair in area.chunks_exact(24) {
        if pair[0] == 0 {
            break;
        }
        out.push((unsigned(&pair[..12])?, unsigned(&pair[12..])?));
    }
    Ok(is_extended != 0)
}
