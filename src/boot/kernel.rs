//! Where the kernel and its modules come from: files on the host (`--kernel`/`--modules`,
//! e.g. Debian's cloud kernel unpacked by `scripts/fetch-kernel.sh`), or the image's own
//! `/boot/vmlinuz-*` and `lib/modules/<version>` read out of its flattened tree.
//!
//! Modules are read through [`ModuleSource`] so that the initrd builder does not care which.

use std::io;
use std::path::{Path, PathBuf};

use crate::tree::{Content, FsTree, NodeKind};

use super::BootError;

/// Read access to one `lib/modules/<version>` directory.
pub trait ModuleSource {
    /// The bytes of `rel`, a path relative to the modules directory (`modules.dep`,
    /// `kernel/drivers/block/virtio_blk.ko`, ...).
    fn read(&self, rel: &str) -> io::Result<Vec<u8>>;
    /// Names the directory in messages.
    fn describe(&self) -> String;
}

/// A modules directory on the host.
pub struct HostModules {
    pub dir: PathBuf,
}

impl ModuleSource for HostModules {
    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(rel))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// A modules directory inside an image tree (`/usr/lib/modules/<version>` or `/lib/...`).
pub struct TreeModules<'a, C> {
    pub tree: &'a FsTree<C>,
    /// Path of the directory in the tree, without a leading `/`.
    pub dir: String,
}

impl<C: Content> ModuleSource for TreeModules<'_, C> {
    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        read_tree_file(self.tree, &format!("{}/{rel}", self.dir))
    }

    fn describe(&self) -> String {
        format!("/{} in the image", self.dir)
    }
}

/// The whole content of a regular file of the tree (symlinks are not followed).
fn read_tree_file<C: Content>(tree: &FsTree<C>, path: &str) -> io::Result<Vec<u8>> {
    let not_found = || io::Error::new(io::ErrorKind::NotFound, format!("/{path} not found in the image"));
    let id = tree.lookup(path.as_bytes()).ok_or_else(not_found)?;
    match &tree.get(id).kind {
        NodeKind::File(data) => {
            let len = usize::try_from(data.size).map_err(io::Error::other)?;
            let mut buf = vec![0u8; len];
            data.content.read_at(0, &mut buf)?;
            Ok(buf)
        }
        _ => Err(not_found()),
    }
}

/// A kernel to boot with: its image, its release string and its modules.
pub struct KernelSource<'a> {
    /// The bzImage bytes.
    pub image: Vec<u8>,
    /// The release, e.g. `6.1.0-27-cloud-amd64`: the modules directory's name.
    pub version: String,
    pub modules: Box<dyn ModuleSource + 'a>,
}

impl KernelSource<'static> {
    /// A kernel image and a `lib/modules/<version>` directory on the host. The version is
    /// the directory's name and must be the one the kernel image declares.
    pub fn from_host(kernel: &Path, modules: &Path) -> Result<Self, BootError> {
        let image = std::fs::read(kernel).map_err(|e| BootError::Read(kernel.to_path_buf(), e))?;
        Self::from_host_image(kernel, image, modules)
    }

    /// [`KernelSource::from_host`] with the kernel file's bytes already read.
    pub fn from_host_image(kernel: &Path, image: Vec<u8>, modules: &Path) -> Result<Self, BootError> {
        let version = modules
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                BootError::BadKernel(
                    modules.display().to_string(),
                    "the modules directory has no name".into(),
                )
            })?
            .to_string();
        check_version(&kernel.display().to_string(), &image, &version)?;
        Ok(KernelSource { image, version, modules: Box::new(HostModules { dir: modules.to_path_buf() }) })
    }
}

impl<'a> KernelSource<'a> {
    /// The image's own kernel, when its tree has a `/boot/vmlinuz-<version>` with the
    /// matching `lib/modules/<version>` (under `/usr/lib` or `/lib`). Of several, the
    /// highest version by name wins. `None` when the image carries no kernel.
    pub fn from_tree<C: Content>(tree: &'a FsTree<C>) -> Result<Option<Self>, BootError> {
        let Some(boot) = tree.lookup(b"boot").and_then(|id| tree.get(id).as_dir()) else {
            return Ok(None);
        };
        let mut versions: Vec<String> = boot
            .entries
            .keys()
            .filter_map(|name| name.strip_prefix(b"vmlinuz-"))
            .filter_map(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
            .collect();
        versions.sort();
        for version in versions.into_iter().rev() {
            let dir = ["usr/lib/modules", "lib/modules"]
                .iter()
                .map(|base| format!("{base}/{version}"))
                .find(|d| tree.lookup(d.as_bytes()).is_some_and(|id| tree.get(id).is_dir()));
            let Some(dir) = dir else { continue };
            let path = format!("boot/vmlinuz-{version}");
            let image = read_tree_file(tree, &path)
                .map_err(|e| BootError::Read(PathBuf::from(format!("/{path}")), e))?;
            check_version(&format!("/{path} in the image"), &image, &version)?;
            return Ok(Some(KernelSource { image, version, modules: Box::new(TreeModules { tree, dir }) }));
        }
        Ok(None)
    }
}

/// Offsets in the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst).
const HDR_MAGIC_OFFSET: usize = 0x202;
const HDR_MAGIC: &[u8; 4] = b"HdrS";
const HDR_KERNEL_VERSION_OFFSET: usize = 0x20e;
/// `kernel_version` is relative to the start of the setup code, which follows this sector.
const SETUP_BASE: usize = 0x200;

/// The release string a bzImage declares (`kernel_version` of the setup header): the first
/// word of e.g. `6.1.0-27-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ...`.
pub fn bzimage_version(image: &[u8]) -> Option<String> {
    if image.get(HDR_MAGIC_OFFSET..HDR_MAGIC_OFFSET + 4)? != HDR_MAGIC {
        return None;
    }
    let ptr = u16::from_le_bytes(
        image.get(HDR_KERNEL_VERSION_OFFSET..HDR_KERNEL_VERSION_OFFSET + 2)?.try_into().ok()?,
    );
    if ptr == 0 {
        return None;
    }
    let start = SETUP_BASE + ptr as usize;
    let text = image.get(start..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    String::from_utf8(text[..end].to_vec()).ok()
}

fn check_version(what: &str, image: &[u8], version: &str) -> Result<(), BootError> {
    match bzimage_version(image) {
        None => {
            Err(BootError::BadKernel(what.to_string(), "not an x86 bzImage (no HdrS setup header)".into()))
        }
        Some(v) if v != version => Err(BootError::BadKernel(
            what.to_string(),
            format!("the kernel is version {v} but the modules are for {version}"),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Directory, FileData, Metadata, Node, Timestamp};

    /// A fake bzImage: just the setup header fields we read.
    fn bzimage(version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x400];
        img[HDR_MAGIC_OFFSET..HDR_MAGIC_OFFSET + 4].copy_from_slice(HDR_MAGIC);
        let ptr = 0x100u16;
        img[HDR_KERNEL_VERSION_OFFSET..HDR_KERNEL_VERSION_OFFSET + 2].copy_from_slice(&ptr.to_le_bytes());
        let at = SETUP_BASE + ptr as usize;
        let text = format!("{version} (builder@host) #1 SMP\0");
        img[at..at + text.len()].copy_from_slice(text.as_bytes());
        img
    }

    fn mkdirs(tree: &mut FsTree<Vec<u8>>, path: &str) -> crate::tree::NodeId {
        let mut at = FsTree::<Vec<u8>>::ROOT;
        for part in path.split('/') {
            at = match tree.child(at, part.as_bytes()) {
                Some(id) => id,
                None => {
                    let meta = Metadata::with_mode(0o755, Timestamp::default());
                    let id = tree.add(Node::new(NodeKind::Directory(Directory::default()), meta));
                    tree.insert(at, part.as_bytes(), id).unwrap();
                    id
                }
            };
        }
        at
    }

    fn put(tree: &mut FsTree<Vec<u8>>, dir: &str, name: &str, bytes: Vec<u8>) {
        let d = mkdirs(tree, dir);
        let meta = Metadata::with_mode(0o644, Timestamp::default());
        let f = tree.add(Node::new(NodeKind::File(FileData::from_bytes(bytes)), meta));
        tree.insert(d, name.as_bytes(), f).unwrap();
    }

    #[test]
    fn reads_the_version_from_the_setup_header() {
        assert_eq!(
            bzimage_version(&bzimage("6.1.0-27-cloud-amd64")).as_deref(),
            Some("6.1.0-27-cloud-amd64")
        );
        assert_eq!(bzimage_version(&[0u8; 0x400]), None);
        assert!(check_version("k", &bzimage("6.1.0-1"), "6.1.0-2").is_err());
    }

    #[test]
    fn finds_the_newest_kernel_of_an_image_with_its_modules() {
        let mut tree = FsTree::new(Metadata::with_mode(0o755, Timestamp::default()));
        assert!(KernelSource::from_tree(&tree).unwrap().is_none());
        put(&mut tree, "boot", "vmlinuz-6.1.0-1-amd64", bzimage("6.1.0-1-amd64"));
        // The newer kernel has no modules: it is passed over.
        put(&mut tree, "boot", "vmlinuz-6.1.0-9-amd64", bzimage("6.1.0-9-amd64"));
        put(&mut tree, "usr/lib/modules/6.1.0-1-amd64", "modules.dep", b"x.ko:\n".to_vec());
        let k = KernelSource::from_tree(&tree).unwrap().unwrap();
        assert_eq!(k.version, "6.1.0-1-amd64");
        assert_eq!(k.modules.read("modules.dep").unwrap(), b"x.ko:\n");
        assert_eq!(k.modules.read("nope").unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
