//! Garbage collection: mark every chunk a manifest references; drop packs with no live chunk,
//! rewrite packs that are mostly dead (their live chunks copied, still compressed, into new
//! packs), sweep dead format-2 chunk files, leftover temp files and the names, cache
//! entries and saved layers of removed images.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::atomic::remove_if_present;
use super::packs::{read_pack_index, PackWriter};
use super::{ImageId, Store, StoreError};
use crate::digest::Digest;

/// A pack is rewritten when less than this share of its frame bytes is live. Half: a
/// rewrite then at least halves the pack's size, so the bytes gc copies over a store's
/// life stay below the bytes it frees, while at most half of a kept pack is dead.
pub const REWRITE_BELOW_LIVE: f64 = 0.5;

/// What `gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    pub chunks_kept: u64,
    /// Packs removed: dropped (nothing live) or rewritten (their live chunks copied).
    pub packs_removed: u64,
    /// New packs holding the live chunks of rewritten ones.
    pub packs_written: u64,
    /// Remote only: packs marked for removal by a later gc (see `remote_gc`).
    pub packs_condemned: u64,
    /// Remote only: condemned packs kept because an image written since needs them.
    pub packs_rescued: u64,
    /// Remote only: packs left alone for being younger than the grace period.
    pub packs_spared: u64,
    pub temp_files_removed: u64,
    pub stale_entries_removed: u64,
}

impl Store {
    /// Every format-2 chunk file in the store, with its path.
    pub(super) fn chunk_files(&self) -> Result<Vec<(PathBuf, Option<Digest>)>, StoreError> {
        let dir = self.root.join("chunks");
        let mut out = Vec::new();
        let fans = match fs::read_dir(&dir) {
            Ok(fans) => fans,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::Io { path: dir, source: e }),
        };
        for fan in fans {
            let fan = fan.map_err(StoreError::io(&dir))?.path();
            if !fan.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&fan).map_err(StoreError::io(&fan))? {
                let path = entry.map_err(StoreError::io(&fan))?.path();
                let digest = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| format!("sha256:{n}").parse().ok());
                out.push((path, digest));
            }
        }
        Ok(out)
    }

    /// Mark and sweep. Waits for running puts to finish and holds new ones off while it
    /// runs. Refuses to sweep if any manifest cannot be read, since its chunks would look
    /// unreferenced. A new pack is durable before the packs it replaces are removed, so a
    /// crash leaves at worst a chunk stored twice (the next gc drops the copy).
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.gc_remote(remote, super::DEFAULT_GRACE);
        }
        let _lock = self.exclusive_lock()?;
        let mut report = GcReport::default();
        let mut live: HashSet<Digest> = HashSet::new();
        let ids = self.ids()?;
        for id in &ids {
            live.extend(self.image(id)?.chunks().map(|c| c.digest));
        }
        self.sweep_packs(&live, &mut report)?;
        for (path, digest) in self.chunk_files()? {
            if digest.is_some_and(|d| live.contains(&d)) {
                report.chunks_kept += 1;
                continue;
            }
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove_if_present(&path)?;
            report.chunks_removed += 1;
            report.bytes_freed += len;
        }
        // With the lock held alone, no writer is running: every temp file is left over.
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(StoreError::io(&tmp))? {
            remove_if_present(&entry.map_err(StoreError::io(&tmp))?.path())?;
            report.temp_files_removed += 1;
        }
        let ids: BTreeSet<ImageId> = ids.into_iter().collect();
        for (name, id) in self.names()? {
            if !ids.contains(&id) {
                remove_if_present(&self.name_path(&name))?;
                report.stale_entries_removed += 1;
            }
        }
        for (path, target) in self.cache_entries()? {
            if !target.is_some_and(|id| ids.contains(&id)) {
                remove_if_present(&path)?;
                report.stale_entries_removed += 1;
            }
        }
        report.stale_entries_removed += self.sweep_side_files(&ids)?;
        self.sweep_layers(&ids, &mut report)?;
        Ok(report)
    }

    /// Keeps packs that are mostly live as they are, copies the live chunks of the others
    /// into new packs and removes them. A chunk stored in two packs is live in one only.
    fn sweep_packs(&self, live: &HashSet<Digest>, report: &mut GcReport) -> Result<(), StoreError> {
        let mut kept: HashSet<Digest> = HashSet::new();
        let mut to_rewrite = Vec::new();
        for name in self.pack_names()? {
            let path = self.pack_path(&name);
            let file = File::open(&path).map_err(StoreError::io(&path))?;
            // A pack whose index is damaged is left for verify to report: which of its
            // chunks are live cannot be known.
            let Ok((footer, entries)) = read_pack_index(&file) else { continue };
            let live_bytes: u64 = entries
                .iter()
                .filter(|e| live.contains(&e.digest) && !kept.contains(&e.digest))
                .map(|e| u64::from(e.stored_len))
                .sum();
            if live_bytes as f64 >= REWRITE_BELOW_LIVE * footer.index_offset.max(1) as f64 {
                for e in &entries {
                    if live.contains(&e.digest) && kept.insert(e.digest) {
                        report.chunks_kept += 1;
                    } else {
                        report.chunks_removed += 1;
                    }
                }
            } else {
                to_rewrite.push((path, file, entries));
            }
        }
        let mut writer = PackWriter::new(self);
        let mut old = Vec::new();
        for (path, file, entries) in to_rewrite {
            for e in entries {
                if !live.contains(&e.digest) || !kept.insert(e.digest) {
                    report.chunks_removed += 1;
                    continue;
                }
                let mut frame = vec![0u8; e.stored_len as usize];
                file.read_exact_at(&mut frame, e.offset).map_err(StoreError::io(&path))?;
                writer.append(e.digest, &frame, e.raw_len)?;
                report.chunks_kept += 1;
            }
            old.push(path);
        }
        writer.seal()?;
        self.sync_packs_dir()?;
        let written: u64 = writer
            .sealed
            .iter()
            .filter_map(|name| fs::metadata(self.pack_path(name)).ok())
            .map(|m| m.len())
            .sum();
        let new: HashSet<PathBuf> = writer.sealed.iter().map(|name| self.pack_path(name)).collect();
        let mut freed = 0;
        for path in old.iter().filter(|path| !new.contains(*path)) {
            freed += fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            remove_if_present(path)?;
            report.packs_removed += 1;
        }
        report.packs_written += writer.sealed.len() as u64;
        report.bytes_freed += freed.saturating_sub(written);
        self.sync_packs_dir()?;
        // The index this process holds names removed packs: start over at next use.
        self.refresh_packs()
    }
}
