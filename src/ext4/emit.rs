//! The emitter: serializes a [`Plan`] into the image in one pass, file data first (in
//! parallel, positional writes), then inode tables, directory and other metadata blocks,
//! bitmaps, group descriptors and superblocks.
//!
//! Nothing is patched afterwards: every offset was fixed by the planner. Blocks that are all
//! zero are not written; the sink starts zeroed, so the image stays sparse.

use rayon::prelude::*;

use super::checksum::inode_seed;
use super::dir;
use super::extent;
use super::group::{bitmap_csum, GroupDesc, DESC_SIZE, EXT4_BG_INODE_ZEROED};
use super::htree;
use super::inode::{Inode, EXT4_EXTENTS_FL, EXT4_INDEX_FL, INODE_SIZE};
use super::journal;
use super::plan::{
    self, all_extents, Geometry, InodePlan, Mapping, Plan, Role, XattrPlace, BLOCKS_PER_GROUP, BLOCK_SIZE,
};
use super::superblock::{self, Superblock};
use super::xattr;
use super::Ext4Error;
use crate::fileio::{self, WriteAt};
use crate::tree::{Content, FsTree, NodeKind, Timestamp};

/// Identity of the filesystem, derived from the caller's seed.
pub struct Ids {
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub fs_seed: u32,
    pub fs_time: Timestamp,
    pub label: [u8; 16],
}

/// File data is copied in pieces of at most this many blocks (1 MiB), the unit of parallel
/// work and the bound on each worker's buffer.
const COPY_BLOCKS: u64 = 256;
/// Inode table chunk written at once: 4096 inodes, 1 MiB.
const ITABLE_CHUNK: u32 = 4096;

fn write_err(e: std::io::Error) -> Ext4Error {
    Ext4Error::Write(e)
}

pub fn emit<C: Content>(
    tree: &FsTree<C>,
    plan: &Plan,
    ids: &Ids,
    out: &dyn WriteAt,
) -> Result<(), Ext4Error> {
    copy_data(tree, plan, out)?;
    write_inode_tables(tree, plan, ids, out)?;
    write_inode_blocks(tree, plan, ids, out)?;
    write_groups(plan, ids, out)
}

/// One piece of file data to copy: `blocks` blocks of node `id` from `logical` to `physical`.
struct Copy {
    ino: u32,
    logical: u64,
    physical: u64,
    blocks: u64,
}

fn copy_data<C: Content>(tree: &FsTree<C>, plan: &Plan, out: &dyn WriteAt) -> Result<(), Ext4Error> {
    let mut jobs = Vec::new();
    for p in &plan.inodes {
        let Role::Node(id) = p.role else { continue };
        if !matches!(tree.get(id).kind, NodeKind::File(_)) || p.data_in_place {
            continue;
        }
        for e in all_extents(p) {
            let mut done = 0;
            while done < u64::from(e.len) {
                let blocks = COPY_BLOCKS.min(u64::from(e.len) - done);
                jobs.push(Copy {
                    ino: p.ino,
                    logical: u64::from(e.logical) + done,
                    physical: e.physical + done,
                    blocks,
                });
                done += blocks;
            }
        }
    }
    jobs.sort_unstable_by_key(|j| j.physical);
    jobs.par_iter().try_for_each_init(
        || vec![0u8; (COPY_BLOCKS * BLOCK_SIZE) as usize],
        |buf, job| {
            let p = plan.inode(job.ino).expect("planned inode");
            let Role::Node(id) = p.role else { unreachable!("data of a tree node") };
            let NodeKind::File(f) = &tree.get(id).kind else { unreachable!("data of a file") };
            let offset = job.logical * BLOCK_SIZE;
            let len = (job.blocks * BLOCK_SIZE).min(f.size - offset) as usize;
            let read_err = |source| Ext4Error::Read { path: plan::path_of(tree, id), source };
            if let Some((path, start)) = f.content.source_file() {
                let src = fileio::open_quietly(path).map_err(read_err)?;
                return out
                    .copy_from(&src, start + offset, len as u64, job.physical * BLOCK_SIZE)
                    .map_err(|source| Ext4Error::Copy { path: plan::path_of(tree, id), source });
            }
            f.content.read_at(offset, &mut buf[..len]).map_err(read_err)?;
            fileio::write_sparse(out, &buf[..len], job.physical * BLOCK_SIZE).map_err(write_err)
        },
    )
}

fn inode_of<C>(tree: &FsTree<C>, p: &InodePlan, ids: &Ids) -> Result<[u8; INODE_SIZE], Ext4Error> {
    let mut inode = Inode {
        i_mode: p.mode,
        i_size: p.size,
        i_atime: ids.fs_time,
        i_ctime: ids.fs_time,
        i_mtime: ids.fs_time,
        i_crtime: ids.fs_time,
        i_links_count: p.links,
        i_blocks: p.blocks * (BLOCK_SIZE / 512),
        ..Inode::default()
    };
    match &p.map {
        Mapping::None => {}
        Mapping::Inline(b) => inode.i_block = *b,
        Mapping::Extents(t) => {
            inode.i_flags |= EXT4_EXTENTS_FL;
            inode.i_block = t.root_bytes();
        }
    }
    if p.indexed {
        inode.i_flags |= EXT4_INDEX_FL;
    }
    let mut ibody = Vec::new();
    if let Role::Node(id) = p.role {
        let meta = &tree.get(id).meta;
        inode.i_uid = meta.uid;
        inode.i_gid = meta.gid;
        inode.i_atime = meta.atime;
        inode.i_ctime = meta.ctime;
        inode.i_mtime = meta.mtime;
        match p.xattr {
            XattrPlace::None => {}
            XattrPlace::Inode => {
                let entries = xattr::entries(&meta.xattrs).expect("xattrs checked when planned");
                ibody = xattr::inode_area(&entries);
            }
            XattrPlace::Block(b) => inode.i_file_acl = b,
        }
    }
    Ok(inode.to_bytes(p.ino, ids.fs_seed, &ibody))
}

fn write_inode_tables<C: Content>(
    tree: &FsTree<C>,
    plan: &Plan,
    ids: &Ids,
    out: &dyn WriteAt,
) -> Result<(), Ext4Error> {
    let ipg = plan.geo.inodes_per_group;
    let mut chunks = Vec::new();
    for g in 0..plan.geo.groups {
        let first = g * ipg + 1;
        let used = plan.max_ino.saturating_sub(g * ipg).min(ipg);
        let mut start = 0;
        while start < used {
            chunks.push((g, first + start, (used - start).min(ITABLE_CHUNK)));
            start += ITABLE_CHUNK;
        }
    }
    chunks.par_iter().try_for_each(|&(g, first, count)| {
        let mut buf = vec![0u8; count as usize * INODE_SIZE];
        let lo = plan.inodes.partition_point(|p| p.ino < first);
        for p in plan.inodes[lo..].iter().take_while(|p| p.ino < first + count) {
            let at = (p.ino - first) as usize * INODE_SIZE;
            buf[at..at + INODE_SIZE].copy_from_slice(&inode_of(tree, p, ids)?);
        }
        let table = plan.inode_tables[g as usize] * BLOCK_SIZE;
        let at = table + u64::from(first - (g * ipg + 1)) * INODE_SIZE as u64;
        fileio::write_sparse(out, &buf, at).map_err(write_err)
    })
}

/// The blocks that hang off each inode: directory blocks, slow symlink targets, extent tree
/// nodes, xattr blocks.
fn write_inode_blocks<C: Content>(
    tree: &FsTree<C>,
    plan: &Plan,
    ids: &Ids,
    out: &dyn WriteAt,
) -> Result<(), Ext4Error> {
    plan.inodes.par_iter().try_for_each(|p| {
        let seed = inode_seed(ids.fs_seed, p.ino, 0);
        if let Mapping::Extents(t) = &p.map {
            for node in &t.nodes {
                out.write_at(&extent::node_block(node, seed), node.block * BLOCK_SIZE).map_err(write_err)?;
            }
        }
        let content: Vec<Vec<u8>> = match p.role {
            Role::LostFound => {
                let entries = dir::entries(tree, &plan.ino_of, &plan.parent_of, plan.lost_found, p.role);
                dir::blocks(&entries, seed)
            }
            Role::Node(id) => match &tree.get(id).kind {
                NodeKind::Directory(_) => {
                    let entries = dir::entries(tree, &plan.ino_of, &plan.parent_of, plan.lost_found, p.role);
                    if p.indexed {
                        let hash_seed = htree::seed_words(&ids.hash_seed);
                        htree::blocks(entries[0], entries[1], &entries[2..], &hash_seed, seed)
                    } else {
                        dir::blocks(&entries, seed)
                    }
                }
                NodeKind::Symlink(target) if matches!(p.map, Mapping::Extents(_)) => {
                    let mut b = vec![0u8; BLOCK_SIZE as usize];
                    b[..target.len()].copy_from_slice(target);
                    vec![b]
                }
                _ => Vec::new(),
            },
            Role::Journal => vec![journal::superblock(plan.journal_blocks, &ids.uuid)],
        };
        let mut blocks = content.iter();
        for e in all_extents(p) {
            for i in 0..u64::from(e.len) {
                match blocks.next() {
                    Some(b) => out.write_at(b, (e.physical + i) * BLOCK_SIZE).map_err(write_err)?,
                    None => break,
                }
            }
        }
        if let (XattrPlace::Block(block), Role::Node(id)) = (p.xattr, p.role) {
            let entries = xattr::entries(&tree.get(id).meta.xattrs).expect("xattrs checked when planned");
            out.write_at(&xattr::block(&entries, block, ids.fs_seed), block * BLOCK_SIZE)
                .map_err(write_err)?;
        }
        Ok(())
    })
}

fn set_bits(bitmap: &mut [u8], bits: std::ops::Range<u64>) {
    for bit in bits {
        bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
    }
}

fn write_groups(plan: &Plan, ids: &Ids, out: &dyn WriteAt) -> Result<(), Ext4Error> {
    let geo = &plan.geo;
    let ipg = u64::from(geo.inodes_per_group);
    let mut dirs = vec![0u32; geo.groups as usize];
    for p in &plan.inodes {
        if p.mode & 0xF000 == super::inode::S_IFDIR {
            dirs[((p.ino - 1) as u64 / ipg) as usize] += 1;
        }
    }
    let mut descs = Vec::with_capacity(geo.groups as usize);
    let mut used = plan.used.iter().peekable();
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for g in 0..geo.groups {
        let start = u64::from(g) * BLOCKS_PER_GROUP;
        let end = (start + BLOCKS_PER_GROUP).min(geo.blocks_count);
        let mut bitmap = vec![0u8; BLOCK_SIZE as usize];
        let mut in_use = 0;
        while let Some(r) = used.peek() {
            let (a, b) = (r.start.max(start), r.end.min(end));
            if a < b {
                set_bits(&mut bitmap, a - start..b - start);
                in_use += b - a;
            }
            if r.end > end {
                break;
            }
            used.next();
        }
        // Bits past the end of the filesystem read as used.
        set_bits(&mut bitmap, end - start..BLOCKS_PER_GROUP);
        let mut ibitmap = vec![0u8; BLOCK_SIZE as usize];
        let inodes_used = u64::from(plan.max_ino).saturating_sub(u64::from(g) * ipg).min(ipg);
        set_bits(&mut ibitmap, 0..inodes_used);
        set_bits(&mut ibitmap, ipg..BLOCK_SIZE * 8);
        let desc = GroupDesc {
            bg_block_bitmap: plan.block_bitmaps[g as usize],
            bg_inode_bitmap: plan.inode_bitmaps[g as usize],
            bg_inode_table: plan.inode_tables[g as usize],
            bg_free_blocks_count: (end - start - in_use) as u32,
            bg_free_inodes_count: (ipg - inodes_used) as u32,
            bg_used_dirs_count: dirs[g as usize],
            bg_flags: EXT4_BG_INODE_ZEROED,
            bg_block_bitmap_csum: bitmap_csum(ids.fs_seed, &bitmap[..(BLOCKS_PER_GROUP / 8) as usize]),
            bg_inode_bitmap_csum: bitmap_csum(ids.fs_seed, &ibitmap[..(ipg / 8) as usize]),
            bg_itable_unused: (ipg - inodes_used) as u32,
        };
        free_blocks += end - start - in_use;
        free_inodes += ipg - inodes_used;
        out.write_at(&bitmap, desc.bg_block_bitmap * BLOCK_SIZE).map_err(write_err)?;
        out.write_at(&ibitmap, desc.bg_inode_bitmap * BLOCK_SIZE).map_err(write_err)?;
        descs.push(desc);
    }
    let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK_SIZE) as usize];
    for (g, d) in descs.iter().enumerate() {
        gdt[g * DESC_SIZE..(g + 1) * DESC_SIZE].copy_from_slice(&d.to_bytes(ids.fs_seed, g as u32));
    }
    let mut sb = superblock_of(plan, ids, free_blocks, free_inodes);
    out.write_at(&sb.to_bytes(), superblock::SUPERBLOCK_OFFSET).map_err(write_err)?;
    out.write_at(&gdt, BLOCK_SIZE).map_err(write_err)?;
    for g in geo.backup_groups() {
        let start = u64::from(g) * BLOCKS_PER_GROUP * BLOCK_SIZE;
        sb.s_block_group_nr = g as u16;
        out.write_at(&sb.to_bytes(), start).map_err(write_err)?;
        out.write_at(&gdt, start + BLOCK_SIZE).map_err(write_err)?;
    }
    Ok(())
}

/// Groups per flex group, as a power of two: mke2fs's default of 16.
const LOG_GROUPS_PER_FLEX: u8 = 4;

fn superblock_of(plan: &Plan, ids: &Ids, free_blocks: u64, free_inodes: u64) -> Superblock {
    let geo: &Geometry = &plan.geo;
    let time = ids.fs_time.sec.max(0);
    let mut sb = Superblock {
        s_inodes_count: geo.inodes_count() as u32,
        s_blocks_count: geo.blocks_count,
        s_free_blocks_count: free_blocks,
        s_free_inodes_count: free_inodes as u32,
        s_first_data_block: 0,
        s_log_block_size: 2, // 1024 << 2 = 4096
        s_blocks_per_group: BLOCKS_PER_GROUP as u32,
        s_inodes_per_group: geo.inodes_per_group,
        s_wtime: time,
        s_lastcheck: time,
        s_mkfs_time: time,
        s_first_ino: plan::EXT4_FIRST_INO,
        s_inode_size: INODE_SIZE as u16,
        s_block_group_nr: 0,
        s_feature_compat: superblock::COMPAT_EXT_ATTR
            | superblock::COMPAT_DIR_INDEX
            | superblock::COMPAT_SPARSE_SUPER2,
        s_feature_incompat: superblock::INCOMPAT_FILETYPE
            | superblock::INCOMPAT_EXTENTS
            | superblock::INCOMPAT_64BIT
            | superblock::INCOMPAT_FLEX_BG,
        s_feature_ro_compat: superblock::RO_COMPAT_SPARSE_SUPER
            | superblock::RO_COMPAT_LARGE_FILE
            | superblock::RO_COMPAT_HUGE_FILE
            | superblock::RO_COMPAT_DIR_NLINK
            | superblock::RO_COMPAT_EXTRA_ISIZE
            | superblock::RO_COMPAT_METADATA_CSUM,
        s_uuid: ids.uuid,
        s_volume_name: ids.label,
        s_journal_inum: 0,
        s_hash_seed: ids.hash_seed,
        s_jnl_blocks: [0; 17],
        s_desc_size: DESC_SIZE as u16,
        s_min_extra_isize: super::inode::EXTRA_ISIZE,
        s_want_extra_isize: super::inode::EXTRA_ISIZE,
        s_log_groups_per_flex: LOG_GROUPS_PER_FLEX,
        s_backup_bgs: [geo.backup_group.unwrap_or(0), 0],
    };
    if let Some(Mapping::Extents(t)) = plan.inode(plan::JOURNAL_INO).map(|p| &p.map) {
        sb.s_feature_compat |= superblock::COMPAT_HAS_JOURNAL;
        sb.s_journal_inum = plan::JOURNAL_INO;
        // super.rst, s_jnl_blocks: i_block of the journal inode, then i_size_high, i_size.
        let root = t.root_bytes();
        for (i, w) in root.chunks(4).enumerate() {
            sb.s_jnl_blocks[i] = u32::from_le_bytes(w.try_into().expect("four bytes"));
        }
        let size = plan.journal_blocks * BLOCK_SIZE;
        sb.s_jnl_blocks[15] = (size >> 32) as u32;
        sb.s_jnl_blocks[16] = size as u32;
    }
    sb
}
