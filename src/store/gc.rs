//! Garbage collection: mark every chunk a manifest references, sweep the rest, with the
//! leftover temp files and the names and cache entries of removed images.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use super::atomic::remove_if_present;
use super::{ImageId, Store, StoreError};
use crate::digest::Digest;

/// What `gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_freed: u64,
    pub chunks_kept: u64,
    pub temp_files_removed: u64,
    pub stale_entries_removed: u64,
}

impl Store {
    /// Every chunk file in the store, with its path.
    pub(super) fn chunk_files(&self) -> Result<Vec<(PathBuf, Option<Digest>)>, StoreError> {
        let dir = self.root.join("chunks");
        let mut out = Vec::new();
        for fan in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
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

    /// Mark and sweep: removes every chunk no manifest references, every temp file and every
    /// name or cache entry pointing at a removed image. Waits for running puts to finish and
    /// holds new ones off while it runs. Refuses to sweep if any manifest cannot be read,
    /// since its chunks would look unreferenced.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _lock = self.exclusive_lock()?;
        let mut report = GcReport::default();
        let mut live: BTreeSet<Digest> = BTreeSet::new();
        let ids = self.ids()?;
        for id in &ids {
            live.extend(self.manifest(id)?.chunks().map(|c| c.digest));
        }
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
        Ok(report)
    }
}
