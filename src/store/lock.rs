//! The store's lock: one `flock` on `lock` under the root. Puts, exports, names, cache
//! entries, removals and verification hold it shared; `gc` holds it alone, so it never sweeps
//! a chunk that a running put has found present but not yet referenced from a manifest.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

use super::{Store, StoreError};

/// Holds the store's flock until dropped.
pub(super) struct LockGuard {
    _file: File,
}

impl Store {
    /// Takes the lock beside other holders of the shared lock, waiting for a running gc.
    pub(super) fn shared_lock(&self) -> Result<LockGuard, StoreError> {
        self.flock(libc::LOCK_SH)
    }

    /// Takes the lock alone, waiting for every other holder.
    pub(super) fn exclusive_lock(&self) -> Result<LockGuard, StoreError> {
        self.flock(libc::LOCK_EX)
    }

    fn flock(&self, op: libc::c_int) -> Result<LockGuard, StoreError> {
        let path = self.lock_path();
        let file = File::open(&path).map_err(StoreError::io(&path))?;
        loop {
            // SAFETY: flock on a descriptor we own; the lock goes away when the file closes.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(LockGuard { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::Io { path, source: err });
            }
        }
    }
}
