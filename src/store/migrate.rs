//! Upgrading a format-2 store (one file per chunk under `chunks/`) to packs. Not required:
//! chunk files are still read, and gc still sweeps them; migrating makes the store cheap to
//! push and to keep (thousands of files become a few packs).

use std::fs;

use super::atomic::remove_if_present;
use super::export::decode_chunk;
use super::packs::PackWriter;
use super::{Store, StoreError};

/// What `migrate` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    pub chunks_moved: u64,
    pub packs_written: u64,
    /// Chunk files that did not decompress to their name: left in place for verify to name.
    pub chunks_damaged: u64,
}

impl Store {
    /// Moves every chunk file into packs, checking each, then removes the files. Holds the
    /// lock alone. The packs are durable before any file is removed, so an interrupted run
    /// leaves chunks stored twice at worst, and running it again finishes the job.
    pub fn migrate(&self) -> Result<MigrateReport, StoreError> {
        let _lock = self.exclusive_lock()?;
        self.refresh_packs()?;
        let mut report = MigrateReport::default();
        let mut writer = PackWriter::new(self);
        let mut moved = Vec::new();
        for (path, digest) in self.chunk_files()? {
            let Some(digest) = digest else { continue };
            let frame = fs::read(&path).map_err(StoreError::io(&path))?;
            let Ok(data) = decode_chunk(&digest, &frame) else {
                report.chunks_damaged += 1;
                continue;
            };
            if self.locate(&digest).is_none() {
                writer.append(digest, &frame, data.len() as u32)?;
            }
            moved.push(path);
        }
        writer.seal()?;
        self.sync_packs_dir()?;
        for path in &moved {
            remove_if_present(path)?;
        }
        report.chunks_moved = moved.len() as u64;
        report.packs_written = writer.sealed.len() as u64;
        let dir = self.root.join("chunks");
        if report.chunks_damaged == 0 && dir.exists() {
            // Only empty fan-out directories are left.
            fs::remove_dir_all(&dir).map_err(StoreError::io(&dir))?;
        }
        Ok(report)
    }
}
