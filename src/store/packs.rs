//! The store's packs on disk: the in-memory chunk → pack index, loaded from every pack's
//! own index at first use and refreshed when packs come or go, and the writer that appends
//! new chunks to a temp pack and publishes it once it is durable.
//!
//! Why the index lives in each pack and is loaded into a hash map, rather than in an
//! embedded database: a pack is then one immutable file (one object in a remote store)
//! that carries everything needed to read it, publishing it is one rename, there is no
//! second structure to keep consistent across crashes, and a pack copied from elsewhere
//! (pull, migrate, gc's rewrite) needs no import step. Loading costs a read of 48 bytes per
//! chunk (≈ 0.4 MiB for a 1 GiB image); it happens once per process, and only for the
//! commands that read or write chunks (a cache hit without `-o` never loads it).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::atomic::temp_prefix;
use super::pack::{self, Footer, PackBuilder, PackEntry, PackFormatError, FOOTER_BYTES};
use super::{Store, StoreError};
use crate::digest::Digest;
use crate::fileio;

/// Where a chunk is: which pack (an index into [`PackIndex::packs`]) and which bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Location {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u32,
}

/// Every chunk of every pack in the store, as loaded.
#[derive(Default)]
pub(super) struct PackIndex {
    /// Pack names, in load order.
    pub packs: Vec<Digest>,
    pub chunks: HashMap<Digest, Location>,
}

impl PackIndex {
    fn add(&mut self, name: Digest, entries: &[PackEntry]) {
        let pack = self.packs.len() as u32;
        self.packs.push(name);
        for e in entries {
            // A chunk in two packs (two puts raced, or a pull brought a pack holding it
            // again): the first one loaded serves it; gc drops the other copy.
            self.chunks.entry(e.digest).or_insert(Location {
                pack,
                offset: e.offset,
                stored_len: e.stored_len,
            });
        }
    }
}

/// The index of a pack file: footer and entries, checked.
pub(super) fn read_pack_index(file: &File) -> io::Result<(Footer, Vec<PackEntry>)> {
    let len = file.metadata()?.len();
    let invalid = |e: PackFormatError| io::Error::new(io::ErrorKind::InvalidData, e);
    if len < FOOTER_BYTES as u64 {
        return Err(invalid(PackFormatError::TooShort(len)));
    }
    let mut footer = [0u8; FOOTER_BYTES];
    file.read_exact_at(&mut footer, len - FOOTER_BYTES as u64)?;
    let footer = pack::parse_footer(&footer, len).map_err(invalid)?;
    let mut index = vec![0u8; footer.index_len() as usize];
    file.read_exact_at(&mut index, footer.index_offset)?;
    let entries = pack::parse_index(&index, &footer).map_err(invalid)?;
    Ok((footer, entries))
}

/// The pack name a file name spells (`<64 hex>.pack`).
pub(super) fn pack_name(file_name: &str) -> Option<Digest> {
    file_name.strip_suffix(".pack").and_then(|hex| format!("sha256:{hex}").parse().ok())
}

impl Store {
    pub(super) fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub(super) fn pack_path(&self, name: &Digest) -> PathBuf {
        self.packs_dir().join(format!("{}.pack", name.hex()))
    }

    /// Every pack file's name, as listed now.
    pub(super) fn pack_names(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.packs_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            if let Some(name) = entry.file_name().to_str().and_then(pack_name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Brings the index up to date with the packs on disk: loads new packs, and starts over
    /// when one it knew is gone (gc rewrote or dropped it). Packs whose index is damaged are
    /// left out (their chunks read as missing; verify reports the pack).
    pub(super) fn refresh_packs(&self) -> Result<(), StoreError> {
        let on_disk = self.pack_names()?;
        let mut index = self.packs.write().expect("the pack index lock is never poisoned");
        let present: HashSet<&Digest> = on_disk.iter().collect();
        if index.packs.iter().any(|p| !present.contains(p)) {
            *index = PackIndex::default();
        }
        let known: HashSet<Digest> = index.packs.iter().copied().collect();
        for name in on_disk.iter().filter(|n| !known.contains(n)) {
            let path = self.pack_path(name);
            let loaded = File::open(&path).and_then(|f| read_pack_index(&f));
            match loaded {
                Ok((_, entries)) => index.add(*name, &entries),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("skipping pack {}: {e}", path.display()),
            }
        }
        Ok(())
    }

    /// Where a chunk is stored, if it is in a pack this process has loaded.
    pub(super) fn locate(&self, digest: &Digest) -> Option<(Digest, Location)> {
        let index = self.packs.read().expect("the pack index lock is never poisoned");
        index.chunks.get(digest).map(|loc| (index.packs[loc.pack as usize], *loc))
    }

    /// Whether the store holds a chunk: in a pack, or as a format-2 chunk file.
    pub(super) fn has_chunk(&self, digest: &Digest) -> bool {
        self.locate(digest).is_some() || self.chunk_path(digest).exists()
    }

    /// The zstd frame of a chunk, as stored (in a pack or a format-2 chunk file).
    pub(super) fn read_frame(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        for attempt in 0..2 {
            if let Some((name, loc)) = self.locate(digest) {
                let path = self.pack_path(&name);
                let mut frame = vec![0u8; loc.stored_len as usize];
                match File::open(&path).and_then(|f| f.read_exact_at(&mut frame, loc.offset)) {
                    Ok(()) => return Ok(frame),
                    // gc rewrote the pack since this process loaded the index.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {}
                    Err(e) => return Err(StoreError::Io { path, source: e }),
                }
            } else {
                let path = self.chunk_path(digest);
                match fs::read(&path) {
                    Ok(bytes) => return Ok(bytes),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::Io { path, source: e }),
                }
                if attempt == 1 {
                    break;
                }
            }
            self.refresh_packs()?;
        }
        Err(StoreError::MissingChunk(*digest))
    }

    /// The bytes a chunk takes on disk, if the store holds it.
    pub fn stored_chunk_len(&self, digest: &Digest) -> Option<u64> {
        match self.locate(digest) {
            Some((_, loc)) => Some(u64::from(loc.stored_len)),
            None => fs::metadata(self.chunk_path(digest)).ok().map(|m| m.len()),
        }
    }

    /// Every chunk digest the store holds, packed or as a format-2 file.
    pub fn chunk_digests(&self) -> Result<HashSet<Digest>, StoreError> {
        self.refresh_packs()?;
        let mut out: HashSet<Digest> = self
            .packs
            .read()
            .expect("the pack index lock is never poisoned")
            .chunks
            .keys()
            .copied()
            .collect();
        out.extend(self.chunk_files()?.into_iter().filter_map(|(_, d)| d));
        Ok(out)
    }
}

/// Appends new chunks to a temp pack; [`PackWriter::seal`] makes it durable, names it and
/// adds it to the store's index. A pack is closed when it reaches the target size.
pub(super) struct PackWriter<'a> {
    store: &'a Store,
    current: Option<PackBuilder<BufWriter<tempfile::NamedTempFile>>>,
    /// Chunks in the open pack, not yet in the index.
    pending: HashSet<Digest>,
    /// Packs this writer published.
    pub sealed: Vec<Digest>,
}

impl<'a> PackWriter<'a> {
    pub fn new(store: &'a Store) -> Self {
        PackWriter { store, current: None, pending: HashSet::new(), sealed: Vec::new() }
    }

    /// Appends a chunk's zstd frame, unless the open pack already has it; seals the pack
    /// once it is full.
    pub fn append(&mut self, digest: Digest, frame: &[u8], raw_len: u32) -> Result<(), StoreError> {
        if !self.pending.insert(digest) {
            return Ok(());
        }
        let builder = match &mut self.current {
            Some(builder) => builder,
            None => {
                let tmp_dir = self.store.tmp_dir();
                let tmp = tempfile::Builder::new()
                    .prefix(&temp_prefix("p"))
                    .tempfile_in(&tmp_dir)
                    .map_err(StoreError::io(&tmp_dir))?;
                self.current.insert(PackBuilder::new(BufWriter::with_capacity(1 << 20, tmp)))
            }
        };
        let tmp_dir = self.store.tmp_dir();
        builder.append(digest, frame, raw_len).map_err(StoreError::io(&tmp_dir))?;
        if builder.frame_bytes() >= pack::PACK_TARGET_BYTES {
            self.seal()?;
        }
        Ok(())
    }

    /// Publishes the open pack, if any: index and footer written, one fsync, rename. The
    /// rename is made durable by the caller's [`Store::sync_packs_dir`] before anything
    /// references the pack's chunks.
    pub fn seal(&mut self) -> Result<(), StoreError> {
        let Some(builder) = self.current.take() else { return Ok(()) };
        let tmp_dir = self.store.tmp_dir();
        let (out, name, entries) = builder.finish().map_err(StoreError::io(&tmp_dir))?;
        let tmp = out.into_inner().map_err(|e| StoreError::io(&tmp_dir)(e.into_error()))?;
        tmp.as_file().sync_data().map_err(StoreError::io(tmp.path()))?;
        let dest = self.store.pack_path(&name);
        tmp.persist(&dest).map_err(|e| StoreError::Io { path: dest.clone(), source: e.error })?;
        self.store.packs.write().expect("the pack index lock is never poisoned").add(name, &entries);
        self.pending.clear();
        self.sealed.push(name);
        Ok(())
    }
}

impl Store {
    /// Makes every rename into `packs/` durable: called once before a manifest that
    /// references packed chunks is written (also covering packs a concurrent writer
    /// published and this one found present).
    pub(super) fn sync_packs_dir(&self) -> Result<(), StoreError> {
        let dir = self.packs_dir();
        fileio::sync_path(&dir).map_err(StoreError::io(&dir))
    }
}
