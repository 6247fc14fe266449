//! The initrd diskc generates for every image: a gzip-compressed newc cpio (Debian's kernels
//! unpack gzip, xz and zstd; gzip is the cheapest to decode under TCG) holding `/init`
//! (`diskc-init`), the kernel modules the root disk needs and the image config the init
//! runs. Planned as a sorted list of entries with fixed inode numbers and times, then
//! written in one pass, so the same inputs give the same bytes.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::manifest::ImageConfig;

use super::cpio::{self, Entry, S_IFCHR, S_IFDIR, S_IFREG};
use super::kernel::KernelSource;
use super::modules::{self, ModulesDep};
use super::BootError;

/// Where the init finds its inputs inside the initramfs.
pub const CONFIG_PATH: &str = "/diskc/config.json";
/// Module paths (absolute in the initramfs), one a line, in load order.
pub const MODULES_LIST_PATH: &str = "/diskc/modules.load";
/// The same for the modules a boot with host directories loads next (may be empty).
pub const VOLUME_MODULES_LIST_PATH: &str = "/diskc/modules.volumes";
/// The directory the root disk is mounted on before the init switches into it.
pub const NEW_ROOT: &str = "/newroot";

/// `/dev/console` (major 5, minor 1): the kernel opens it for the init's stdin, stdout and
/// stderr before running `/init`, so it must exist in the initramfs.
const CONSOLE_DEV: (u32, u32) = (5, 1);

/// The initrd's entries, sorted by name, parents first.
pub fn plan(init: &[u8], config: &ImageConfig, kernel: &KernelSource) -> Result<Vec<Entry>, BootError> {
    let read_modules_file = |rel: &str| {
        kernel
            .modules
            .read(rel)
            .map_err(|e| BootError::Modules(kernel.modules.describe(), format!("cannot read {rel}: {e}")))
    };
    let dep_text = String::from_utf8(read_modules_file("modules.dep")?)
        .map_err(|_| BootError::Modules(kernel.modules.describe(), "modules.dep is not UTF-8".into()))?;
    let dep = ModulesDep::parse(&dep_text)
        .map_err(|e| BootError::Modules(kernel.modules.describe(), format!("modules.dep: {e}")))?;
    // A kernel without modules.builtin has nothing built in that we could rely on.
    let builtin = match kernel.modules.read("modules.builtin") {
        Ok(bytes) => modules::parse_builtin(&String::from_utf8_lossy(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
        Err(e) => {
            return Err(BootError::Modules(
                kernel.modules.describe(),
                format!("cannot read modules.builtin: {e}"),
            ))
        }
    };
    let resolve = |wanted, loaded: &[String]| {
        modules::resolve(&dep, &builtin, wanted, loaded)
            .map_err(|e| BootError::Modules(kernel.modules.describe(), e.to_string()))
    };
    let order = resolve(modules::WANTED, &[])?;
    let volume_order = resolve(modules::VOLUME_WANTED, &order)?;

    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for (list_path, modules) in [(MODULES_LIST_PATH, &order), (VOLUME_MODULES_LIST_PATH, &volume_order)] {
        let mut load_list = String::new();
        for rel in modules {
            let bytes = uncompressed_module(rel, read_modules_file(rel)?)
                .map_err(|e| BootError::Modules(kernel.modules.describe(), e))?;
            let plain = rel.split_once(".ko").map_or(rel.clone(), |(stem, _)| format!("{stem}.ko"));
            let path = format!("lib/modules/{}/{plain}", kernel.version);
            load_list.push_str(&format!("/{path}\n"));
            files.push((path, S_IFREG | 0o644, bytes));
        }
        files.push((list_path[1..].to_string(), S_IFREG | 0o644, load_list.into_bytes()));
    }
    let config_json = serde_json::to_vec_pretty(config).expect("an ImageConfig always serializes");
    files.push((CONFIG_PATH[1..].to_string(), S_IFREG | 0o644, config_json));
    files.push(("init".to_string(), S_IFREG | 0o755, init.to_vec()));
    for dir in ["dev", "proc", "sys", &NEW_ROOT[1..]] {
        files.push((dir.to_string(), S_IFDIR | 0o755, Vec::new()));
    }

    // Every parent directory, once.
    let mut dirs: Vec<String> = files
        .iter()
        .flat_map(|(path, _, _)| {
            path.match_indices('/').map(|(i, _)| path[..i].to_string()).collect::<Vec<_>>()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs.retain(|d| !files.iter().any(|(p, _, _)| p == d));
    files.extend(dirs.into_iter().map(|d| (d, S_IFDIR | 0o755, Vec::new())));
    files.push(("dev/console".to_string(), S_IFCHR | 0o600, Vec::new()));
    files.sort_by(|a, b| a.0.cmp(&b.0));

    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, (name, mode, data))| {
            let rdev = if mode & 0o170000 == S_IFCHR { CONSOLE_DEV } else { (0, 0) };
            Entry { name, ino: i as u32 + 1, mode, mtime: 0, rdev, data }
        })
        .collect())
}

/// The kernel loads only plain ELF modules through `finit_module` without decompression
/// support, so compressed ones are unpacked here.
fn uncompressed_module(rel: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if rel.ends_with(".ko") {
        Ok(bytes)
    } else if rel.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).map_err(|e| format!("{rel}: {e}"))?;
        Ok(out)
    } else if rel.ends_with(".ko.zst") {
        zstd::decode_all(&bytes[..]).map_err(|e| format!("{rel}: {e}"))
    } else {
        Err(format!("{rel}: unsupported module compression (plain, .gz and .zst are supported)"))
    }
}

/// Writes the planned entries as a gzip-compressed cpio. The gzip header carries no name
/// and mtime 0, so it adds nothing variable.
pub fn write<W: Write>(out: W, entries: &[Entry]) -> io::Result<()> {
    let mut gz = GzEncoder::new(out, Compression::default());
    cpio::write_newc(&mut gz, entries)?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::kernel::ModuleSource;
    use std::collections::BTreeMap;

    struct FakeModules(BTreeMap<&'static str, Vec<u8>>);

    impl ModuleSource for FakeModules {
        fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
            self.0.get(rel).cloned().ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn kernel() -> KernelSource<'static> {
        let mut m = BTreeMap::new();
        m.insert(
            "modules.dep",
            b"kernel/virtio.ko:\nkernel/virtio_pci.ko: kernel/virtio.ko\nkernel/virtio_blk.ko: kernel/virtio.ko\n\
              kernel/virtio_console.ko: kernel/virtio.ko\nkernel/fuse.ko:\nkernel/virtiofs.ko: kernel/fuse.ko kernel/virtio.ko\n"
                .to_vec(),
        );
        m.insert("kernel/virtio_console.ko", b"CONSOLE".to_vec());
        m.insert("kernel/fuse.ko", b"FUSE".to_vec());
        m.insert("kernel/virtiofs.ko", b"VIRTIOFS".to_vec());
        m.insert("kernel/virtio_pci.ko", b"PCI".to_vec());
        m.insert("modules.builtin", b"kernel/ext4.ko\n".to_vec());
        m.insert("kernel/virtio.ko", b"VIRTIO".to_vec());
        m.insert("kernel/virtio_blk.ko", b"BLK".to_vec());
        KernelSource { image: Vec::new(), version: "6.1.0-test".into(), modules: Box::new(FakeModules(m)) }
    }

    #[test]
    fn holds_init_modules_and_config_in_order() {
        let config = ImageConfig { cmd: vec!["/bin/true".into()], ..Default::default() };
        let entries = plan(b"INIT", &config, &kernel()).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for want in [
            "dev/console",
            "init",
            "diskc/config.json",
            "lib/modules/6.1.0-test/kernel/virtio_blk.ko",
            "newroot",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let list = entries.iter().find(|e| e.name == "diskc/modules.load").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&list.data),
            "/lib/modules/6.1.0-test/kernel/virtio.ko\n/lib/modules/6.1.0-test/kernel/virtio_pci.ko\n\
             /lib/modules/6.1.0-test/kernel/virtio_blk.ko\n/lib/modules/6.1.0-test/kernel/virtio_console.ko\n"
        );
        let volumes = entries.iter().find(|e| e.name == "diskc/modules.volumes").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&volumes.data),
            "/lib/modules/6.1.0-test/kernel/fuse.ko\n/lib/modules/6.1.0-test/kernel/virtiofs.ko\n"
        );
        let config_back: ImageConfig =
            serde_json::from_slice(&entries.iter().find(|e| e.name == "diskc/config.json").unwrap().data)
                .unwrap();
        assert_eq!(config_back, config);
    }

    #[test]
    fn same_inputs_same_bytes_and_they_parse_back() {
        let config = ImageConfig::default();
        let write_once = || {
            let mut out = Vec::new();
            write(&mut out, &plan(b"INIT", &config, &kernel()).unwrap()).unwrap();
            out
        };
        let bytes = write_once();
        assert_eq!(bytes, write_once());
        let mut cpio_bytes = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut cpio_bytes).unwrap();
        let entries = cpio::read_newc(&cpio_bytes).unwrap();
        assert_eq!(entries, plan(b"INIT", &config, &kernel()).unwrap());
        let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((console.mode, console.rdev), (S_IFCHR | 0o600, (5, 1)));
    }

    #[test]
    fn a_missing_disk_driver_is_an_error() {
        let mut k = kernel();
        k.modules =
            Box::new(FakeModules(BTreeMap::from([("modules.dep", b"kernel/virtio_pci.ko:\n".to_vec())])));
        let err = plan(b"INIT", &ImageConfig::default(), &k).unwrap_err();
        assert!(err.to_string().contains("virtio_blk"), "{err}");
    }
}
