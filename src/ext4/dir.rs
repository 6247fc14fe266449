//! Linear directories: `struct ext4_dir_entry_2` records packed into blocks, each block
//! ending in a checksum tail (`struct ext4_dir_entry_tail`).
//!
//! Spec: Documentation/filesystems/ext4/directory.rst. Entries are written in name-byte
//! order, `.` and `..` first, so a directory's bytes depend only on its contents.

use super::checksum::crc32c_raw;
use super::disk::{put_u16, put_u32, put_u8};
use super::plan::{Role, EXT4_FIRST_INO, ROOT_INO};
use crate::tree::{FsTree, NodeKind};

const BLOCK: usize = 4096;
/// directory.rst: the tail is 12 bytes at the end of each leaf block.
const TAIL: usize = 12;
const USABLE: usize = BLOCK - TAIL;
/// directory.rst, tail `det_reserved_ft`.
const EXT4_FT_DIR_CSUM: u8 = 0xDE;

// directory.rst, `file_type`.
pub const EXT4_FT_REG_FILE: u8 = 1;
pub const EXT4_FT_DIR: u8 = 2;
pub const EXT4_FT_CHRDEV: u8 = 3;
pub const EXT4_FT_BLKDEV: u8 = 4;
pub const EXT4_FT_FIFO: u8 = 5;
pub const EXT4_FT_SOCK: u8 = 6;
pub const EXT4_FT_SYMLINK: u8 = 7;

/// The directory e2fsck reconnects orphans to; the root gets one if the tree has none.
pub const LOST_FOUND: &[u8] = b"lost+found";

#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub file_type: u8,
}

/// The `file_type` of a tree node's entry.
pub fn file_type<C>(kind: &NodeKind<C>) -> u8 {
    match kind {
        NodeKind::Directory(_) => EXT4_FT_DIR,
        NodeKind::File(_) => EXT4_FT_REG_FILE,
        NodeKind::Symlink(_) => EXT4_FT_SYMLINK,
        NodeKind::CharDevice(_) => EXT4_FT_CHRDEV,
        NodeKind::BlockDevice(_) => EXT4_FT_BLKDEV,
        NodeKind::Fifo => EXT4_FT_FIFO,
        NodeKind::Socket => EXT4_FT_SOCK,
    }
}

/// The entries of a directory inode in on-disk order: `.`, `..`, then by name (the root
/// gains lost+found when diskc makes it). `ino_of` and `parent_of` are the planner's
/// inode numbers of each node and of each directory's parent.
pub fn entries<'t, C>(
    tree: &'t FsTree<C>,
    ino_of: &[u32],
    parent_of: &[u32],
    lost_found: Role,
    role: Role,
) -> Vec<DirEntry<'t>> {
    let dot = |ino| DirEntry { name: b".", ino, file_type: EXT4_FT_DIR };
    let dotdot = |ino| DirEntry { name: b"..", ino, file_type: EXT4_FT_DIR };
    let Role::Node(id) = role else {
        // A fresh lost+found is empty.
        return vec![dot(EXT4_FIRST_INO), dotdot(ROOT_INO)];
    };
    let dir = tree.get(id).as_dir().expect("directory role");
    let mut out = Vec::with_capacity(dir.entries.len() + 3);
    out.push(dot(ino_of[id.0 as usize]));
    out.push(dotdot(parent_of[id.0 as usize]));
    let mut fresh_lost_found = (id == FsTree::<C>::ROOT && lost_found == Role::LostFound)
        .then_some(DirEntry { name: LOST_FOUND, ino: EXT4_FIRST_INO, file_type: EXT4_FT_DIR });
    for (name, &child) in &dir.entries {
        // Slot the fresh lost+found in by name.
        if let Some(entry) = fresh_lost_found.filter(|entry| entry.name < name.as_slice()) {
            out.push(entry);
            fresh_lost_found = None;
        }
        out.push(DirEntry {
            name,
            ino: ino_of[child.0 as usize],
            file_type: file_type(&tree.get(child).kind),
        });
    }
    out.extend(fresh_lost_found);
    out
}

/// The smallest record for a name: 8 header bytes plus the name, rounded up to 4.
fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// How many entries go in each block, given every entry's name length in order
/// (`.` and `..` included). The planner counts blocks with it and the emitter fills them.
pub fn pack(name_lens: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut blocks = Vec::new();
    let (mut used, mut count) = (0, 0);
    for len in name_lens {
        let need = rec_len(len);
        if used + need > USABLE {
            blocks.push(count);
            used = 0;
            count = 0;
        }
        used += need;
        count += 1;
    }
    if count > 0 {
        blocks.push(count);
    }
    blocks
}

/// The directory's blocks, checksummed under its inode seed.
pub fn blocks(entries: &[DirEntry], inode_seed: u32) -> Vec<Vec<u8>> {
    let counts = pack(entries.iter().map(|e| e.name.len()));
    let mut out = Vec::with_capacity(counts.len());
    let mut rest = entries;
    for count in counts {
        let (these, after) = rest.split_at(count);
        rest = after;
        let mut b = vec![0u8; BLOCK];
        let mut at = 0;
        for (i, e) in these.iter().enumerate() {
            // The last record stretches to the tail, covering the block's free space.
            let len = if i + 1 == these.len() { USABLE - at } else { rec_len(e.name.len()) };
            put_u32(&mut b, at, e.ino);
            put_u16(&mut b, at + 4, len as u16);
            put_u8(&mut b, at + 6, e.name.len() as u8);
            put_u8(&mut b, at + 7, e.file_type);
            b[at + 8..at + 8 + e.name.len()].copy_from_slice(e.name);
            at += len;
        }
        put_u16(&mut b, USABLE + 4, TAIL as u16);
        put_u8(&mut b, USABLE + 7, EXT4_FT_DIR_CSUM);
        let crc = crc32c_raw(inode_seed, &b[..USABLE]);
        put_u32(&mut b, USABLE + 8, crc);
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_blocks_up_to_the_tail() {
        assert_eq!(pack([1, 2]), vec![2]);
        // 255-byte names take 264 bytes: 15 fit in 4084.
        assert_eq!(pack(std::iter::repeat_n(255, 31)), vec![15, 15, 1]);
    }

    #[test]
    fn last_record_reaches_the_tail() {
        let e = [
            DirEntry { name: b".", ino: 2, file_type: EXT4_FT_DIR },
            DirEntry { name: b"..", ino: 2, file_type: EXT4_FT_DIR },
        ];
        let b = &blocks(&e, 0)[0];
        assert_eq!(super::super::disk::get_u16(b, 4), 12);
        assert_eq!(super::super::disk::get_u16(b, 16), (USABLE - 12) as u16);
        assert_eq!(b[USABLE + 7], 0xDE);
    }
}
