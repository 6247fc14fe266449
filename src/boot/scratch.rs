//! The private temporary directory of one `diskc boot`: a stored image's exported files and
//! the sockets of its file servers live there. It is removed when the boot ends; a boot
//! killed with SIGKILL cannot remove it, so every boot first sweeps the directories whose
//! owner is gone. Ownership is an exclusive `flock` on a file inside, which the kernel drops
//! when the owner dies, so a reused pid never keeps a directory alive. A directory gets its
//! sweepable name only once it is locked, so a sweep never sees one half made.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Names of boot directories under the temporary directory.
const PREFIX: &str = "diskc-boot-";
/// A directory being made, before it is locked and renamed to [`PREFIX`]`...`.
const STAGING_PREFIX: &str = ".diskc-boot-new-";
/// The lock file inside a boot directory.
const LOCK: &str = ".owner";
/// A staging directory older than this was left by a crash while it was being made.
const STAGING_GRACE: Duration = Duration::from_secs(60);

/// A boot's directory; removed on drop.
pub struct Scratch {
    path: PathBuf,
    /// Held (locked) for the boot's lifetime.
    owner: Option<File>,
}

impl Scratch {
    /// Makes a new directory under `base` and takes ownership of it.
    pub fn create(base: &Path) -> io::Result<Scratch> {
        let staging = tempfile::Builder::new().prefix(STAGING_PREFIX).tempdir_in(base)?;
        let owner = File::create(staging.path().join(LOCK))?;
        lock(&owner, false)?;
        let name = staging.path().file_name().and_then(|n| n.to_str()).expect("tempfile names are UTF-8");
        let path = base.join(format!("{PREFIX}{}", &name[STAGING_PREFIX.len()..]));
        std::fs::rename(staging.path(), &path)?;
        // The directory has moved: the guard has nothing left to remove.
        let _ = staging.keep();
        Ok(Scratch { path, owner: Some(owner) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        self.owner.take();
    }
}

/// `flock` exclusively; `try_only` returns `WouldBlock` instead of waiting.
fn lock(file: &File, try_only: bool) -> io::Result<()> {
    let flags = libc::LOCK_EX | if try_only { libc::LOCK_NB } else { 0 };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the boot directories under `base` that no running boot owns; returns them.
/// Failures (another user's directory, a race with its owner) leave a directory alone.
pub fn sweep(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let abandoned = if name.starts_with(PREFIX) {
            // Holding the lock proves the owner is gone; it stays held while we remove.
            File::open(path.join(LOCK)).is_ok_and(|owner| lock(&owner, true).is_ok())
        } else if name.starts_with(STAGING_PREFIX) {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STAGING_GRACE)
        } else {
            false
        };
        if abandoned && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_boot_keeps_its_directory_and_a_dead_one_is_swept() {
        let base = tempfile::tempdir().unwrap();
        let live = Scratch::create(base.path()).unwrap();
        std::fs::write(live.path().join("rootfs.ext4"), b"x").unwrap();
        // A boot killed with SIGKILL: its directory stays, and its lock went with it.
        let mut dead = Scratch::create(base.path()).unwrap();
        let dead_path = dead.path().to_path_buf();
        dead.owner.take();
        std::mem::forget(dead);
        std::fs::create_dir(base.path().join("unrelated")).unwrap();
        // Being made right now by another boot.
        std::fs::create_dir(base.path().join(format!("{STAGING_PREFIX}x"))).unwrap();

        assert_eq!(sweep(base.path()), std::slice::from_ref(&dead_path));
        assert!(!dead_path.exists());
        assert!(live.path().join("rootfs.ext4").exists());
        assert!(base.path().join("unrelated").exists());
        assert!(base.path().join(format!("{STAGING_PREFIX}x")).exists());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists());
    }
}
