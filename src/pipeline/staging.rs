//! Outputs that appear whole or not at all, and never at the cost of what diskc did not write.
//!
//! Everything is written into a hidden sibling directory (`.NAME.diskc-tmp-PID`), made
//! durable, and swapped with the old output in one atomic exchange (`renameat2`
//! `RENAME_EXCHANGE`), so OUTDIR always holds a whole image, the old one or the new one, even
//! if diskc is killed at any point. An existing OUTDIR is replaced only if diskc made it.
//!
//! A failed run removes its staged files; an interrupted one (SIGINT, SIGTERM) removes them
//! through [`remove_unfinished`], which the process's signal handler calls; a killed one
//! (SIGKILL) leaves them under its pid, and the next run beside them sweeps them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::PipelineError;
use crate::boot::{INITRD_FILE, KERNEL_FILE};
use crate::fileio;
use crate::manifest::{ImageDescription, MANIFEST_FILE, ROOTFS_FILE};

/// The files diskc writes into an output directory.
const OUTPUT_FILES: [&str; 4] = [ROOTFS_FILE, MANIFEST_FILE, KERNEL_FILE, INITRD_FILE];

/// Staged paths of this process that are not committed yet.
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every staged file and directory this process has not committed: what a signal
/// handler calls before the process exits. Safe to call from any thread.
pub fn remove_unfinished() {
    let paths = std::mem::take(&mut *UNFINISHED.lock().unwrap_or_else(|e| e.into_inner()));
    for path in paths {
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
    }
}

/// Records `path` as unfinished until [`Unfinished`] is dropped.
pub(super) struct Unfinished(PathBuf);

impl Unfinished {
    pub fn new(path: &Path) -> Self {
        UNFINISHED.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
        Unfinished(path.to_path_buf())
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        UNFINISHED.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != self.0);
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PipelineError + 'a {
    move |source| PipelineError::Io { what, path: path.to_path_buf(), source }
}

/// An existing OUTDIR is replaced only when it is empty or diskc made it: its manifest is
/// one diskc writes, and it holds nothing but the files diskc writes.
pub(super) fn check_outdir(outdir: &Path) -> Result<(), PipelineError> {
    match fs::read_dir(outdir) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(io_error("reading", outdir))?;
                names.push(entry.file_name());
            }
            let only_ours = names.iter().all(|n| n.to_str().is_some_and(|n| OUTPUT_FILES.contains(&n)));
            if names.is_empty() || (only_ours && is_our_manifest(&outdir.join(MANIFEST_FILE))) {
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

fn is_our_manifest(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| serde_json::from_slice::<ImageDescription>(&bytes).is_ok())
}

/// Writes `OUTDIR/manifest.json` (into the staging directory `dir`).
pub(super) fn write_manifest(dir: &Path, manifest: &ImageDescription) -> Result<(), PipelineError> {
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
    _unfinished: Unfinished,
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
        fs::create_dir(&path).map_err(io_error("creating", &path))?;
        let unfinished = Unfinished::new(&path);
        Ok(Staging { path, committed: false, _unfinished: unfinished })
    }

    /// Makes the staged files durable and puts the directory in `outdir`'s place: swapped with
    /// an older diskc output there in one step, then the old one removed.
    pub fn commit(mut self, outdir: &Path) -> Result<(), PipelineError> {
        for entry in fs::read_dir(&self.path).map_err(io_error("reading", &self.path))? {
            let path = entry.map_err(io_error("reading", &self.path))?.path();
            fileio::sync_path(&path).map_err(io_error("writing", &path))?;
        }
        let swapped = match fileio::rename_exchange(&self.path, outdir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::rename(&self.path, outdir).map_err(io_error("renaming into", outdir))?;
                false
            }
            Err(e) => {
                return Err(PipelineError::Io { what: "replacing", path: outdir.to_path_buf(), source: e })
            }
        };
        self.committed = true;
        if let Some(parent) = outdir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = fileio::sync_path(parent);
        }
        if swapped {
            // The old output now sits at the staging path.
            let _ = fs::remove_dir_all(&self.path);
        }
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

/// Removes what runs that are gone left in `parent`: entries named `PREFIX<pid>…` whose pid
/// no process has.
pub(super) fn sweep_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let pid = digits.parse::<i32>().ok();
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive {
            let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn our_manifest() -> Vec<u8> {
        let zero = format!("sha256:{}", "0".repeat(64));
        serde_json::to_vec(&serde_json::json!({
            "diskc_version": "0.1.0", "format_version": 2,
            "source": {"reference": "oci:x", "config_digest": zero, "layers": [], "diff_ids": [],
                       "platform": "linux/amd64"},
            "config": {},
            "rootfs": {"file": ROOTFS_FILE, "digest": format!("blake3:{}", "0".repeat(64)), "size": 0,
                       "uuid": ""},
        }))
        .unwrap()
    }

    #[test]
    fn outdir_that_diskc_did_not_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(check_outdir(dir.path()), Err(PipelineError::OutputExists(_))));
        fs::remove_file(dir.path().join("precious")).unwrap();
        fs::write(dir.path().join(MANIFEST_FILE), our_manifest()).unwrap();
        fs::write(dir.path().join(ROOTFS_FILE), b"").unwrap();
        assert!(check_outdir(dir.path()).is_ok());
    }

    /// Regression (issue 11): an OUTDIR holding a `manifest.json` that diskc did not write was
    /// replaced, and every other file in it deleted.
    #[test]
    fn an_outdir_with_a_foreign_manifest_or_foreign_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST_FILE), br#"{"name": "my project"}"#).unwrap();
        assert!(matches!(check_outdir(dir.path()), Err(PipelineError::OutputExists(_))));
        fs::write(dir.path().join(MANIFEST_FILE), our_manifest()).unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        assert!(matches!(check_outdir(dir.path()), Err(PipelineError::OutputExists(_))));
    }

    /// Regression (issue 11): a kill between the two renames of a commit (OUTDIR aside, then
    /// staging into place) left no OUTDIR, and the next run swept the old one. The swap is one
    /// step now: whoever looks sees a whole output at every moment.
    #[test]
    fn outdir_always_holds_a_whole_image_while_it_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staging = Staging::beside(&out).unwrap();
        fs::write(staging.path.join(MANIFEST_FILE), our_manifest()).unwrap();
        staging.commit(&out).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..300 {
                    let staging = Staging::beside(&out).unwrap();
                    fs::write(staging.path.join(MANIFEST_FILE), our_manifest()).unwrap();
                    staging.commit(&out).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(out.join(MANIFEST_FILE).exists(), "OUTDIR was missing during a commit");
            }
        });
    }

    /// What an interrupt would remove is exactly what is staged and not committed. (Calling
    /// `remove_unfinished` here would also remove the other tests' staging directories.)
    #[test]
    fn staging_is_unfinished_until_committed() {
        let listed = |p: &Path| UNFINISHED.lock().unwrap().iter().any(|u| u == p);
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::beside(&dir.path().join("out")).unwrap();
        let path = staging.path.clone();
        assert!(listed(&path));
        staging.commit(&dir.path().join("out")).unwrap();
        assert!(!listed(&path));
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
