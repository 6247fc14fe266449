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
use crate::manifest::{BootFile, BootPart, ImageConfig};

/// A kernel on the host: its bzImage and its `lib/modules/<version>` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKernel {
    pub kernel: PathBuf,
    pub modules: PathBuf,
}

impl HostKernel {
    /// Writes the image's kernel (`boot.kernel`) to `kernel_out` from the host's kernel file
    /// when it has that digest, then its initrd (`boot.initrd`) to `initrd_out`, made here from
    /// the host's modules and `config`, when that comes out with its digest. Whether each was
    /// written: a host with another kernel writes neither (its initrd could not match either),
    /// and an image made by another diskc gets only its kernel from here.
    pub fn boot_files_to(
        &self,
        boot: &BootPart,
        config: &ImageConfig,
        kernel_out: &Path,
        initrd_out: &Path,
    ) -> Result<(bool, bool), BootError> {
        let Ok(image) = std::fs::read(&self.kernel) else { return Ok((false, false)) };
        if !write_if_same(&image, &boot.kernel, kernel_out)? {
            return Ok((false, false));
        }
        let made = KernelSource::from_host_image(&self.kernel, image, &self.modules)
            .and_then(|k| initrd_image(&k, config));
        match made {
            Ok(bytes) => Ok((true, write_if_same(&bytes, &boot.initrd, initrd_out)?)),
            Err(e) => {
                tracing::info!(error = %e, "cannot make the initrd here: fetching it");
                Ok((true, false))
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
        let file =
            |bytes: &[u8]| BootFile { file: "f".into(), digest: Digest::of(bytes), size: bytes.len() as u64 };
        let boot = |kernel: &[u8]| BootPart {
            kernel: file(kernel),
            kernel_version: "6.1.0-test".into(),
            initrd: file(b"initrd"),
            cmdline: String::new(),
        };
        let (kernel_out, initrd_out) = (dir.path().join("k"), dir.path().join("i"));
        let config = ImageConfig::default();
        let other = host.boot_files_to(&boot(b"another kernel"), &config, &kernel_out, &initrd_out).unwrap();
        assert_eq!(other, (false, false));
        assert!(!kernel_out.exists(), "a kernel that is not the image's was written");
        // The same kernel; no modules directory, so the initrd cannot be made here and is fetched.
        let same =
            host.boot_files_to(&boot(b"the host's kernel"), &config, &kernel_out, &initrd_out).unwrap();
        assert_eq!(same, (true, false));
        assert_eq!(std::fs::read(&kernel_out).unwrap(), b"the host's kernel");
        assert!(!initrd_out.exists());
    }
}
