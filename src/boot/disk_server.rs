//! The root disk of a boot from the store: an NBD export of the image's rootfs served from
//! the store's chunks by a `diskc serve` that every boot of that image from that store
//! shares, so that VMs booting one image at once share one cache (and one fetch of each
//! chunk from a remote store). No copy of the rootfs is made; the guest costs what it reads.
//!
//! The server's files live under the store's `run/` (see [`SharedPaths`]). A boot connects
//! to the live server or, finding none, starts one: it binds both sockets itself and hands
//! them over as descriptors, so it can attach at once, with no polling for a socket to
//! appear. The server is detached (a session of its own), outlives the boot that started it
//! and ends on its own a moment after its last boot left (`diskc::nbd::control`).
//!
//! A boot holds a control connection to the server for as long as it runs: its end is the
//! server's end, seen at once, and the VM is stopped (exit 3) rather than left blocked on a
//! disk that will never answer. The boot's VM reads through an export name of its own, so
//! the server reports what this boot read, beside what it served in all.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::BootError;
use crate::nbd::{session_export_name, CacheStats, ControlClient, SharedPaths};
use crate::store::{ImageId, Store};

/// Overrides where the `diskc` binary that serves the disk is found.
pub const BIN_ENV: &str = "DISKC_BIN";

/// Where shared servers keep their sockets, under the store's root.
pub const RUN_DIR: &str = "run";

/// How long a server may take to answer (a new one first opens the image).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server served: this boot's VM (`read_bytes`, `failed_reads`, `fetched_bytes`
/// while it ran), and the server as a whole (its clients, boots and cache).
#[derive(Clone, Debug)]
pub struct Served {
    /// The server's process id.
    pub pid: u32,
    /// Boots the server has served, this one included.
    pub boots: u64,
    /// NBD connections the server has served.
    pub clients: u64,
    /// What the server served all its clients.
    pub server_read_bytes: u64,
    pub read_bytes: u64,
    pub failed_reads: u64,
    /// Fetched from a remote store by the server while this boot ran (with other boots at
    /// once, what they made it fetch too).
    pub fetched_bytes: u64,
    /// The server's fetches while this boot ran.
    pub fetches: u64,
    pub cache: CacheStats,
    /// The chunks (indexes into the rootfs's chunk list) this boot's VM read first, in order,
    /// up to the time asked for.
    pub profile: Vec<usize>,
}

/// This boot's attachment to the image's shared server.
pub struct DiskServer {
    control: ControlClient,
    /// The server, when this boot started it (so that its end is reaped and named).
    started: Option<Child>,
    image: ImageId,
    /// The export name the VM reads through.
    pub export_name: String,
    fetched_at_attach: u64,
    fetches_at_attach: u64,
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
    /// Attaches to the server of image `id` of `store` (whose rootfs is `size` bytes),
    /// starting it with a cache of `cache_bytes` if none runs, and links `link` to its NBD
    /// socket (a short path for QEMU, whatever the store's).
    pub fn attach(
        store: &Store,
        id: &ImageId,
        size: u64,
        link: &Path,
        cache_bytes: u64,
    ) -> Result<DiskServer, BootError> {
        let fail = |what: String| BootError::DiskServer(format!("image {}: {what}", id.short()));
        // Absolute: `link` is elsewhere, and the server may not share our directory.
        let dir = std::path::absolute(store.root().join(RUN_DIR))
            .map_err(|e| BootError::Write(store.root().join(RUN_DIR), e))?;
        std::fs::create_dir_all(&dir).map_err(|e| BootError::Write(dir.clone(), e))?;
        let paths = SharedPaths::new(&dir, &store.location(), id);
        let session = session_name();
        let lock = paths.flock(true).map_err(|e| BootError::Write(paths.lock(), e))?;
        let (control, report, started) =
            match ControlClient::attach(&paths.control(), &session, START_TIMEOUT) {
                Ok((control, report)) => (control, report, None),
                // No server, or a killed one's socket: start one.
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                    let mut child = start(store, id, &paths, cache_bytes)?;
                    match ControlClient::attach(&paths.control(), &session, START_TIMEOUT) {
                        Ok((control, report)) => (control, report, Some(child)),
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            let log = std::fs::read_to_string(paths.log()).unwrap_or_default();
                            let why = log
                                .lines()
                                .rev()
                                .find(|l| !l.trim().is_empty())
                                .map_or(e.to_string(), str::to_string);
                            return Err(fail(format!("the server did not start: {why}")));
                        }
                    }
                }
                Err(e) => return Err(fail(format!("{}: {e}", paths.control().display()))),
            };
        drop(lock);
        if report.image != id.hex() || report.server.size != size {
            return Err(fail(format!(
                "the server at {} serves image {} of {} bytes, not this one of {size}",
                paths.nbd().display(),
                report.image,
                report.server.size
            )));
        }
        std::os::unix::fs::symlink(paths.nbd(), link).map_err(|e| BootError::Write(link.to_path_buf(), e))?;
        Ok(DiskServer {
            control,
            started,
            image: *id,
            export_name: session_export_name(id, &session),
            fetched_at_attach: report.server.fetched_bytes,
            fetches_at_attach: report.server.fetches,
        })
    }

    /// Why the server is no longer there, if it is not.
    pub fn gone(&mut self) -> Option<String> {
        if let Some(Ok(Some(status))) = self.started.as_mut().map(Child::try_wait) {
            return Some(format!("the server of image {} ended ({status})", self.image.short()));
        }
        self.control.gone().then(|| format!("the server of image {} ended", self.image.short()))
    }

    /// What the server served this boot, as of now, with the chunks its VM first read up to
    /// `profile_until_ms` if asked; the server stays for other boots.
    pub fn stop(mut self, profile_until_ms: Option<u64>) -> Option<Served> {
        let report = self.control.report(profile_until_ms).ok()?;
        Some(Served {
            pid: report.pid,
            boots: report.boots,
            clients: report.server.clients,
            server_read_bytes: report.server.read_bytes,
            read_bytes: report.session.read_bytes,
            failed_reads: report.session.failed_reads,
            fetched_bytes: report.server.fetched_bytes.saturating_sub(self.fetched_at_attach),
            fetches: report.server.fetches.saturating_sub(self.fetches_at_attach),
            cache: report.server.cache,
            profile: report.profile,
        })
    }
}

/// A name no other boot has: the pid and the clock.
fn session_name() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// Starts the shared server on sockets bound here (the lock is held: any socket file left
/// is a dead server's), detached from this boot, its stderr in `BASE.log`.
fn start(store: &Store, id: &ImageId, paths: &SharedPaths, cache_bytes: u64) -> Result<Child, BootError> {
    let fail = |what: String| BootError::DiskServer(format!("image {}: {what}", id.short()));
    let bind = |path: PathBuf| {
        let _ = std::fs::remove_file(&path);
        crate::fileio::SocketPath::new(&path)
            .and_then(|short| UnixListener::bind(short.path()))
            .map_err(|e| fail(format!("cannot listen on {}: {e}", path.display())))
    };
    let nbd = bind(paths.nbd())?;
    let control = bind(paths.control())?;
    let log = File::create(paths.log()).map_err(|e| BootError::Write(paths.log(), e))?;
    let exe = locate_diskc()?;
    let fds = [nbd.as_raw_fd(), control.as_raw_fd()];
    let mut cmd = Command::new(&exe);
    cmd.args(["--quiet", "serve", "--store"])
        .arg(store.location())
        .args([
            id.hex(),
            "--nbd".into(),
            format!("fd:{}", fds[0]),
            "--control".into(),
            fds[1].to_string(),
            "--cache-size".into(),
            cache_bytes.to_string(),
            "--shared".into(),
        ])
        .arg(&paths.base)
        // It outlives this boot: nothing of the boot's private temporary files is its.
        .env_remove("TMPDIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (setsid, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: neither the boot's end nor its terminal's signals reach it.
            libc::setsid();
            for fd in fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    cmd.spawn().map_err(|e| fail(format!("cannot start {}: {e}", exe.display())))
}
