//! A layer as a later conversion finds it again: its entries and the places of their data in
//! its spool, written as bytes ([`save_index`]), and read back into a [`LayerIndex`] whose
//! data is the layer's saved spool ([`SavedIndex`]). A restored layer is the layer as it
//! was indexed, entry for entry and byte for byte in its slot, so everything after it (the
//! merge, the settling, the ext4 writer) cannot tell it from a layer read anew, and the image
//! comes out the same.
//!
//! The format is private to diskc and versioned: little-endian integers, byte strings as a
//! length and the bytes, a sha256 of all of it at the end. Anything that does not read back
//! exactly is refused, and the caller reads the layer instead.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::spool::SpoolRun;
use super::{Compression, LayerIndex, SpoolWriter};
use crate::digest::Digest;
use crate::tree::flatten::{Entry, EntryKind};
use crate::tree::{DeviceNumber, FileData, Metadata, Timestamp, Xattrs, BLOCK_SIZE};

/// The first bytes of a saved index; the number is the format's version.
const MAGIC: &[u8] = b"diskc layer index 1\n";

/// The bytes that describe `layer`: its entries, digests and how much it spooled.
pub fn save_index(layer: &LayerIndex) -> Vec<u8> {
    let mut out = Out(MAGIC.to_vec());
    out.0.extend_from_slice(layer.diff_id.as_bytes());
    out.u64(layer.uncompressed_size);
    out.u64(layer.spool.len());
    out.u64(layer.entries.len() as u64);
    for e in &layer.entries {
        out.bytes(&e.path);
        out.meta(&e.meta);
        match &e.kind {
            EntryKind::Directory => out.u8(0),
            EntryKind::File(f) => {
                out.u8(1);
                out.u64(f.size);
                let runs = f.content.runs();
                out.u64(runs.len() as u64);
                for r in runs {
                    out.u64(r.blocks.start);
                    out.u64(r.blocks.end);
                    out.u64(r.spool_offset);
                }
            }
            EntryKind::Symlink(t) => {
                out.u8(2);
                out.bytes(t);
            }
            EntryKind::HardLink(t) => {
                out.u8(3);
                out.bytes(t);
            }
            EntryKind::CharDevice(d) | EntryKind::BlockDevice(d) => {
                out.u8(if matches!(e.kind, EntryKind::CharDevice(_)) { 4 } else { 5 });
                out.u32(d.major);
                out.u32(d.minor);
            }
            EntryKind::Fifo => out.u8(6),
        }
    }
    let sum = Digest::of(&out.0);
    out.0.extend_from_slice(sum.as_bytes());
    out.0
}

/// A saved index read back and checked, with the data it goes with; nothing is spooled yet.
pub struct SavedIndex {
    diff_id: Digest,
    uncompressed_size: u64,
    spooled: u64,
    entries: Vec<Entry<Vec<SpoolRun>>>,
}

impl SavedIndex {
    /// Reads `index` (from [`save_index`]) and checks it against `data` (saved by
    /// [`LayerIndex::save_data`]): anything that does not read back exactly is an
    /// `InvalidData` error, found before any byte is spooled.
    pub fn read(index: &[u8], data: &File) -> io::Result<SavedIndex> {
        let body = index
            .len()
            .checked_sub(32)
            .filter(|&n| n >= MAGIC.len() && index.starts_with(MAGIC))
            .map(|n| &index[..n])
            .ok_or_else(|| bad("not one"))?;
        if Digest::of(body).as_bytes()[..] != index[body.len()..] {
            return Err(bad("its checksum does not match"));
        }
        let mut r = In { bytes: &body[MAGIC.len()..] };
        let diff_id = Digest::from_bytes(r.take(32)?.try_into().expect("32 bytes"));
        let uncompressed_size = r.u64()?;
        let spooled = r.u64()?;
        if data.metadata()?.len() != spooled {
            return Err(bad("its data is not as long as it says"));
        }
        let count = r.u64()?;
        // Every entry takes more than 32 bytes: a count beyond that is a lie, not an allocation.
        let mut entries = Vec::with_capacity(count.min(body.len() as u64 / 32) as usize);
        for _ in 0..count {
            let path = r.bytes()?;
            let meta = r.meta()?;
            let kind = match r.u8()? {
                0 => EntryKind::Directory,
                1 => {
                    let size = r.u64()?;
                    let n = r.u64()?;
                    let mut runs = Vec::with_capacity(n.min(r.bytes.len() as u64 / 24) as usize);
                    for _ in 0..n {
                        let (start, end, spool_offset) = (r.u64()?, r.u64()?, r.u64()?);
                        runs.push(SpoolRun { blocks: start..end, spool_offset });
                    }
                    if !runs_fit(&runs, size, spooled) {
                        return Err(bad("a file lies outside its layer's data"));
                    }
                    let data_blocks = runs.iter().map(|r| r.blocks.clone()).collect();
                    EntryKind::File(FileData { size, content: runs, data_blocks })
                }
                2 => EntryKind::Symlink(r.bytes()?),
                3 => EntryKind::HardLink(r.bytes()?),
                k @ (4 | 5) => {
                    let d = DeviceNumber { major: r.u32()?, minor: r.u32()? };
                    if k == 4 {
                        EntryKind::CharDevice(d)
                    } else {
                        EntryKind::BlockDevice(d)
                    }
                }
                6 => EntryKind::Fifo,
                _ => return Err(bad("an unknown kind of entry")),
            };
            entries.push(Entry { path, kind, meta });
        }
        if !r.bytes.is_empty() {
            return Err(bad("bytes after its last entry"));
        }
        Ok(SavedIndex { diff_id, uncompressed_size, spooled, entries })
    }

    /// The diff_id of the layer it describes.
    pub fn diff_id(&self) -> Digest {
        self.diff_id
    }

    /// The layer, its data left in `data` and referred to (see `SpoolWriter::refer`).
    /// `digest` is the blob's digest as this image's manifest lists it (the same layer may
    /// come compressed another way). Only I/O can fail now.
    pub fn restore(self, data: Arc<File>, mut writer: SpoolWriter, digest: Digest) -> io::Result<LayerIndex> {
        writer.refer(data, self.spooled)?;
        let entries = self
            .entries
            .into_iter()
            .map(|e| {
                let kind = match e.kind {
                    EntryKind::File(f) => EntryKind::File(FileData {
                        size: f.size,
                        content: writer.file_at(f.size, f.content),
                        data_blocks: f.data_blocks,
                    }),
                    EntryKind::Directory => EntryKind::Directory,
                    EntryKind::Symlink(t) => EntryKind::Symlink(t),
                    EntryKind::HardLink(t) => EntryKind::HardLink(t),
                    EntryKind::CharDevice(d) => EntryKind::CharDevice(d),
                    EntryKind::BlockDevice(d) => EntryKind::BlockDevice(d),
                    EntryKind::Fifo => EntryKind::Fifo,
                };
                Entry { path: e.path, kind, meta: e.meta }
            })
            .collect();
        Ok(LayerIndex {
            entries,
            diff_id: self.diff_id,
            digest,
            compression: Compression::None,
            compressed_size: 0,
            uncompressed_size: self.uncompressed_size,
            spool: writer.spool().clone(),
        })
    }
}

/// Whether a file's runs are in block order, inside the file, and inside the layer's data.
fn runs_fit(runs: &[SpoolRun], size: u64, spooled: u64) -> bool {
    let in_order = runs.windows(2).all(|w| w[0].blocks.end <= w[1].blocks.start);
    in_order
        && runs.iter().all(|r| {
            r.blocks.start < r.blocks.end
                && r.blocks.end <= size.div_ceil(BLOCK_SIZE)
                && r.spool_offset % BLOCK_SIZE == 0
                && (r.blocks.end - r.blocks.start)
                    .checked_mul(BLOCK_SIZE)
                    .and_then(|n| n.checked_add(r.spool_offset))
                    .is_some_and(|end| end <= spooled)
        })
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("saved layer index: {what}"))
}

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn time(&mut self, t: Timestamp) {
        self.u64(t.sec as u64);
        self.u32(t.nsec);
    }
    fn meta(&mut self, m: &Metadata) {
        self.0.extend_from_slice(&m.mode.to_le_bytes());
        self.u32(m.uid);
        self.u32(m.gid);
        self.time(m.atime);
        self.time(m.mtime);
        self.time(m.ctime);
        self.u64(m.xattrs.len() as u64);
        for (k, v) in &m.xattrs {
            self.bytes(k);
            self.bytes(v);
        }
    }
}

struct In<'a> {
    bytes: &'a [u8],
}

impl In<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.bytes.len() < n {
            return Err(bad("it ends early"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = usize::try_from(self.u64()?).map_err(|_| bad("a length too large"))?;
        Ok(self.take(n)?.to_vec())
    }
    fn time(&mut self) -> io::Result<Timestamp> {
        Ok(Timestamp::new(self.u64()? as i64, self.u32()?))
    }
    fn meta(&mut self) -> io::Result<Metadata> {
        let mode = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
        let (uid, gid) = (self.u32()?, self.u32()?);
        let (atime, mtime, ctime) = (self.time()?, self.time()?, self.time()?);
        let mut xattrs = Xattrs::new();
        for _ in 0..self.u64()? {
            let k = self.bytes()?;
            xattrs.insert(k, self.bytes()?);
        }
        Ok(Metadata { mode, uid, gid, atime, mtime, ctime, xattrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{index_layer, LayerExpect, SpoolFile};
    use crate::tree::Content;
    use std::os::unix::fs::FileExt;

    fn layer_tar() -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: ::tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = ::tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_mtime(1_700_000_000);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            b.append_data(&mut h, path, data).unwrap();
        };
        add("etc/", ::tar::EntryType::Directory, b"", None);
        add("etc/small", ::tar::EntryType::Regular, b"hello", None);
        let mut big = vec![0u8; 3 << 20];
        big[2 << 20..(2 << 20) + 7].copy_from_slice(b"in hole");
        big[..4].copy_from_slice(b"head");
        add("big", ::tar::EntryType::Regular, &big, None);
        add("etc/link", ::tar::EntryType::Symlink, b"", Some("small"));
        add("etc/hard", ::tar::EntryType::Link, b"", Some("etc/small"));
        add("etc/.wh.gone", ::tar::EntryType::Regular, b"", None);
        b.into_inner().unwrap()
    }

    #[test]
    fn a_restored_layer_is_the_layer_it_was_saved_from() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer_tar();
        let first = SpoolFile::temp_in(dir.path()).unwrap();
        let layer = index_layer(&tar[..], &LayerExpect::default(), 2, first.slot(2).unwrap()).unwrap();
        let index = save_index(&layer);
        let data = tempfile::tempfile_in(dir.path()).unwrap();
        layer.spool.save_data(&data).unwrap();

        // Left in the saved data and referred to: the same layer.
        {
            let second = SpoolFile::temp_in(dir.path()).unwrap();
            let saved = SavedIndex::read(&index, &data).unwrap();
            assert_eq!(saved.diff_id(), layer.diff_id);
            let backing = Arc::new(data.try_clone().unwrap());
            let back = saved.restore(backing, second.slot(2).unwrap(), layer.digest).unwrap();
            assert_eq!(save_index(&back), index);
            assert_eq!(back.entries.len(), layer.entries.len());
            for (a, b) in layer.entries.iter().zip(&back.entries) {
                assert_eq!((&a.path, &a.meta), (&b.path, &b.meta));
                if let (EntryKind::File(fa), EntryKind::File(fb)) = (&a.kind, &b.kind) {
                    assert_eq!(fa.data_blocks, fb.data_blocks);
                    let (mut x, mut y) = (vec![0u8; fa.size as usize], vec![1u8; fb.size as usize]);
                    fa.content.read_at(0, &mut x).unwrap();
                    fb.content.read_at(0, &mut y).unwrap();
                    assert_eq!(x, y);
                    if let Some((path, offset)) = fb.content.source_file() {
                        let mut z = vec![2u8; fb.size as usize];
                        File::open(path).unwrap().read_exact_at(&mut z, offset).unwrap();
                        assert_eq!(x, z, "the source file holds the bytes");
                    }
                }
            }
            let image_file = second.settle(std::iter::empty()).unwrap();
            assert!(back.spool.placement().is_some() && back.spool.referred().is_some());
            let size = image_file.metadata().unwrap().len();
            let data_in_image = crate::fileio::data_extents(&image_file, size).unwrap();
            assert!(data_in_image.is_empty(), "a referred layer writes nothing: {data_in_image:?}");
        }

        // Damage anywhere is refused, never half believed.
        for at in [0, MAGIC.len() + 40, index.len() - 1] {
            let mut broken = index.clone();
            broken[at] ^= 1;
            let e = SavedIndex::read(&broken, &data).err().unwrap();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
        // Data of another length than the index says is refused too.
        data.set_len(layer.spool.len() + 4096).unwrap();
        assert!(SavedIndex::read(&index, &data).is_err());
    }
}
