//! PAX extended headers (POSIX.1-2001, pax, "pax Extended Header Format"): records split
//! by their length, the last of a key winning, and the keys diskc reads put into an entry.

use std::collections::BTreeMap;

use super::{shown, Sparse, SparseFile, TarEntry};
use crate::tree::Timestamp;

pub(super) const PAX_PATH: &[u8] = b"path";
pub(super) const PAX_LINKPATH: &[u8] = b"linkpath";
const PAX_SIZE: &[u8] = b"size";
const PAX_UID: &[u8] = b"uid";
const PAX_GID: &[u8] = b"gid";
const PAX_MTIME: &[u8] = b"mtime";
const PAX_ATIME: &[u8] = b"atime";
const PAX_CTIME: &[u8] = b"ctime";
/// `SCHILY.xattr.NAME=value`: how GNU tar, bsdtar and Go write extended attributes, and the
/// only form Docker reads.
const PAX_XATTR: &[u8] = b"SCHILY.xattr.";
/// `GNU.sparse.KEY=value`: GNU tar's sparse files in PAX form.
const PAX_GNU_SPARSE: &[u8] = b"GNU.sparse.";

/// A PAX extended header's records by key, the last of each key.
#[derive(Default)]
pub(super) struct Pax {
    records: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Pax {
    pub(super) fn parse(mut data: &[u8]) -> Result<Pax, String> {
        let mut records = BTreeMap::new();
        while !data.is_empty() {
            let (record, rest) = pax_record(data)?;
            records.insert(record.key.to_vec(), record.value.to_vec());
            data = rest;
        }
        Ok(Pax { records })
    }

    /// A standard record's value; an empty value stands for none (POSIX: it deletes the
    /// field, leaving the header block's).
    pub(super) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.records.get(key).map(Vec::as_slice).filter(|v| !v.is_empty())
    }

    pub(super) fn sparse(&self, key: &str) -> Option<&[u8]> {
        self.get(&[PAX_GNU_SPARSE, key.as_bytes()].concat())
    }

    /// Whether the records describe a sparse member: any `GNU.sparse.*` record does.
    pub(super) fn is_sparse(&self) -> bool {
        self.records
            .range(PAX_GNU_SPARSE.to_vec()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(PAX_GNU_SPARSE))
    }

    /// The real size of a GNU sparse 1.0 member; the 0.x forms (long obsolete, and 0.0 is
    /// not even valid PAX) are refused rather than misread.
    pub(super) fn sparse_1_0(&self) -> Result<SparseFile, String> {
        if self.sparse("major") != Some(b"1") || self.sparse("minor") != Some(b"0") {
            return Err("GNU sparse format 0.x is not supported (only 1.0)".into());
        }
        if self.sparse("name").is_none() {
            return Err("GNU sparse member without GNU.sparse.name".into());
        }
        // Go takes `GNU.sparse.size` first, as format 0.x named it.
        let real_size = self
            .sparse("size")
            .or_else(|| self.sparse("realsize"))
            .and_then(decimal)
            .ok_or("GNU sparse member without a valid GNU.sparse.realsize")?;
        Ok(SparseFile { real_size, map: Sparse::MapInData })
    }

    /// Puts the records diskc reads into `entry`.
    pub(super) fn apply(&self, entry: &mut TarEntry) -> Result<(), String> {
        let number = |key: &[u8]| -> Result<Option<u64>, String> {
            self.get(key)
                .map(|v| {
                    decimal(v)
                        .ok_or_else(|| format!("PAX {} {:?} is not a decimal number", shown(key), shown(v)))
                })
                .transpose()
        };
        let time = |key: &[u8]| -> Result<Option<Timestamp>, String> {
            self.get(key)
                .map(|v| {
                    parse_time(v).ok_or_else(|| format!("PAX {} {:?} is not a time", shown(key), shown(v)))
                })
                .transpose()
        };
        if let Some(size) = number(PAX_SIZE)? {
            entry.size = size;
        }
        if let Some(uid) = number(PAX_UID)? {
            entry.uid = uid;
        }
        if let Some(gid) = number(PAX_GID)? {
            entry.gid = gid;
        }
        if let Some(mtime) = time(PAX_MTIME)? {
            entry.mtime = mtime;
        }
        entry.atime = time(PAX_ATIME)?;
        entry.ctime = time(PAX_CTIME)?;
        for (key, value) in self.records.range(PAX_XATTR.to_vec()..) {
            let Some(name) = key.strip_prefix(PAX_XATTR) else { break };
            check_xattr_name(name)?;
            entry.xattrs.insert(name.to_vec(), value.clone());
        }
        Ok(())
    }
}

/// Linux's XATTR_NAME_MAX.
const XATTR_NAME_MAX: usize = 255;

/// An xattr name Linux can hold: `namespace.name`, both parts non-empty, no NUL.
fn check_xattr_name(name: &[u8]) -> Result<(), String> {
    let valid = match name.iter().position(|&b| b == b'.') {
        Some(dot) => dot > 0 && dot + 1 < name.len(),
        None => false,
    };
    if !valid || name.contains(&0) || name.len() > XATTR_NAME_MAX {
        return Err(format!(
            "xattr name {:?} is not a namespace and a name of at most {XATTR_NAME_MAX} bytes without NUL",
            shown(name)
        ));
    }
    Ok(())
}

/// One record: `key=value`.
struct Record<'a> {
    key: &'a [u8],
    value: &'a [u8],
}

/// One record off the front of `data`, and the rest.
fn pax_record(data: &[u8]) -> Result<(Record<'_>, &[u8]), String> {
    // A length of more than 20 digits overflows 64 bits anyway.
    let space = data.iter().take(21).position(|&b| b == b' ').ok_or("a PAX record without its length")?;
    let len = decimal(&data[..space])
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("a PAX record's length is not a decimal number")?;
    if len <= space + 1 || len > data.len() {
        return Err(format!("a PAX record's length {len} does not fit the header"));
    }
    let Some((&b'\n', body)) = data[space + 1..len].split_last() else {
        return Err("a PAX record does not end in a newline where its length says".into());
    };
    let eq = body.iter().position(|&b| b == b'=').ok_or("a PAX record without '='")?;
    let (key, value) = (&body[..eq], &body[eq + 1..]);
    if key.is_empty() {
        return Err("a PAX record with an empty key".into());
    }
    if key.contains(&0) {
        return Err(format!("PAX key {:?} holds a NUL byte", shown(key)));
    }
    // Names cannot hold a NUL: Go refuses one in these four.
    if [PAX_PATH, PAX_LINKPATH, b"uname", b"gname"].contains(&key) && value.contains(&0) {
        return Err(format!("PAX {} {:?} holds a NUL byte", shown(key), shown(value)));
    }
    Ok((Record { key, value }, &data[len..]))
}

/// A non-negative decimal number: digits only.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A PAX time: decimal seconds, optionally negative, optionally with a fraction (digits
/// past the ninth are dropped, as Go drops them).
pub(super) fn parse_time(value: &[u8]) -> Option<Timestamp> {
    let (negative, text) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let sec = i64::try_from(decimal(whole)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Some(match (negative, nsec) {
        (false, _) => Timestamp::new(sec, nsec),
        (true, 0) => Timestamp::new(-sec, 0),
        (true, _) => Timestamp::new(-sec - 1, 1_000_000_000 - nsec),
    })
}
