//! Boot files a host already has. A stored image's kernel is usually the host's boot kernel,
//! and its initrd is made by diskc from that kernel's modules and the image config, the same
//! way every time. So a boot from a remote store need not fetch either: when the host's
//! kernel file, or the initrd made here, has the digest the image's manifest records, it is
//! those very bytes, and the boot takes them from here. Anything else is fetched as before.
//! The kernel (14 MB for Debian's cloud kernel) would otherwise outweigh what the guest reads
//! of its root disk to start several times over.

use std::path::{Path, PathBuf};

use super::{initrd_image, BootError, KernelSource};
use crate::digest::Digest;
use crate::manifest::{BootFile, ImageConfig};

/// A kernel on the host: its bzImage and its `lib/modules/<version>` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKernel {
    pub kernel: PathBuf,
    pub modules: PathBuf,
}

impl HostKernel {
    /// Writes the image's kernel to `out` from the host's kernel file when it has `want`'s
    /// digest; `false` when the host's kernel is another one (or cannot be read).
    pub fn kernel_to(&self, want: &BootFile, out: &Path) -> Result<bool, BootError> {
        let Ok(bytes) = std::fs::read(&self.kernel) else { return Ok(false) };
        write_if_same(&bytes, want, out)
    }

    /// Writes the image's initrd to `out`, made here from the host's kernel and modules and
    /// `config`, when it comes out with `want`'s digest; `false` otherwise (another kernel,
    /// or an image made by another diskc).
    pub fn initrd_to(&self, config: &ImageConfig, want: &BootFile, out: &Path) -> Result<bool, BootError> {
        let made =
            KernelSource::from_host(&self.kernel, &self.modules).and_then(|k| initrd_image(&k, config));
        match made {
            Ok(bytes) => write_if_same(&bytes, want, out),
            Err(e) => {
                tracing::info!(error = %e, "cannot make the initrd here: fetching it");
                Ok(false)
            }
        }
    }
}

fn write_if_same(bytes: &[u8], want: &BootFile, out: &Path) -> Result<bool, BootError> {
    if bytes.len() as u64 != want.size || Digest::of(bytes) != want.digest {
        return Ok(false);
    }
    std::fs::write(out, bytes).map_err(|e| BootError::Write(out.to_path_buf(), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_kernel_is_taken_only_when_it_is_the_images() {
        let dir = tempfile::tempdir().unwrap();
        let host_kernel = dir.path().join("vmlinuz");
        std::fs::write(&host_kernel, b"the host's kernel").unwrap();
        let host = HostKernel { kernel: host_kernel, modules: dir.path().join("modules") };
        let file = |bytes: &[u8]| BootFile {
            file: "vmlinuz".into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
        };
        let out = dir.path().join("out");
        assert!(!host.kernel_to(&file(b"another kernel"), &out).unwrap());
        assert!(!out.exists(), "a kernel that is not the image's was written");
        assert!(host.kernel_to(&file(b"the host's kernel"), &out).unwrap());
        assert_eq!(std::fs::read(&out).unwrap(), b"the host's kernel");
        // No modules directory: the initrd cannot be made here, so it is fetched.
        assert!(!host.initrd_to(&ImageConfig::default(), &file(b"initrd"), &out).unwrap());
    }
}
