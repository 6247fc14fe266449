//! The boot kernel's whole `lib/modules/<version>` tree for the guest, so that `modprobe`
//! works there (overlayfs, tun, nf_tables, veth, wireguard, ...) without the image carrying
//! a kernel: a read-only ext4 disk written by diskc's own ext4 writer from the modules
//! directory on the host, once per kernel, and kept under the store's root. Every boot of
//! every image with that kernel attaches the same file read-only as its second virtio disk,
//! and `diskc-init` mounts it at `/lib/modules/<version>`.
//!
//! The file is named by the kernel's version and digest, so a rebuilt kernel of the same
//! version gets a disk of its own. It is written as an unnamed file (`O_TMPFILE`) and linked
//! into place only when complete: a crash leaves nothing, and two boots making it at once
//! both succeed (the second link finds the first one's file).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::ext4::{self, SizeSpec};
use crate::tree::host;

use super::BootError;

/// Where the disks live under the store's root.
pub const CACHE_DIR: &str = "kernel-modules";

/// The cached disk of a kernel (not necessarily existing yet).
pub fn disk_path(store_root: &Path, kernel_version: &str, kernel_digest: &Digest) -> PathBuf {
    store_root.join(CACHE_DIR).join(format!("{kernel_version}-{}.ext4", &kernel_digest.hex()[..16]))
}

/// The modules disk for the kernel: the cached one, else one made from `modules_dir` when
/// that is the kernel's (its name is the version), else `None`: the guest then has only the
/// modules the image itself carries.
pub fn find_or_make(
    store_root: &Path,
    kernel_version: &str,
    kernel_digest: &Digest,
    modules_dir: Option<&Path>,
) -> Result<Option<PathBuf>, BootError> {
    let path = disk_path(store_root, kernel_version, kernel_digest);
    if path.is_file() {
        return Ok(Some(path));
    }
    let Some(dir) = modules_dir.filter(|d| d.file_name().is_some_and(|n| n == kernel_version)) else {
        tracing::info!(kernel_version, "no modules directory for the boot kernel: the guest gets none");
        return Ok(None);
    };
    make(dir, kernel_digest, &path)?;
    Ok(Some(path))
}

/// Writes the ext4 image of `dir` to `path`.
fn make(dir: &Path, kernel_digest: &Digest, path: &Path) -> Result<(), BootError> {
    let modules_error = |e: String| BootError::Modules(dir.display().to_string(), e);
    let started = std::time::Instant::now();
    let tree = host::read_tree(dir).map_err(|e| modules_error(e.to_string()))?;
    let parent = path.parent().expect("disk paths have a directory");
    std::fs::create_dir_all(parent).map_err(|e| BootError::Write(parent.to_path_buf(), e))?;
    let file = unnamed_file(parent).map_err(|e| BootError::Write(parent.to_path_buf(), e))?;
    let options = ext4::Options {
        // Read-only in every guest: no journal, and free space only for the metadata.
        size: SizeSpec::Auto { headroom_percent: 1, min_free_bytes: 1 << 20 },
        journal: false,
        seed: *kernel_digest.as_bytes(),
        inode_headroom_percent: 1,
        label: Some("kernel-modules".into()),
        ..ext4::Options::default()
    };
    ext4::write_image(&tree, &options, &file).map_err(|e| modules_error(e.to_string()))?;
    file.sync_all().map_err(|e| BootError::Write(path.to_path_buf(), e))?;
    match link_into_place(&file, path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(BootError::Write(path.to_path_buf(), e))
        }
        _ => {}
    }
    tracing::info!(disk = %path.display(), seconds = started.elapsed().as_secs_f64(), "made the modules disk");
    Ok(())
}

/// A file in `dir` without a name (`O_TMPFILE`), readable by QEMU once linked.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    let c_dir = crate::fileio::c_path(dir)?;
    // SAFETY: a NUL-terminated path; the returned fd is owned by the File below.
    let fd = unsafe { libc::open(c_dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Gives an `O_TMPFILE` file its name; `AlreadyExists` if another boot was first.
fn link_into_place(file: &File, path: &Path) -> io::Result<()> {
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    let to = crate::fileio::c_path(path)?;
    // SAFETY: NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_the_disk_once_and_only_from_the_kernels_own_directory() {
        let root = tempfile::tempdir().unwrap();
        let version = "6.1.0-test";
        let modules = root.path().join("lib/modules").join(version);
        std::fs::create_dir_all(modules.join("kernel/fs")).unwrap();
        std::fs::write(modules.join("modules.dep"), b"kernel/fs/overlay.ko:\n").unwrap();
        std::fs::write(modules.join("kernel/fs/overlay.ko"), vec![7u8; 10_000]).unwrap();
        let digest = Digest::of(b"bzImage");
        let store = root.path().join("store");

        let other = root.path().join("lib/modules/6.1.0-other");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(find_or_make(&store, version, &digest, Some(&other)).unwrap(), None);
        assert_eq!(find_or_make(&store, version, &digest, None).unwrap(), None);

        let disk = find_or_make(&store, version, &digest, Some(&modules)).unwrap().unwrap();
        assert_eq!(disk, disk_path(&store, version, &digest));
        let bytes = std::fs::read(&disk).unwrap();
        // The ext4 superblock magic (0xEF53 at byte 1024 + 0x38).
        assert_eq!(&bytes[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
        // Cached: found again without the modules directory, and not rewritten.
        assert_eq!(find_or_make(&store, version, &digest, None).unwrap(), Some(disk.clone()));
        assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), before);
        // Nothing else was left in the cache directory.
        assert_eq!(std::fs::read_dir(disk.parent().unwrap()).unwrap().count(), 1);
    }
}
