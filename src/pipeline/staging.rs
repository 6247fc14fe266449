//! Output directories that appear whole or not at all.
//!
//! Everything is written into a hidden sibling directory (`.NAME.diskc-tmp-PID`), made
//! durable, and renamed into place last; a failed run removes it. Leftovers of killed runs
//! (their pid gone) are swept when the next run starts.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::PipelineError;
use crate::manifest::{OutputManifest, MANIFEST_FILE};

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PipelineError + 'a {
    move |source| PipelineError::Io { what, path: path.to_path_buf(), source }
}

/// An existing OUTDIR is replaced only when it is empty or diskc wrote it.
pub(super) fn check_outdir(outdir: &Path) -> Result<(), PipelineError> {
    match fs::read_dir(outdir) {
        Ok(mut entries) => {
            if entries.next().is_none() || outdir.join(MANIFEST_FILE).is_file() {
                Ok(())
            } else {
                Err(PipelineError::OutputExists(outdir.to_path_buf()))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(PipelineError::OutputExists(outdir.to_path_buf()))
        }
        Err(e) => Err(PipelineError::Io { what: "reading", path: outdir.to_path_buf(), source: e }),
    }
}

/// Writes `OUTDIR/manifest.json` (into the staging directory `dir`).
pub(super) fn write_manifest(dir: &Path, manifest: &OutputManifest) -> Result<(), PipelineError> {
    let path = dir.join(MANIFEST_FILE);
    let mut bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    bytes.push(b'\n');
    fs::write(&path, bytes).map_err(io_error("writing", &path))
}

/// A hidden directory beside the output, renamed into place when complete and removed
/// otherwise.
pub(super) struct Staging {
    pub path: PathBuf,
    committed: bool,
}

impl Staging {
    /// A staging directory beside `outdir`, to be renamed onto it.
    pub fn beside(outdir: &Path) -> Result<Self, PipelineError> {
        let parent = match outdir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name =
            outdir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        Staging::new(&parent, &name)
    }

    /// `parent/.NAME.diskc-tmp-PID`.
    pub fn new(parent: &Path, name: &str) -> Result<Self, PipelineError> {
        fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
        let prefix = format!(".{name}.diskc-tmp-");
        sweep_stale(parent, &prefix);
        let path = parent.join(format!("{prefix}{}", std::process::id()));
        // Anything under our pid is a leftover of a killed run whose pid we now reuse.
        let _ = fs::remove_dir_all(&path);
        let _ = fs::remove_dir_all(aside(&path));
        fs::create_dir(&path).map_err(io_error("creating", &path))?;
        Ok(Staging { path, committed: false })
    }

    /// Makes the staged files durable and moves the directory to `outdir`, replacing an
    /// older diskc output there.
    pub fn commit(mut self, outdir: &Path) -> Result<(), PipelineError> {
        for entry in fs::read_dir(&self.path).map_err(io_error("reading", &self.path))? {
            let path = entry.map_err(io_error("reading", &self.path))?.path();
            File::open(&path).and_then(|f| f.sync_all()).map_err(io_error("writing", &path))?;
        }
        let old = aside(&self.path);
        let had_old = match fs::rename(outdir, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(PipelineError::Io { what: "moving aside", path: outdir.to_path_buf(), source: e })
            }
        };
        fs::rename(&self.path, outdir).map_err(io_error("renaming into", outdir))?;
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        if let Some(parent) = outdir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Where commit moves an older output while the new one takes its place:
/// `.NAME.diskc-tmp-PID.old`, which the sweep of stale staging directories also covers.
fn aside(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_os_string();
    name.push(".old");
    PathBuf::from(name)
}

fn sweep_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid = rest.split('.').next().and_then(|p| p.parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outdir_that_diskc_did_not_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(check_outdir(dir.path()), Err(PipelineError::OutputExists(_))));
        fs::write(dir.path().join(MANIFEST_FILE), b"{}").unwrap();
        assert!(check_outdir(dir.path()).is_ok());
    }

    /// Regression: the old output was moved aside to `.NAME.old` (`with_extension` took the
    /// pid for an extension), which no sweep removed; after a run killed between the two
    /// renames, every later commit failed with "Directory not empty".
    #[test]
    fn a_run_killed_between_the_renames_does_not_block_later_commits() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join(MANIFEST_FILE), b"{}").unwrap();
        // What a killed run (a pid no process has) leaves: the old output moved aside.
        let leftover = dir.path().join(format!(".out.diskc-tmp-{}.old", i32::MAX));
        fs::rename(&out, &leftover).unwrap();
        for round in 0..2 {
            let staging = Staging::beside(&out).unwrap();
            fs::write(staging.path.join("new"), [round]).unwrap();
            staging.commit(&out).unwrap();
            assert_eq!(fs::read(out.join("new")).unwrap(), [round]);
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left.len(), 1, "only the output remains: {left:?}");
        }
    }

    #[test]
    fn staging_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staging = Staging::beside(&out).unwrap();
        let staged = staging.path.clone();
        assert!(staged.is_dir());
        drop(staging);
        assert!(!staged.exists());
        let staging = Staging::beside(&out).unwrap();
        fs::write(staging.path.join("x"), b"1").unwrap();
        staging.commit(&out).unwrap();
        assert!(out.join("x").is_file());
    }
}
