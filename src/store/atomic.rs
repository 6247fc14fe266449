//! How files enter and leave the store without a crash leaving anything half-written: every
//! file is written to `tmp/` under a name that carries its writer's pid, made durable, then
//! renamed into place; the temp files of writers that died are swept.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{Store, StoreError};
use crate::fileio;

impl Store {
    /// Writes `bytes` to `dest` atomically: temp file in the store, fsync, rename. The caller
    /// fsyncs `dest`'s directory when the rename itself must be durable.
    pub(super) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::Builder::new()
            .prefix(&temp_prefix("w"))
            .tempfile_in(&tmp_dir)
            .map_err(StoreError::io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(StoreError::io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(StoreError::io(tmp.path()))?;
        tmp.persist(dest).map_err(|e| StoreError::Io { path: dest.to_path_buf(), source: e.error })?;
        Ok(())
    }

    /// [`Store::write_atomic`], then fsyncs `dest`'s directory: the rename is durable too.
    pub(super) fn write_atomic_durable(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_atomic(dest, bytes)?;
        let dir = dest.parent().expect("store paths have a parent");
        fileio::sync_path(dir).map_err(StoreError::io(dir))
    }
}

/// `KIND-PID-`: temp files carry their writer's pid, so that the next put can remove those
/// of a writer that was killed instead of leaving them to `gc`.
pub(super) fn temp_prefix(kind: &str) -> String {
    format!("{kind}-{}-", std::process::id())
}

/// Removes the temp files (see [`temp_prefix`]) whose writer no longer runs. A live writer's
/// files are never touched, so this is safe beside concurrent puts.
pub(super) fn sweep_dead_temp_files(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').nth(1)).and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists; ESRCH says it
        // does not (EPERM would mean it runs under another user).
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes `path`; one that is already gone is not an error.
pub(super) fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::Io { path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_of_dead_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        let dead = exited.id();
        exited.wait().unwrap();
        let mine = format!("{}abc", temp_prefix("c"));
        for name in [format!("c-{dead}-abc"), format!("w-{dead}-def"), mine.clone(), "other".into()] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        sweep_dead_temp_files(dir.path());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [mine, "other".to_string()]);
    }

    #[test]
    fn opening_a_store_sweeps_what_a_killed_writer_left() {
        // A command after a kill may put nothing (a cache hit), so opening is what sweeps.
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        let dead = exited.id();
        exited.wait().unwrap();
        let leftover = dir.path().join("tmp").join(format!("layer-{dead}-XyZ"));
        fs::write(&leftover, b"half a layer").unwrap();
        Store::open(dir.path()).unwrap();
        assert!(!leftover.exists(), "{} survived an open", leftover.display());
    }
}
