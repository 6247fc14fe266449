//! Extended attributes: in the inode body after the extra fields (96 bytes), or in one
//! external block (`i_file_acl`) when they do not fit there.
//!
//! Spec: Documentation/filesystems/ext4/attributes.rst. Names are stored without their
//! namespace prefix, as a prefix index; entries are sorted by (index, name length, name), the
//! order the kernel's lookup in a block relies on. POSIX ACLs are converted from the xattr
//! form user space sees to ext4's compact on-disk form (fs/ext4/acl.h).

use std::borrow::Cow;

use super::checksum::crc32c_raw;
use super::disk::{get_u16, get_u32, put_u16, put_u32, put_u8};
use super::inode::{IBODY_XATTR_OFFSET, INODE_SIZE};
use crate::tree::Xattrs;

/// attributes.rst: `h_magic` of a block and the magic that opens the in-inode area.
pub const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
const BLOCK: usize = 4096;
const BLOCK_HEADER: usize = 32;
const ENTRY_HEADER: usize = 16;
/// The in-inode area: 96 bytes, of which the first 4 are the magic.
const IBODY_AREA: usize = INODE_SIZE - IBODY_XATTR_OFFSET;

/// attributes.rst, "Attribute Name Indices". Full names first: the ACL names are more
/// specific than `system.`.
const PREFIXES: &[(&[u8], u8)] = &[
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"user.", 1),
    (b"trusted.", 4),
    (b"security.", 6),
    (b"system.", 7),
];
const ACL_ACCESS: u8 = 2;
const ACL_DEFAULT: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XattrError {
    #[error("xattr {0:?} is in no namespace ext4 stores (user, trusted, security, system)")]
    Namespace(String),
    #[error("xattr name {0:?} is longer than 255 bytes after its namespace")]
    NameTooLong(String),
    #[error("xattr {0:?} holds a malformed POSIX ACL")]
    BadAcl(String),
}

/// One attribute as stored: prefix index, name suffix, on-disk value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub index: u8,
    pub name: &'a [u8],
    pub value: Cow<'a, [u8]>,
}

fn padded(n: usize) -> usize {
    (n + 3) & !3
}

fn entry_len(e: &Entry) -> usize {
    padded(ENTRY_HEADER + e.name.len())
}

/// The entries of a node's xattrs in on-disk order, with values in on-disk form.
pub fn entries(xattrs: &Xattrs) -> Result<Vec<Entry<'_>>, XattrError> {
    let mut out = Vec::with_capacity(xattrs.len());
    for (name, value) in xattrs {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let (prefix, index) = PREFIXES
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .ok_or_else(|| XattrError::Namespace(shown()))?;
        let suffix = &name[prefix.len()..];
        if suffix.len() > 255 {
            return Err(XattrError::NameTooLong(shown()));
        }
        // Only the two ACL names map to index 2 and 3; a longer name with that start is a
        // plain system.* attribute.
        let (index, suffix) = if matches!(*index, ACL_ACCESS | ACL_DEFAULT) && !suffix.is_empty() {
            (7, &name[b"system.".len()..])
        } else {
            (*index, suffix)
        };
        let value = if matches!(index, ACL_ACCESS | ACL_DEFAULT) {
            Cow::Owned(acl_to_disk(value).ok_or_else(|| XattrError::BadAcl(shown()))?)
        } else {
            Cow::Borrowed(value.as_slice())
        };
        out.push(Entry { index, name: suffix, value });
    }
    out.sort_by(|a, b| (a.index, a.name.len(), a.name).cmp(&(b.index, b.name.len(), b.name)));
    Ok(out)
}

/// Bytes the entries take in a table: headers, names, the 4-byte terminator, and values.
fn table_size(entries: &[Entry]) -> usize {
    entries.iter().map(|e| entry_len(e) + padded(e.value.len())).sum::<usize>() + 4
}

pub fn fits_in_inode(entries: &[Entry]) -> bool {
    table_size(entries) <= IBODY_AREA - 4
}

pub fn fits_in_block(entries: &[Entry]) -> bool {
    table_size(entries) <= BLOCK - BLOCK_HEADER
}

/// attributes.rst, "Attribute hashes": the name bytes, then the value's 32-bit words.
fn entry_hash(e: &Entry) -> u32 {
    let mut hash = 0u32;
    for &c in e.name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    let mut words = e.value.chunks(4);
    for w in &mut words {
        let mut word = [0u8; 4];
        word[..w.len()].copy_from_slice(w);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(word);
    }
    hash
}

/// Writes entries from `table[first..]` and values from the end of `table` down; value
/// offsets count from `base`.
fn write_table(table: &mut [u8], first: usize, base: usize, entries: &[Entry]) -> Vec<u32> {
    let mut at = first;
    let mut value_end = table.len();
    let mut hashes = Vec::with_capacity(entries.len());
    for e in entries {
        let offs = if e.value.is_empty() {
            0
        } else {
            value_end -= padded(e.value.len());
            table[value_end..value_end + e.value.len()].copy_from_slice(&e.value);
            value_end - base
        };
        let hash = entry_hash(e);
        put_u8(table, at, e.name.len() as u8);
        put_u8(table, at + 1, e.index);
        put_u16(table, at + 2, offs as u16);
        put_u32(table, at + 4, 0); // e_value_inum: values stay in the table
        put_u32(table, at + 8, e.value.len() as u32);
        put_u32(table, at + 12, hash);
        table[at + ENTRY_HEADER..at + ENTRY_HEADER + e.name.len()].copy_from_slice(e.name);
        at += entry_len(e);
        hashes.push(hash);
    }
    hashes
}

/// The in-inode area (96 bytes): magic, entries, values; offsets count from the first entry.
pub fn inode_area(entries: &[Entry]) -> Vec<u8> {
    let mut area = vec![0u8; IBODY_AREA];
    put_u32(&mut area, 0, EXT4_XATTR_MAGIC);
    write_table(&mut area, 4, 4, entries);
    area
}

/// The external block at `block_nr`, with its header hash and checksum.
pub fn block(entries: &[Entry], block_nr: u64, fs_seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    put_u32(&mut b, 0, EXT4_XATTR_MAGIC);
    put_u32(&mut b, 4, 1); // h_refcount
    put_u32(&mut b, 8, 1); // h_blocks
    let hashes = write_table(&mut b, BLOCK_HEADER, 0, entries);
    // attributes.rst: the block hash folds the entry hashes.
    let h_hash = hashes.iter().fold(0u32, |h, &e| (h << 16) ^ (h >> 16) ^ e);
    put_u32(&mut b, 12, h_hash);
    // checksums.rst: crc32c(fs seed, block number as le64, block with h_checksum zero).
    let crc = crc32c_raw(fs_seed, &block_nr.to_le_bytes());
    let crc = crc32c_raw(crc, &b);
    put_u32(&mut b, 16, crc);
    b
}

// POSIX ACL tags (include/uapi/linux/posix_acl.h) and the two encodings' versions.
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const POSIX_ACL_XATTR_VERSION: u32 = 2;
const EXT4_ACL_VERSION: u32 = 1;

/// The xattr form (version 2, 8-byte entries) to ext4's (version 1, 4-byte entries except
/// named users and groups, which keep their id).
fn acl_to_disk(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4 || (value.len() - 4) % 8 != 0 || get_u32(value, 0) != POSIX_ACL_XATTR_VERSION {
        return None;
    }
    let mut out = EXT4_ACL_VERSION.to_le_bytes().to_vec();
    for e in value[4..].chunks(8) {
        let tag = get_u16(e, 0);
        out.extend_from_slice(&e[..4]);
        match tag {
            ACL_USER | ACL_GROUP => out.extend_from_slice(&e[4..8]),
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(pairs: &[(&str, &[u8])]) -> Xattrs {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn names_lose_their_prefix_and_sort_by_index_then_length() {
        let xs = x(&[("user.bb", b"1"), ("user.a", b"2"), ("security.capability", b"3"), ("trusted.z", b"")]);
        let e = entries(&xs).unwrap();
        let got: Vec<_> = e.iter().map(|e| (e.index, e.name)).collect();
        assert_eq!(got, [(1, &b"a"[..]), (1, b"bb"), (4, b"z"), (6, b"capability")]);
    }

    #[test]
    fn unknown_namespace_is_an_error() {
        assert!(matches!(entries(&x(&[("foo.bar", b"1")])), Err(XattrError::Namespace(_))));
    }

    #[test]
    fn small_sets_fit_in_the_inode_large_ones_in_a_block() {
        let xs = x(&[("user.a", &[7; 60])]);
        assert!(fits_in_inode(&entries(&xs).unwrap()));
        let big = vec![1u8; 3072];
        let xs = x(&[("user.a", &big)]);
        let e = entries(&xs).unwrap();
        assert!(!fits_in_inode(&e) && fits_in_block(&e));
        let huge = vec![1u8; 4096];
        assert!(!fits_in_block(&entries(&x(&[("user.a", &huge)])).unwrap()));
    }

    #[test]
    fn acl_converts_to_the_short_form() {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 6u16, u32::MAX), (2, 4, 1000), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
        {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        let d = acl_to_disk(&v).unwrap();
        assert_eq!(d.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert!(acl_to_disk(&v[..7]).is_none());
    }
}
