//! QEMU's command line for one boot, and whether KVM can run it.
//!
//! The machine is `q35` without the devices a diskc guest never uses (`-nodefaults`, no
//! i8042, SMBus, SATA, USB or vmport, whose probing costs boot time), qboot instead of
//! SeaBIOS as firmware (it only loads the kernel), virtio-pci disks, NIC and serial ports.
//! `q35` rather than `pc`: when the kernel enables a PCI device it looks up its interrupt
//! in the ACPI `_PRT`, which on `pc` (PIIX) QEMU writes as an AML loop over 128 entries,
//! evaluated anew for every device: about 0.1 s each under TCG, so a boot with a root disk,
//! a modules disk, the serial ports and a NIC spent 0.4 s there; `q35`'s `_PRT` is a table
//! (a few ms). `microvm` would emulate less still, but it has neither HPET nor ACPI PM
//! timer: under TCG on a loaded host the kernel's TSC calibration against the PIT fails and
//! the boot hangs with no clock source. KVM is used when it can run a guest, TCG otherwise.
//!
//! Writes to the root disk go to a throwaway overlay (`snapshot=on`, a file QEMU unlinks
//! as soon as it has opened it): the image file is content-addressed and must not change
//! by being booted, and boots of one image side by side never see each other's writes.
//! `--read-only` instead attaches it read-only and tells the init to mount it so.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::guest::{GATEWAY, GUEST_ADDRESS, NAMESERVER, NETWORK_PREFIX_LEN};
use super::options::Publish;
use super::{cmdline, BootError, BootSpec, RootDisk};

/// The line `diskc-init` writes on its status port when the program has exited, followed
/// by the status (0-255; 128+N for a death by signal N) and a newline.
pub const EXIT_STATUS_PREFIX: &str = "diskc-init: exit status ";

/// The QEMU binary for x86-64 guests (Debian package qemu-system-x86).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The modules disk is the second virtio disk, after the root disk.
pub const MODULES_DEVICE: &str = "/dev/vdb";

/// One VM, as QEMU is told to make it.
#[derive(Clone, Debug)]
pub struct Machine<'a> {
    pub spec: &'a BootSpec,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kvm: bool,
    pub read_only: bool,
    /// The kernel's modules tree as a disk (see `modules_disk`).
    pub modules_disk: Option<&'a Path>,
    /// A NIC on QEMU's user-mode network with these ports published; `None`: no NIC.
    pub network: Option<&'a [Publish]>,
    /// Each volume's virtiofs tag and the vhost-user socket of its file server.
    pub volumes: &'a [(String, PathBuf)],
    /// Each virtio-serial port's name and the connected socket QEMU gets for it.
    pub ports: &'a [(&'static str, RawFd)],
}

/// Whether KVM can actually run a guest here. The device node may exist and even create a
/// VM while the CPU offers no virtualization (a nested VM without vmx/svm), and QEMU then
/// aborts on its first MSR write, so the CPU flags are checked too.
pub fn kvm_works() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virtualization = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_ascii_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virtualization {
        return false;
    }
    // ioctl numbers from <linux/kvm.h>: _IO(KVMIO = 0xAE, 0x01).
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let Ok(dev) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a new fd or -1;
    // it touches no memory of ours.
    let vm = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: `vm` is a file descriptor we own and use no more.
    unsafe { libc::close(vm) };
    true
}

/// QEMU's command line for a boot (without the binary).
pub fn qemu_args(m: &Machine) -> Result<Vec<OsString>, BootError> {
    let line = cmdline::boot_cmdline(&m.spec.cmdline, m.read_only)?;
    let mut args: Vec<OsString> = Vec::new();
    // virtiofs needs the guest's memory shared with the file server.
    let shared_memory = !m.volumes.is_empty();
    let mut machine = "q35,i8042=off,smbus=off,sata=off,usb=off,vmport=off".to_string();
    if shared_memory {
        machine.push_str(",memory-backend=mem");
    }
    push(&mut args, &["-M", &machine, "-bios", "qboot.rom"]);
    if m.kvm {
        push(&mut args, &["-accel", "kvm", "-cpu", "host"]);
    } else {
        push(&mut args, &["-accel", "tcg"]);
    }
    push(&mut args, &["-m", &m.memory_mib.to_string(), "-smp", &m.cpus.to_string()]);
    if shared_memory {
        push(
            &mut args,
            &["-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", m.memory_mib)],
        );
    }
    push(
        &mut args,
        &["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-serial", "stdio"],
    );
    push(&mut args, &["-append", &line]);
    args.extend([
        "-kernel".into(),
        m.spec.kernel.clone().into_os_string(),
        "-initrd".into(),
        m.spec.initrd.clone().into_os_string(),
    ]);
    let root_mode = if m.read_only { "readonly=on" } else { "snapshot=on" };
    let root = match &m.spec.rootfs {
        RootDisk::File(path) => drive("root", root_mode, path),
        RootDisk::Nbd { socket, export } => nbd_drive("root", root_mode, socket, export),
    };
    args.extend(["-drive".into(), root]);
    push(&mut args, &["-device", "virtio-blk-pci,drive=root"]);
    if let Some(disk) = m.modules_disk {
        args.extend(["-drive".into(), drive("modules", "readonly=on", disk)]);
        push(&mut args, &["-device", "virtio-blk-pci,drive=modules"]);
    }
    if let Some(published) = m.network {
        let mut netdev = format!(
            "user,id=net0,net={}/{NETWORK_PREFIX_LEN},host={GATEWAY},dns={NAMESERVER},dhcpstart={GUEST_ADDRESS}",
            network_address()
        );
        for p in published {
            netdev.push_str(&format!(",hostfwd={}", p.hostfwd()));
        }
        // No option ROM: the firmware does not network-boot.
        push(&mut args, &["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0,romfile="]);
    }
    // The guest sets up two virtqueues per possible port when it probes the device: allow
    // the few that are used (numbered from 1) rather than QEMU's default of 31.
    push(&mut args, &["-device", "virtio-serial-pci,id=ports,max_ports=8"]);
    for (n, (name, fd)) in m.ports.iter().enumerate() {
        push(&mut args, &["-chardev", &format!("socket,id=port{n},fd={fd}")]);
        push(&mut args, &["-device", &format!("virtserialport,bus=ports.0,chardev=port{n},name={name}")]);
    }
    for (n, (tag, socket)) in m.volumes.iter().enumerate() {
        let mut chardev = OsString::from(format!("socket,id=vol{n},path="));
        chardev.push(qemu_escape(socket));
        args.extend(["-chardev".into(), chardev]);
        push(&mut args, &["-device", &format!("vhost-user-fs-pci,chardev=vol{n},tag={tag}")]);
    }
    Ok(args)
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

/// 10.0.2.0: the network of [`GUEST_ADDRESS`].
fn network_address() -> std::net::Ipv4Addr {
    let mask = u32::MAX << (32 - u32::from(NETWORK_PREFIX_LEN));
    std::net::Ipv4Addr::from(u32::from(GUEST_ADDRESS) & mask)
}

fn drive(id: &str, mode: &str, file: &Path) -> OsString {
    let mut drive = OsString::from(format!("id={id},if=none,format=raw,{mode},file="));
    drive.push(qemu_escape(file));
    drive
}

/// QEMU's NBD client on a unix socket. The export is the image id (hex digits: nothing to
/// escape). Without a reconnect delay a server that is gone fails the guest's reads at once,
/// and `diskc boot` notices it is gone and stops the VM.
fn nbd_drive(id: &str, mode: &str, socket: &Path, export: &str) -> OsString {
    let mut drive = OsString::from(format!(
        "id={id},if=none,format=raw,{mode},file.driver=nbd,file.export={export},file.server.type=unix,file.server.path="
    ));
    drive.push(qemu_escape(socket));
    drive
}

/// QEMU option values end at a comma; a literal comma is written twice.
fn qemu_escape(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// The status in an exit-status line.
pub fn parse_exit_status(line: &[u8]) -> Option<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let digits = line.strip_prefix(EXIT_STATUS_PREFIX.as_bytes())?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_exact_status_line() {
        assert_eq!(parse_exit_status(b"diskc-init: exit status 7\n"), Some(7));
        assert_eq!(parse_exit_status(b"diskc-init: exit status 143"), Some(143));
        assert_eq!(parse_exit_status(b"diskc-init: exit status 256\n"), None);
        assert_eq!(parse_exit_status(b"diskc-init: exit status 7 \n"), None);
        assert_eq!(parse_exit_status(b"xdiskc-init: exit status 7\n"), None);
    }

    fn spec() -> BootSpec {
        BootSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            rootfs: RootDisk::File("/images/a,b.ext4".into()),
            cmdline: cmdline::base_cmdline(),
            kernel_version: "6.1.0-test".into(),
            kernel_digest: crate::digest::Digest::of(b"k"),
            config: Default::default(),
        }
    }

    fn args(m: &Machine) -> Vec<String> {
        qemu_args(m).unwrap().into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn machine(spec: &BootSpec) -> Machine<'_> {
        Machine {
            spec,
            memory_mib: 256,
            cpus: 1,
            kvm: false,
            read_only: false,
            modules_disk: None,
            network: None,
            volumes: &[],
            ports: &[],
        }
    }

    #[test]
    fn args_carry_the_command_line_and_protect_the_image() {
        let spec = spec();
        let rw = args(&machine(&spec));
        assert!(
            rw.contains(&"id=root,if=none,format=raw,snapshot=on,file=/images/a,,b.ext4".to_string()),
            "{rw:?}"
        );
        assert!(!rw.iter().any(|a| a.contains("netdev")), "{rw:?}");
        let served = BootSpec {
            rootfs: RootDisk::Nbd { socket: "/tmp/b,1/rootfs.sock".into(), export: "ab12".into() },
            ..spec.clone()
        };
        assert!(args(&machine(&served)).contains(&"id=root,if=none,format=raw,snapshot=on,file.driver=nbd,file.export=ab12,file.server.type=unix,file.server.path=/tmp/b,,1/rootfs.sock".to_string()));
        let ro = args(&Machine { read_only: true, ..machine(&spec) });
        assert!(ro.iter().any(|a| a.contains("readonly=on")));
        let line = &ro[ro.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(cmdline::BootArgs::parse(line).read_only);
    }

    #[test]
    fn devices_for_network_ports_modules_and_volumes() {
        let spec = spec();
        let published: Vec<Publish> = vec!["127.0.0.1:8080:80".parse().unwrap()];
        let volumes = vec![("diskc-vol0".to_string(), PathBuf::from("/tmp/b/vol0.sock"))];
        let a = args(&Machine {
            modules_disk: Some(Path::new("/store/kernel-modules/6.1.ext4")),
            network: Some(&published),
            volumes: &volumes,
            ports: &[("org.diskc.status", 7)],
            ..machine(&spec)
        });
        let joined = a.join(" ");
        assert!(joined.contains("-netdev user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,hostfwd=tcp:127.0.0.1:8080-:80"), "{joined}");
        assert!(
            joined.contains("id=modules,if=none,format=raw,readonly=on,file=/store/kernel-modules/6.1.ext4")
        );
        // The root disk comes first, so it is /dev/vda and the modules /dev/vdb.
        assert!(joined.find("drive=root").unwrap() < joined.find("drive=modules").unwrap());
        assert!(joined.contains("-chardev socket,id=port0,fd=7 -device virtserialport,bus=ports.0,chardev=port0,name=org.diskc.status"));
        assert!(joined.contains("-chardev socket,id=vol0,path=/tmp/b/vol0.sock -device vhost-user-fs-pci,chardev=vol0,tag=diskc-vol0"));
        assert!(
            joined.contains("memory-backend=mem")
                && joined.contains("memory-backend-memfd,id=mem,size=256M,share=on")
        );
    }
}
