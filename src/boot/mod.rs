//! Booting: the last stage of the pipeline. It turns an image into something a VM monitor
//! runs — a kernel, an initrd diskc generates and a command line, recorded in the boot
//! manifest — and runs it under QEMU.
//!
//! - [`kernel`]: where the kernel and its modules come from (host files or the image).
//! - [`modules`]: which modules the initrd carries, through `modules.dep`.
//! - [`cpio`], [`initrd`]: the initrd (`/init` = `diskc-init`, modules, image config).
//! - [`cmdline`], [`passwd`], [`guest`]: shared with `diskc-init`, the guest side
//!   (`src/bin/diskc-init.rs`): the kernel command line, USER resolution, and the per-boot
//!   settings and channels.
//! - [`plan`]: `diskc boot` as a validated plan, and the one function that runs it;
//!   [`options`] parses its `docker run` flags.
//! - [`qemu`], [`run`]: QEMU's command line, and the VM as a child process.
//! - [`modules_disk`]: the kernel's whole modules tree as a disk for the guest.
//! - [`fileserver`]: host directories served to the guest (virtiofs).
//! - [`scratch`]: a boot's private temporary directory.
//! - [`disk_server`]: the NBD server a boot from the store reads its root disk from;
//!   [`profile`]: the chunks a boot reads first, fetched before the VM starts.
//!
//! The guest protocol (ports, command-line keys, exit status) is in docs/boot.md.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};
use crate::manifest::{BootFile, BootPart, ImageConfig, MANIFEST_FILE};
use crate::store::{ImageId, Store, StoreError};

use serde::Deserialize;

pub mod cmdline;
pub mod cpio;
pub mod disk_server;
pub mod fileserver;
pub mod guest;
pub mod host_files;
pub mod initrd;
pub mod kernel;
pub mod modules;
pub mod modules_disk;
pub mod options;
pub mod passwd;
pub mod plan;
pub mod profile;
pub mod qemu;
pub mod run;
pub mod scratch;

pub use host_files::HostKernel;
pub use kernel::{HostModules, KernelSource, ModuleSource, TreeModules};
pub use plan::{boot, BootPlan, BootRequest, BootTimings, Booted, Target};
pub use run::{Ended, Streams};

/// File names of the boot files in OUTDIR.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";

/// Names of the boot files in the store (`StoredImage::files`), by role.
pub const STORE_KERNEL: &str = "kernel";
pub const STORE_INITRD: &str = "initrd";

/// The socket of a stored image's NBD server, in the boot's private directory.
pub const ROOTFS_SOCKET: &str = "rootfs.sock";

/// Overrides where `diskc-init` is found (see [`locate_init`]).
pub const INIT_ENV: &str = "DISKC_INIT";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, #[source] io::Error),
    #[error("kernel {0}: {1}")]
    BadKernel(String, String),
    #[error("kernel modules {0}: {1}")]
    Modules(String, String),
    #[error("diskc-init not found (looked for {0}); build it with `cargo build --bin diskc-init` or set {INIT_ENV}")]
    InitMissing(String),
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error(transparent)]
    Option(#[from] options::OptionError),
    #[error("{0} not found: install the qemu-system-x86 package")]
    QemuMissing(String),
    #[error("qemu failed: {0}")]
    Qemu(String),
    #[error("host directories (-v): {0}")]
    Volume(String),
    #[error("the guest's init failed: {0}")]
    Guest(String),
    #[error("the guest stopped without reporting an exit status (an image made by an older diskc? convert it again)")]
    NoExitStatus,
    #[error("writing the guest's output: {0}")]
    Output(#[source] io::Error),
    #[error("{0}: {1}")]
    BadOutdir(PathBuf, String),
    #[error("image {0} has no boot part: convert it with a kernel (--kernel/--modules, or DISKC_KERNEL/DISKC_MODULES)")]
    NotBootable(ImageId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the root disk's NBD server: {0}")]
    DiskServer(String),
}

impl Classify for BootError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            BootError::Read(_, e) => ErrorKind::of_io(e),
            BootError::BadKernel(..)
            | BootError::Modules(..)
            | BootError::BadOutdir(..)
            | BootError::NotBootable(_) => ErrorKind::BadInput,
            BootError::Store(e) => e.error_kind(),
            BootError::Cmdline(_) | BootError::Option(_) => ErrorKind::Usage,
            BootError::Write(..)
            | BootError::InitMissing(_)
            | BootError::QemuMissing(_)
            | BootError::Qemu(_)
            | BootError::Volume(_)
            | BootError::Guest(_)
            | BootError::NoExitStatus
            | BootError::Output(_)
            | BootError::DiskServer(_) => ErrorKind::Environment,
        }
    }
}

/// Finds the `diskc-init` binary: `$DISKC_INIT`, else beside the running executable (how
/// both binaries are installed and how cargo builds them), else one directory up (cargo's
/// test binaries live in `target/<profile>/deps`).
pub fn locate_init() -> Result<PathBuf, BootError> {
    if let Some(path) = std::env::var_os(INIT_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| BootError::InitMissing(format!("the running executable: {e}")))?;
    let candidates: Vec<PathBuf> =
        exe.ancestors().skip(1).take(2).map(|dir| dir.join("diskc-init")).collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        BootError::InitMissing(
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        )
    })
}

/// What an initrd made now depends on besides the image config and the kernel: the init
/// binary and the modules the initrd carries. A cached conversion made by another diskc-init
/// would boot a guest that does not speak this host's protocol, so conversion caches key on
/// this too.
pub fn initrd_key() -> Result<Digest, BootError> {
    let init_path = locate_init()?;
    let init = std::fs::read(&init_path).map_err(|e| BootError::Read(init_path, e))?;
    let names = |w: &[modules::Wanted]| w.iter().map(|w| w.name).collect::<Vec<_>>().join(",");
    let mut key = Digest::of(&init).to_string().into_bytes();
    key.extend(format!(" {} {}", names(modules::WANTED), names(modules::VOLUME_WANTED)).bytes());
    Ok(Digest::of(&key))
}

/// Where the root disk's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootDisk {
    /// An image file (an OUTDIR's `rootfs.ext4`).
    File(PathBuf),
    /// An NBD export on a unix socket: a stored image served from its chunks.
    Nbd { socket: PathBuf, export: String },
}

/// The files of a prepared image, the manifest's command line, and what a boot needs to
/// know about the image: the kernel (for its modules disk) and the image config (`-P`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: RootDisk,
    pub cmdline: String,
    pub kernel_version: String,
    pub kernel_digest: Digest,
    pub config: ImageConfig,
}

/// Writes `OUTDIR/vmlinuz` and `OUTDIR/initrd.img` for an image with `config`, booting
/// `kernel`, and returns the boot manifest describing them.
pub fn prepare(outdir: &Path, kernel: &KernelSource, config: &ImageConfig) -> Result<BootPart, BootError> {
    let initrd_bytes = initrd_image(kernel, config)?;
    let kernel_file = write_boot_file(outdir, KERNEL_FILE, &kernel.image)?;
    let initrd_file = write_boot_file(outdir, INITRD_FILE, &initrd_bytes)?;
    Ok(BootPart {
        kernel: kernel_file,
        kernel_version: kernel.version.clone(),
        initrd: initrd_file,
        cmdline: cmdline::base_cmdline(),
    })
}

/// The initrd diskc makes for an image with `config` booting `kernel`: the same bytes for
/// the same inputs, every time.
pub fn initrd_image(kernel: &KernelSource, config: &ImageConfig) -> Result<Vec<u8>, BootError> {
    let init_path = locate_init()?;
    let init = std::fs::read(&init_path).map_err(|e| BootError::Read(init_path.clone(), e))?;
    let entries = initrd::plan(&init, config, kernel)?;
    let mut bytes = Vec::new();
    initrd::write(&mut bytes, &entries).expect("writing to memory cannot fail");
    Ok(bytes)
}

fn write_boot_file(outdir: &Path, name: &str, bytes: &[u8]) -> Result<BootFile, BootError> {
    let path = outdir.join(name);
    std::fs::write(&path, bytes).map_err(|e| BootError::Write(path, e))?;
    Ok(BootFile { file: name.to_string(), digest: Digest::of(bytes), size: bytes.len() as u64 })
}

/// The parts of `OUTDIR/manifest.json` a boot needs; the rest is not read, so a manifest
/// from any stage that wrote the rootfs and the boot part works.
#[derive(Deserialize)]
struct OutdirDescription {
    rootfs: OutdirRootfs,
    boot: Option<BootPart>,
    #[serde(default)]
    config: ImageConfig,
}

#[derive(Deserialize)]
struct OutdirRootfs {
    file: String,
}

impl BootSpec {
    /// The boot files of an output directory, as its `manifest.json` names them.
    pub fn from_outdir(outdir: &Path) -> Result<BootSpec, BootError> {
        let path = outdir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| BootError::Read(path.clone(), e))?;
        let manifest: OutdirDescription =
            serde_json::from_slice(&bytes).map_err(|e| BootError::BadOutdir(path.clone(), e.to_string()))?;
        let boot = manifest.boot.ok_or_else(|| {
            BootError::BadOutdir(
                path.clone(),
                "no boot part: build the image with a kernel (--kernel/--modules)".into(),
            )
        })?;
        let inside = |name: &str| -> Result<PathBuf, BootError> {
            // The manifest names files inside OUTDIR; anything else is not ours to open.
            if name.is_empty() || name.contains('/') || name == ".." {
                return Err(BootError::BadOutdir(
                    path.clone(),
                    format!("file name {name:?} is not a plain name"),
                ));
            }
            Ok(outdir.join(name))
        };
        Ok(BootSpec {
            kernel: inside(&boot.kernel.file)?,
            initrd: inside(&boot.initrd.file)?,
            rootfs: RootDisk::File(inside(&manifest.rootfs.file)?),
            cmdline: boot.cmdline,
            kernel_version: boot.kernel_version,
            kernel_digest: boot.kernel.digest,
            config: manifest.config,
        })
    }
}

impl BootSpec {
    /// The boot files of a stored image (`reference`: an id, an unambiguous id prefix or a
    /// name): the kernel and initrd exported into `dir` (a few MiB), the rootfs as the NBD
    /// export `dir/rootfs.sock` that [`disk_server`] serves from the store's chunks, so no
    /// copy of it is made. `dir` is the caller's to remove afterwards.
    ///
    /// From a remote store, the kernel and initrd are taken from `host` when it has the same
    /// bytes ([`host_files`]), so that only the root disk's reads cross the wire.
    pub fn from_store(
        store: &Store,
        reference: &str,
        dir: &Path,
        host: Option<&HostKernel>,
    ) -> Result<(ImageId, BootSpec), BootError> {
        let id = store.resolve(reference)?;
        let manifest = store.image(&id)?;
        let boot = manifest.boot.ok_or(BootError::NotBootable(id))?;
        let (kernel, initrd) = (dir.join(KERNEL_FILE), dir.join(INITRD_FILE));
        let from_host = match host.filter(|_| store.upstream().is_some()) {
            Some(host) => host.boot_files_to(&boot, &manifest.config, &kernel, &initrd)?,
            None => (false, false),
        };
        let spec = BootSpec {
            kernel,
            initrd,
            rootfs: RootDisk::Nbd { socket: dir.join(ROOTFS_SOCKET), export: id.hex() },
            cmdline: boot.cmdline,
            kernel_version: boot.kernel_version,
            kernel_digest: boot.kernel.digest,
            config: manifest.config,
        };
        if !from_host.0 {
            store.export_file(&id, STORE_KERNEL, &spec.kernel)?;
        }
        if !from_host.1 {
            store.export_file(&id, STORE_INITRD, &spec.initrd)?;
        }
        Ok((id, spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ROOTFS_FILE;

    fn outdir_with(manifest: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
        dir
    }

    const BOOT: &str = r#"{"kernel": {"file": "vmlinuz", "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "size": 0},
        "kernel_version": "6.1.0", "cmdline": "console=ttyS0",
        "initrd": {"file": "initrd.img", "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "size": 0}}"#;

    #[test]
    fn outdir_manifest_names_the_boot_files() {
        let dir = outdir_with(&format!(r#"{{"rootfs": {{"file": "rootfs.ext4"}}, "boot": {BOOT}}}"#));
        let spec = BootSpec::from_outdir(dir.path()).unwrap();
        assert_eq!(spec.rootfs, RootDisk::File(dir.path().join("rootfs.ext4")));
        assert_eq!(spec.kernel, dir.path().join("vmlinuz"));
        assert_eq!(spec.cmdline, "console=ttyS0");
    }

    #[test]
    fn outdir_without_boot_part_or_with_foreign_paths_is_bad_input() {
        let no_boot = outdir_with(r#"{"rootfs": {"file": "rootfs.ext4"}}"#);
        let err = BootSpec::from_outdir(no_boot.path()).unwrap_err();
        assert!(err.to_string().contains("no boot part"), "{err}");
        assert_eq!(err.error_kind(), ErrorKind::BadInput);
        let escape = outdir_with(&format!(r#"{{"rootfs": {{"file": "../../etc/shadow"}}, "boot": {BOOT}}}"#));
        assert_eq!(BootSpec::from_outdir(escape.path()).unwrap_err().error_kind(), ErrorKind::BadInput);
    }

    /// A store holding one image with the given boot files (name, bytes), and its id.
    fn store_with(boot: Option<BootPart>, files: &[(&str, &[u8])]) -> (tempfile::TempDir, Store, ImageId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let rootfs = dir.path().join("rootfs.in");
        std::fs::write(&rootfs, b"a rootfs stand-in").unwrap();
        let paths: Vec<(&str, PathBuf)> = files
            .iter()
            .map(|(name, bytes)| {
                let path = dir.path().join(format!("{name}.in"));
                std::fs::write(&path, bytes).unwrap();
                (*name, path)
            })
            .collect();
        let paths: Vec<(&str, &Path)> = paths.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let record = crate::store::ImageRecord { boot, ..Default::default() };
        let id = store.put_image(&rootfs, &paths, record).unwrap();
        (dir, store, id)
    }

    fn boot_manifest() -> BootPart {
        serde_json::from_str(BOOT).unwrap()
    }

    #[test]
    fn stored_image_exports_its_boot_files_by_id_prefix() {
        let (dir, store, id) =
            store_with(Some(boot_manifest()), &[(STORE_KERNEL, b"bzImage"), (STORE_INITRD, b"cpio")]);
        let out = dir.path().join("boot");
        std::fs::create_dir(&out).unwrap();
        let (found, spec) = BootSpec::from_store(&store, &id.hex()[..12], &out, None).unwrap();
        assert_eq!(found, id);
        assert_eq!(std::fs::read(&spec.kernel).unwrap(), b"bzImage");
        assert_eq!(std::fs::read(&spec.initrd).unwrap(), b"cpio");
        // The rootfs is served, not copied.
        assert_eq!(spec.rootfs, RootDisk::Nbd { socket: out.join(ROOTFS_SOCKET), export: id.hex() });
        assert!(!out.join(ROOTFS_FILE).exists());
        assert_eq!(spec.cmdline, "console=ttyS0");
    }

    #[test]
    fn stored_image_without_boot_part_is_bad_input() {
        let (dir, store, id) = store_with(None, &[]);
        let err = BootSpec::from_store(&store, &id.to_string(), dir.path(), None).unwrap_err();
        assert!(matches!(err, BootError::NotBootable(i) if i == id), "{err}");
        assert!(err.to_string().contains("convert it with a kernel"), "{err}");
        assert_eq!(err.error_kind(), ErrorKind::BadInput);
        let missing = BootSpec::from_store(&store, "no-such-image", dir.path(), None).unwrap_err();
        assert!(matches!(missing, BootError::Store(StoreError::NotFound(_))), "{missing}");
        assert_eq!(missing.error_kind(), ErrorKind::BadInput);
    }
}
