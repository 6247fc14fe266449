//! Host directories in the guest (`diskc boot -v HOSTDIR:GUESTDIR[:ro]`): one virtiofsd
//! per directory, which QEMU's `vhost-user-fs-pci` device talks to, and the guest mounts
//! as virtiofs. (9p would need no daemon, but Debian's cloud kernel is built without it;
//! virtiofs works under TCG as under KVM.)
//!
//! The listening socket is made here and handed to virtiofsd (`--fd`), so QEMU can connect
//! at once, whenever virtiofsd gets to accept. Each daemon dies with us
//! (`PR_SET_PDEATHSIG`), and ends by itself when QEMU goes. A read-only volume is mounted
//! read-only by the guest: virtiofsd itself serves it writable.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::guest::{volume_tag, GuestMount};
use super::options::Volume;
use super::run::tie_to_parent;
use super::BootError;

/// Overrides where virtiofsd is found.
pub const VIRTIOFSD_ENV: &str = "DISKC_VIRTIOFSD";
/// Where Debian's qemu-system-common installs virtiofsd (QEMU's own, before 8.0).
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// The running file servers of one boot; stopped on drop.
pub struct FileServers {
    children: Vec<Child>,
    /// Each volume's virtiofs tag and socket, for QEMU.
    pub sockets: Vec<(String, PathBuf)>,
    /// What the guest mounts.
    pub mounts: Vec<GuestMount>,
}

impl FileServers {
    /// Starts a server for each volume, with its socket in `dir`. A host directory that does
    /// not exist is created, as `docker run -v` does.
    pub fn start(volumes: &[Volume], dir: &Path) -> Result<FileServers, BootError> {
        let mut servers = FileServers { children: Vec::new(), sockets: Vec::new(), mounts: Vec::new() };
        if volumes.is_empty() {
            return Ok(servers);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BootError::Volume("virtiofsd, which serves them, needs root".into()));
        }
        let binary = std::env::var_os(VIRTIOFSD_ENV).map_or_else(|| PathBuf::from(VIRTIOFSD), PathBuf::from);
        for (n, volume) in volumes.iter().enumerate() {
            std::fs::create_dir_all(&volume.host).map_err(|e| BootError::Write(volume.host.clone(), e))?;
            let socket = dir.join(format!("vol{n}.sock"));
            let listener = UnixListener::bind(&socket).map_err(|e| BootError::Write(socket.clone(), e))?;
            let mut source = std::ffi::OsString::from("source=");
            source.push(&volume.host);
            let mut cmd = Command::new(&binary);
            cmd.arg(format!("--fd={}", listener.as_raw_fd()))
                .args(["-o", "sandbox=chroot", "-o", "cache=auto", "-o"])
                .arg(source)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // It reports even a normal end ("Unexpected poll revents") there; a server
                // that fails makes QEMU fail, and QEMU says which socket.
                .stderr(Stdio::null());
            tie_to_parent(&mut cmd, vec![listener.as_raw_fd()]);
            let child = cmd.spawn().map_err(|e| {
                BootError::Volume(format!("cannot start {} (qemu-system-common): {e}", binary.display()))
            })?;
            servers.children.push(child);
            let tag = volume_tag(n);
            servers.sockets.push((tag.clone(), socket));
            servers.mounts.push(GuestMount {
                tag,
                target: volume.guest.clone(),
                read_only: volume.read_only,
            });
        }
        Ok(servers)
    }
}

impl Drop for FileServers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
