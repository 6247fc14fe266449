//! Hash-indexed directories (dir_index): a directory of more than one block gets an htree,
//! so the kernel finds a name by hashing it instead of scanning every block.
//!
//! Layout, for up to 507 leaf blocks a single level (`indirect_levels` 0), beyond that two:
//!
//! ```text
//! block 0         dx_root: "." and ".." records, dx_root_info, (hash, block) entries, dx_tail
//! blocks 1..=n    dx_node index blocks (two levels only)
//! the rest        leaf blocks: ordinary directory blocks, entries sorted by hash
//! ```
//!
//! Spec: Documentation/filesystems/ext4/directory.rst, "Hash Tree Directories". The hash is
//! half-MD4 over the name with the superblock's hash seed, signed chars (`s_flags`).

use super::checksum::crc32c_raw;
use super::dir::{self, DirEntry};
use super::disk::{put_u16, put_u32, put_u8};

const BLOCK: usize = 4096;
/// directory.rst, `dx_root_info.hash_version`: half MD4.
const DX_HASH_HALF_MD4: u8 = 1;
/// Entries in dx_root: (4096 - 32 header bytes) / 8, less one for the checksum tail.
const ROOT_LIMIT: usize = (BLOCK - 32) / 8 - 1;
/// Entries in a dx_node: (4096 - 8-byte fake record) / 8, less one for the tail.
const NODE_LIMIT: usize = (BLOCK - 8) / 8 - 1;

fn half_md4_transform(buf: &mut [u32; 4], input: &[u32; 8]) {
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x).rotate_left($s);
        };
    }
    let i = input;
    round!(f, a, b, c, d, i[0], 3);
    round!(f, d, a, b, c, i[1], 7);
    round!(f, c, d, a, b, i[2], 11);
    round!(f, b, c, d, a, i[3], 19);
    round!(f, a, b, c, d, i[4], 3);
    round!(f, d, a, b, c, i[5], 7);
    round!(f, c, d, a, b, i[6], 11);
    round!(f, b, c, d, a, i[7], 19);
    round!(g, a, b, c, d, i[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, i[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, i[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, i[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, i[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, i[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, i[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, i[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, i[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, i[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, i[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, i[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, i[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, i[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, i[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, i[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// The name packed into 32-bit words the way fs/ext4/hash.c's `str2hashbuf_signed` does.
fn str2hashbuf(msg: &[u8], num: usize) -> [u32; 8] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; 8];
    let mut val = pad;
    let mut at = 0;
    for (i, &c) in msg.iter().take(num * 4).enumerate() {
        val = (c as i8 as i32 as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[at] = val;
            at += 1;
            val = pad;
        }
    }
    if at < num {
        out[at] = val;
    }
    out
}

/// The directory hash of `name` (low bit clear: it marks hash collisions in the index).
pub fn name_hash(name: &[u8], seed: &[u32; 4]) -> u32 {
    let mut buf = if seed.iter().any(|&w| w != 0) {
        *seed
    } else {
        [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476]
    };
    let mut p = name;
    loop {
        half_md4_transform(&mut buf, &str2hashbuf(p, 8));
        if p.len() <= 32 {
            break;
        }
        p = &p[32..];
    }
    let hash = buf[1] & !1;
    // 0xfffffffe is the end-of-directory marker for 32-bit hashes.
    if hash == 0x7fff_ffff << 1 {
        0x7fff_fffe << 1
    } else {
        hash
    }
}

/// The seed words from `s_hash_seed`.
pub fn seed_words(seed: &[u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| u32::from_le_bytes(seed[4 * i..4 * i + 4].try_into().expect("four bytes")))
}

/// A directory's entries (without `.` and `..`) in hash order, with their hashes.
fn by_hash<'a>(entries: &[DirEntry<'a>], seed: &[u32; 4]) -> Vec<(u32, DirEntry<'a>)> {
    let mut v: Vec<_> = entries.iter().map(|e| (name_hash(e.name, seed), *e)).collect();
    v.sort_by(|a, b| (a.0, a.1.name).cmp(&(b.0, b.1.name)));
    v
}

/// Index levels below the root for `leaves` leaf blocks, or None when too many for two
/// levels (such a directory stays linear).
fn levels(leaves: usize) -> Option<usize> {
    if leaves <= ROOT_LIMIT {
        Some(0)
    } else if leaves <= ROOT_LIMIT * NODE_LIMIT {
        Some(1)
    } else {
        None
    }
}

/// How a directory is laid out: `Some(blocks)` for an htree, `None` for a linear one.
/// `entries` excludes `.` and `..`.
pub fn indexed_block_count(entries: &[DirEntry], seed: &[u32; 4]) -> Option<u64> {
    let sorted = by_hash(entries, seed);
    let leaves = dir::pack(sorted.iter().map(|(_, e)| e.name.len())).len().max(1);
    let nodes = match levels(leaves)? {
        0 => 0,
        _ => leaves.div_ceil(NODE_LIMIT),
    };
    Some((1 + nodes + leaves) as u64)
}

/// Writes count/limit, the first block, and (hash, block) pairs from `at`; returns the end.
fn put_entries(b: &mut [u8], at: usize, limit: usize, entries: &[(u32, u32)]) -> usize {
    put_u16(b, at, limit as u16);
    put_u16(b, at + 2, entries.len() as u16);
    put_u32(b, at + 4, entries[0].1);
    for (i, &(hash, block)) in entries.iter().enumerate().skip(1) {
        put_u32(b, at + 8 * i, hash);
        put_u32(b, at + 8 * i + 4, block);
    }
    at + 8 * limit
}

/// directory.rst, `dx_tail`: crc32c(inode seed, header through the used entries, then the
/// tail with its checksum field still zero).
fn put_tail(b: &mut [u8], count_offset: usize, count: usize, tail: usize, inode_seed: u32) {
    let crc = crc32c_raw(inode_seed, &b[..count_offset + 8 * count]);
    let crc = crc32c_raw(crc, &b[tail..tail + 8]);
    put_u32(b, tail + 4, crc);
}

/// The (hash, block) entries that point at `blocks` whose first hashes are `firsts`: the
/// first covers every hash below the second; a boundary inside a run of equal hashes sets
/// the low bit, telling lookups to continue into the next block.
fn index_of(firsts: &[(u32, bool)], first_block: u32) -> Vec<(u32, u32)> {
    firsts
        .iter()
        .enumerate()
        .map(|(i, &(h, cont))| (if i == 0 { 0 } else { h | u32::from(cont) }, first_block + i as u32))
        .collect()
}

/// All blocks of an indexed directory, in logical order.
pub fn blocks(
    dot: DirEntry,
    dotdot: DirEntry,
    entries: &[DirEntry],
    seed: &[u32; 4],
    inode_seed: u32,
) -> Vec<Vec<u8>> {
    let sorted = by_hash(entries, seed);
    let counts = dir::pack(sorted.iter().map(|(_, e)| e.name.len()));
    let leaves_n = counts.len().max(1);
    let levels = levels(leaves_n).expect("indexed_block_count said it fits");
    let nodes_n = if levels == 0 { 0 } else { leaves_n.div_ceil(NODE_LIMIT) };
    let first_leaf = 1 + nodes_n as u32;

    // Leaves, and each leaf's first hash with whether it continues the previous leaf's.
    let mut leaves = Vec::with_capacity(leaves_n);
    let mut firsts = Vec::with_capacity(leaves_n);
    let mut at = 0;
    for &n in &counts {
        let chunk = &sorted[at..at + n];
        let cont = at > 0 && sorted[at - 1].0 == chunk[0].0;
        firsts.push((chunk[0].0, cont));
        let names: Vec<DirEntry> = chunk.iter().map(|(_, e)| *e).collect();
        leaves.extend(dir::blocks(&names, inode_seed));
        at += n;
    }
    if leaves.is_empty() {
        leaves.extend(dir::blocks(&[], inode_seed));
        firsts.push((0, false));
    }

    let mut root = vec![0u8; BLOCK];
    put_u32(&mut root, 0, dot.ino);
    put_u16(&mut root, 4, 12);
    put_u8(&mut root, 6, 1);
    put_u8(&mut root, 7, dir::EXT4_FT_DIR);
    root[8] = b'.';
    put_u32(&mut root, 12, dotdot.ino);
    put_u16(&mut root, 16, (BLOCK - 12) as u16);
    put_u8(&mut root, 18, 2);
    put_u8(&mut root, 19, dir::EXT4_FT_DIR);
    root[20..22].copy_from_slice(b"..");
    // dx_root_info: reserved_zero, hash_version, info_length, indirect_levels, unused_flags.
    put_u8(&mut root, 28, DX_HASH_HALF_MD4);
    put_u8(&mut root, 29, 8);
    put_u8(&mut root, 30, levels as u8);

    let leaf_index = index_of(&firsts, first_leaf);
    let mut out = Vec::with_capacity(1 + nodes_n + leaves.len());
    if levels == 0 {
        let tail = put_entries(&mut root, 32, ROOT_LIMIT, &leaf_index);
        put_tail(&mut root, 32, leaf_index.len(), tail, inode_seed);
        out.push(root);
    } else {
        let mut nodes = Vec::with_capacity(nodes_n);
        let mut root_entries = Vec::with_capacity(nodes_n);
        for (i, chunk) in leaf_index.chunks(NODE_LIMIT).enumerate() {
            let mut node = vec![0u8; BLOCK];
            // A fake empty record spanning the block hides the index from linear readers.
            put_u16(&mut node, 4, BLOCK as u16);
            let mut entries = chunk.to_vec();
            let first_hash = firsts[i * NODE_LIMIT].0 | u32::from(firsts[i * NODE_LIMIT].1);
            root_entries.push((if i == 0 { 0 } else { first_hash }, 1 + i as u32));
            entries[0].0 = 0;
            let tail = put_entries(&mut node, 8, NODE_LIMIT, &entries);
            put_tail(&mut node, 8, entries.len(), tail, inode_seed);
            nodes.push(node);
        }
        let tail = put_entries(&mut root, 32, ROOT_LIMIT, &root_entries);
        put_tail(&mut root, 32, root_entries.len(), tail, inode_seed);
        out.push(root);
        out.extend(nodes);
    }
    out.extend(leaves);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_even_and_seeded() {
        let seed = [1, 2, 3, 4];
        let a = name_hash(b"hello", &seed);
        assert_eq!(a & 1, 0);
        assert_ne!(a, name_hash(b"hello", &[5, 6, 7, 8]));
        assert_ne!(a, name_hash(b"hellp", &seed));
        // Names longer than 32 bytes hash every 32-byte piece.
        let long_a = [b'a'; 40];
        let mut long_b = long_a;
        long_b[39] = b'b';
        assert_ne!(name_hash(&long_a, &seed), name_hash(&long_b, &seed));
    }
}
