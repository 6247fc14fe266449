//! Which kernel modules the initrd carries, resolved through the kernel's own `modules.dep`
//! (as `modprobe` would), and in which order `diskc-init` loads them.
//!
//! For Debian's cloud kernel the virtio transports and the virtio disk are modules while
//! ext4 and crc32c (for `metadata_csum`) are built in; another kernel may build any of them
//! as modules, so each wanted module is either found built in (`modules.builtin`), or
//! loaded with its dependencies, or — when it is required — an error.

use std::collections::{BTreeMap, BTreeSet};

/// A module the root disk may need, and whether booting fails without it.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub name: &'static str,
    pub required: bool,
}

/// What the initrd loads at every boot: the virtio transport of the machine diskc boots
/// (PCI), the disk, the root filesystem and the checksum its metadata uses
/// (`metadata_csum`), the virtio-serial ports that carry the program's stdio and exit
/// status, and the NIC (a kernel without it boots without network).
pub const WANTED: &[Wanted] = &[
    Wanted { name: "virtio_pci", required: true },
    Wanted { name: "virtio_blk", required: true },
    Wanted { name: "crc32c_generic", required: false },
    Wanted { name: "ext4", required: true },
    Wanted { name: "virtio_console", required: true },
    Wanted { name: "virtio_net", required: false },
];

/// What the initrd carries for host directories (`diskc boot -v`), loaded only by a boot
/// that mounts one: virtiofs and FUSE under it.
pub const VOLUME_WANTED: &[Wanted] = &[Wanted { name: "virtiofs", required: false }];

/// `modules.dep`: each module's path (relative to `lib/modules/<version>`) and the paths
/// of everything it needs, in the order `modprobe` lists them (the last one loads first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModulesDep {
    /// Module name → (path, dependency paths).
    by_name: BTreeMap<String, (String, Vec<String>)>,
}

/// The module name of a path: the file name without `.ko[.gz|.xz|.zst]`, dashes as
/// underscores (the kernel treats both the same).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(s, _)| s);
    stem.replace('-', "_")
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<ModulesDep, String> {
        let mut by_name = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, deps) = line.split_once(':').ok_or_else(|| format!("line {} has no ':'", i + 1))?;
            let deps = deps.split_ascii_whitespace().map(str::to_string).collect();
            by_name.insert(module_name(module), (module.trim().to_string(), deps));
        }
        Ok(ModulesDep { by_name })
    }
}

/// The names listed in `modules.builtin` (one path per line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter(|l| !l.trim().is_empty()).map(module_name).collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the kernel has no module {0} (neither built in nor in modules.dep), and the root disk needs it")]
pub struct MissingModule(pub String);

/// The module paths to load, in load order: each wanted module after its dependencies,
/// every path once, none of those `loaded` already holds. Built-in modules need nothing.
pub fn resolve(
    dep: &ModulesDep,
    builtin: &BTreeSet<String>,
    wanted: &[Wanted],
    loaded: &[String],
) -> Result<Vec<String>, MissingModule> {
    let mut order: Vec<String> = Vec::new();
    for w in wanted {
        if builtin.contains(w.name) {
            continue;
        }
        let Some((path, deps)) = dep.by_name.get(w.name) else {
            if w.required {
                return Err(MissingModule(w.name.to_string()));
            }
            continue;
        };
        // modules.dep lists the whole closure with the deepest dependency last.
        for p in deps.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(p) && !loaded.contains(p) {
                order.push(p.clone());
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/crypto/crc32c-intel.ko.xz:\n\
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/net/core/failover.ko:\n\
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/fs/fuse/fuse.ko:\n\
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko\n";

    #[test]
    fn resolves_dependencies_first_each_once() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n");
        let order = resolve(&dep, &builtin, WANTED, &[]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk",
                "virtio_console",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        // The volume modules come after, without what the boot set has loaded already.
        let volumes = resolve(&dep, &builtin, VOLUME_WANTED, &order).unwrap();
        let names: Vec<String> = volumes.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["fuse", "virtiofs"]);
    }

    #[test]
    fn a_required_module_must_exist() {
        let dep = ModulesDep::parse(DEP).unwrap();
        assert_eq!(resolve(&dep, &BTreeSet::new(), WANTED, &[]), Err(MissingModule("ext4".into())));
        let no_pci = ModulesDep::parse("kernel/drivers/block/virtio_blk.ko:\n").unwrap();
        assert_eq!(resolve(&no_pci, &BTreeSet::new(), WANTED, &[]), Err(MissingModule("virtio_pci".into())));
        assert!(ModulesDep::parse("no colon here\n").is_err());
    }

    #[test]
    fn names_ignore_compression_and_dashes() {
        assert_eq!(module_name("kernel/crypto/crc32c-intel.ko.zst"), "crc32c_intel");
        assert_eq!(module_name("virtio_blk.ko"), "virtio_blk");
    }
}
