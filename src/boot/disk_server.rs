//! The root disk of a boot from the store: `diskc serve` run as a child on a unix socket in
//! the boot's private directory, which QEMU's NBD client reads from. No copy of the rootfs
//! is made; the guest costs what it reads.
//!
//! Why a child process rather than threads of `diskc boot`: the server can then end on its
//! own (killed, out of memory), and the boot must notice that rather than leave a guest
//! blocked on a disk that will never answer; as a child, its end is seen at once
//! (`try_wait`) and the VM is stopped (exit 3). The socket is bound here and handed over
//! as a descriptor (`--nbd fd:N`), so clients can connect before the child has started: no
//! polling for a socket to appear. The child dies with `diskc boot` (`PR_SET_PDEATHSIG`),
//! and reports what it served as JSON when asked to stop.

use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::run::tie_to_parent;
use super::BootError;
use crate::nbd::{protocol, CacheStats};
use crate::store::{ImageId, Store};

/// Overrides where the `diskc` binary that serves the disk is found.
pub const BIN_ENV: &str = "DISKC_BIN";

/// How long the server may take to answer its first client.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped server may take to report and exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server said it served, from `diskc serve --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Served {
    pub clients: u64,
    pub read_bytes: u64,
    pub fetched_bytes: u64,
    pub cache: CacheStats,
}

/// A running `diskc serve` for one image.
pub struct DiskServer {
    child: Child,
    image: ImageId,
}

/// The `diskc` binary: `$DISKC_BIN`, else the running executable when it is `diskc`, else
/// one beside it or a directory up (cargo's test binaries live in `target/<profile>/deps`).
pub fn locate_diskc() -> Result<PathBuf, BootError> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| BootError::DiskServer(format!("cannot find the diskc binary: {e}")))?;
    if exe.file_name().is_some_and(|n| n == "diskc") {
        return Ok(exe);
    }
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("diskc")).collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        BootError::DiskServer(format!("the diskc binary is not beside {}: set {BIN_ENV}", exe.display()))
    })
}

impl DiskServer {
    /// Starts serving image `id` of `store` (whose rootfs is `size` bytes) on `socket`,
    /// with a cache of `cache_bytes`, and checks that it answers with an export of that size.
    pub fn start(
        store: &Store,
        id: &ImageId,
        size: u64,
        socket: &Path,
        cache_bytes: u64,
    ) -> Result<DiskServer, BootError> {
        let fail = |what: String| BootError::DiskServer(what);
        let listener = UnixListener::bind(socket)
            .map_err(|e| fail(format!("cannot listen on {}: {e}", socket.display())))?;
        let exe = locate_diskc()?;
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(&exe);
        cmd.args(["--json", "--quiet", "serve", "--store"])
            .arg(store.location())
            .args([
                id.hex(),
                "--nbd".into(),
                format!("fd:{fd}"),
                "--cache-size".into(),
                cache_bytes.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        tie_to_parent(&mut cmd, vec![fd]);
        let child = cmd.spawn().map_err(|e| fail(format!("cannot start {}: {e}", exe.display())))?;
        drop(listener);
        let mut server = DiskServer { child, image: *id };
        server.check(socket, size)?;
        Ok(server)
    }

    /// A client handshake, as QEMU will make one: the export must be there, read-only and
    /// of the rootfs's size.
    fn check(&mut self, socket: &Path, size: u64) -> Result<(), BootError> {
        let answered = UnixStream::connect(socket).and_then(|conn| {
            conn.set_read_timeout(Some(START_TIMEOUT))?;
            let info = protocol::client_handshake(
                &mut BufReader::new(conn.try_clone()?),
                &mut &conn,
                &self.image.hex(),
            )?;
            Ok(info)
        });
        match answered {
            Ok(info) if info.size == size && info.flags & protocol::NBD_FLAG_READ_ONLY != 0 => Ok(()),
            Ok(info) => Err(BootError::DiskServer(format!(
                "image {}: the server exports {} bytes, the rootfs has {size}",
                self.image.short(),
                info.size
            ))),
            Err(e) => {
                let why = self.gone().unwrap_or_else(|| e.to_string());
                Err(BootError::DiskServer(format!("image {}: {why}", self.image.short())))
            }
        }
    }

    /// Why the server is no longer there, if it is not.
    pub fn gone(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the server of image {} ended ({status})", self.image.short())),
            Ok(None) => None,
            Err(e) => Some(format!("the server of image {}: {e}", self.image.short())),
        }
    }

    /// Stops the server (SIGTERM) and returns what it reports having served.
    pub fn stop(mut self) -> Option<Served> {
        // SAFETY: kill sends a signal to our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
        let mut report = String::new();
        self.child.stdout.take()?.read_to_string(&mut report).ok()?;
        serde_json::from_str(report.trim()).ok()
    }
}

impl Drop for DiskServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
