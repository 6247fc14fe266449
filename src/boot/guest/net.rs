//! The guest side of networking, run by `diskc-init`: bring interfaces up, give the NIC of
//! QEMU's user-mode network its fixed address and default route (the same result as DHCP
//! from QEMU, without waiting for it), and give the guest a resolv.conf when the image has
//! none that names a nameserver. The ioctls are the ones `ifconfig` and `route` use (netdevice(7),
//! `include/uapi/linux/route.h`), which need no netlink code.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// `struct rtentry` of `include/uapi/linux/route.h` (the libc crate has none for glibc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned by the returned value.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?}")));
    }
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads the family first.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Runs one interface ioctl that reads or writes `req`.
fn ioctl(fd: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: the SIOC[GS]IF* requests read and write an `ifreq`, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, req as *mut libc::ifreq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns IPv6 off on every interface, present and future, before any is up, as Docker does
/// in a container on a network without IPv6 (`net.ipv6.conf.{all,default}.disable_ipv6`);
/// it also spares the guest the addresses, duplicate detection and router solicitations
/// an interface coming up would start. A kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6() {
    for scope in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1");
    }
}

/// Sets IFF_UP (as a container runtime does for `lo`).
pub fn bring_up(name: &str) -> io::Result<()> {
    let fd = socket()?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled in ifru_flags, the member SIOCSIFFLAGS reads.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(&fd, libc::SIOCSIFFLAGS, &mut req)
}

/// Gives `name` the address `address/prefix_len`, brings it up and routes everything else
/// through `gateway`.
pub fn configure(name: &str, address: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> io::Result<()> {
    let fd = socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(address);
    ioctl(&fd, libc::SIOCSIFADDR, &mut req)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut req)?;
    bring_up(name)?;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a `struct rtentry`, which `RtEntry` lays out; it outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCADDRT, &mut route as *mut RtEntry) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The first network interface that is not `lo`, once its driver has registered it.
pub fn wait_for_nic(limit: Duration) -> io::Result<String> {
    let start = Instant::now();
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        if let Some(name) = names.into_iter().next() {
            return Ok(name);
        }
        if start.elapsed() > limit {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no network interface appeared"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `/etc/resolv.conf` for QEMU's DNS forwarder.
fn resolv_conf() -> String {
    format!("nameserver {}\n", super::NAMESERVER)
}

/// Whether a resolv.conf names a nameserver; one that does not (missing, empty, a dangling
/// link) is replaced by [`resolv_conf`].
fn names_a_nameserver(text: &str) -> bool {
    text.lines().any(|l| l.split_ascii_whitespace().next() == Some("nameserver"))
}

/// Gives the guest an `/etc/resolv.conf` naming QEMU's DNS forwarder when the image's names
/// no nameserver: over an existing file a bind mount from /run, which leaves the image alone
/// even when the root is writable; a missing one is created on a writable root, or where a
/// dangling link into /run points. Otherwise name resolution stays as the image has it, and
/// the error says why.
pub fn provide_resolv_conf(read_only: bool) -> Result<(), String> {
    let path = Path::new("/etc/resolv.conf");
    if std::fs::read_to_string(path).is_ok_and(|text| names_a_nameserver(&text)) {
        return Ok(());
    }
    let ours = Path::new("/run/diskc/resolv.conf");
    std::fs::create_dir_all("/run/diskc")
        .and_then(|()| std::fs::write(ours, resolv_conf()))
        .map_err(|e| format!("writing {}: {e}", ours.display()))?;
    if path.is_file() {
        return bind_mount(ours, path).map_err(|e| format!("mounting over {}: {e}", path.display()));
    }
    match std::fs::read_link(path) {
        Ok(target) if target.starts_with("/run/") => {
            std::fs::create_dir_all(target.parent().unwrap_or(Path::new("/run")))
                .and_then(|()| std::fs::copy(ours, &target).map(drop))
                .map_err(|e| format!("writing {}: {e}", target.display()))
        }
        _ if !read_only && Path::new("/etc").is_dir() => {
            let _ = std::fs::remove_file(path);
            std::fs::write(path, resolv_conf()).map_err(|e| format!("writing {}: {e}", path.display()))
        }
        _ => Err("the read-only image has no /etc/resolv.conf to cover".into()),
    }
}

fn bind_mount(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (crate::fileio::c_path(from)?, crate::fileio::c_path(to)?);
    // SAFETY: NUL-terminated paths that outlive the call; a bind mount takes no type or data.
    let rc =
        unsafe { libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolv_conf_needs_a_nameserver_line() {
        assert!(names_a_nameserver("# generated\nnameserver 10.0.0.1\n"));
        assert!(names_a_nameserver("search x\n  nameserver\t::1"));
        assert!(!names_a_nameserver(""));
        assert!(!names_a_nameserver("# nameserver 1.1.1.1\nsearch example.org\n"));
        assert!(names_a_nameserver(&resolv_conf()));
    }

    #[test]
    fn the_route_entry_has_the_kernels_layout() {
        // sizeof(struct rtentry) on x86-64.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        let sa = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(&sa.sa_data[2..6], &[10, 0, 2, 15].map(|b: u8| b as libc::c_char));
    }
}
