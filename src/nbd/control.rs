//! One server shared by every boot of an image from one store, so that VMs booting the
//! same image at once decompress (and fetch) each chunk once between them.
//!
//! Beside the NBD socket, a shared server listens on a control socket. Each boot keeps one
//! control connection open for as long as it runs: it attaches a session there (its VM then
//! reads through the export name `<id>.<session>`, so the server counts what that VM read),
//! asks for a report at its end, and sees the server die as the end of that connection.
//! The server ends on its own a linger time (`diskc serve --linger-ms`, 2 s) after its last
//! boot and NBD client left ([`ControlServer::should_end`]).
//!
//! Starting and ending are serialized by a flock on `BASE.lock`: a boot holds it while it
//! connects to a live server or starts one; the server holds it (only ever trying, never
//! waiting, so a boot waiting on its reply cannot block it) while it decides to end, accepts
//! a boot that connected meanwhile, and removes its sockets. So a boot either reaches a
//! server that stays, or finds no socket and starts the next one.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::export::{Export, ExportStats, SessionStats};
use crate::digest::Digest;
use crate::store::ImageId;

/// The files of the shared server of one image of one store: `BASE.sock` (NBD),
/// `BASE.ctl` (control), `BASE.lock`, `BASE.log` (the server's stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedPaths {
    pub base: PathBuf,
}

impl SharedPaths {
    /// In `dir`, for image `id` of the store at `location`. The name is a digest of both, cut
    /// short (a longer socket path is reached through its directory: `fileio::SocketPath`).
    pub fn new(dir: &Path, location: &str, id: &ImageId) -> SharedPaths {
        let key = Digest::of(format!("{location}\n{}", id.hex()).as_bytes()).hex();
        SharedPaths { base: dir.join(&key[..24]) }
    }

    fn with(&self, ext: &str) -> PathBuf {
        self.base.with_extension(ext)
    }

    pub fn nbd(&self) -> PathBuf {
        self.with("sock")
    }

    pub fn control(&self) -> PathBuf {
        self.with("ctl")
    }

    pub fn lock(&self) -> PathBuf {
        self.with("lock")
    }

    pub fn log(&self) -> PathBuf {
        self.with("log")
    }

    /// Takes the lock, waiting (`wait`) or not; `None` when it is held elsewhere.
    pub fn flock(&self, wait: bool) -> io::Result<Option<File>> {
        let path = self.lock();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
        loop {
            // SAFETY: flock on a descriptor we own; the lock goes when the file closes.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Some(file));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(err),
            }
        }
    }
}

/// A line from a boot to the server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// The boot's session: its VM reads through the export name `<id>.<session>`.
    Attach { session: String },
    /// What the server and this session have done; with `profile_until_ms`, the chunks the
    /// session first read up to then too.
    Report { profile_until_ms: Option<u64> },
}

/// The server's answer to either request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    /// The image id, hex.
    pub image: String,
    /// Boots attached since the server started.
    pub boots: u64,
    /// The session's own reads.
    pub session: SessionStats,
    /// Everything the server served, its cache, what it fetched.
    pub server: ExportStats,
    /// The session's profile, when asked: indexes into the rootfs's chunk list.
    #[serde(default)]
    pub profile: Vec<usize>,
}

#[derive(Default)]
struct Boots {
    now: u64,
    total: u64,
    idle_since: Option<Instant>,
}

/// The server's side: boots connected on the control socket.
pub struct ControlServer {
    listener: UnixListener,
    export: Arc<Export>,
    boots: Arc<Mutex<Boots>>,
}

impl ControlServer {
    /// Serves control connections on the listening socket `fd`, inherited from a boot.
    pub fn adopt(fd: RawFd, export: Arc<Export>) -> io::Result<ControlServer> {
        // SAFETY: fstat only reads the descriptor's status; anything but a socket is refused
        // before it is adopted.
        let is_socket = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
        };
        if fd <= 2 || !is_socket {
            return Err(io::Error::other(format!("control descriptor {fd} is not an open socket")));
        }
        // SAFETY: an open socket the parent handed us to own.
        let listener = unsafe { UnixListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        Ok(ControlServer { listener, export, boots: Default::default() })
    }

    /// Accepts the boots waiting, each answered on a thread of its own.
    pub fn poll(&self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("control accept: {e}");
                    break;
                }
            };
            // Counted from the accept: a boot is there before its first line arrives.
            {
                let mut boots = self.boots.lock().expect("never poisoned");
                boots.now += 1;
                boots.total += 1;
            }
            let (export, boots) = (self.export.clone(), self.boots.clone());
            std::thread::spawn(move || {
                if let Err(e) = serve_boot(stream, &export, &boots) {
                    tracing::info!("control connection ended: {e}");
                }
                boots.lock().expect("never poisoned").now -= 1;
            });
        }
        let mut boots = self.boots.lock().expect("never poisoned");
        if boots.now > 0 || self.export.connected_clients() > 0 {
            boots.idle_since = None;
        } else {
            boots.idle_since.get_or_insert_with(Instant::now);
        }
    }

    fn idle_for(&self) -> Option<Duration> {
        self.boots.lock().expect("never poisoned").idle_since.map(|t| t.elapsed())
    }

    /// Whether to end now: idle for `linger`, and, under the lock, still idle once any boot
    /// that connected meanwhile is accepted. Then the sockets are removed (before the lock
    /// goes), so the next boot starts a new server rather than reach this one.
    pub fn should_end(&self, linger: Duration, paths: &SharedPaths) -> bool {
        self.poll();
        if self.idle_for().is_none_or(|idle| idle < linger) {
            return false;
        }
        let _lock = match paths.flock(false) {
            Ok(Some(lock)) => lock,
            Ok(None) => return false,
            // The store (or its `run/`) is gone: no boot can reach this server any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::warn!("{}: {e}", paths.lock().display());
                return false;
            }
        };
        self.poll();
        if self.idle_for().is_none() {
            return false;
        }
        for path in [paths.nbd(), paths.control()] {
            let _ = std::fs::remove_file(path);
        }
        true
    }
}

fn serve_boot(stream: UnixStream, export: &Export, boots: &Mutex<Boots>) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut session = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request: Request = serde_json::from_str(line.trim()).map_err(io::Error::other)?;
        let profile = match request {
            Request::Attach { session: name } => {
                session = name;
                Vec::new()
            }
            Request::Report { profile_until_ms } => {
                profile_until_ms.map_or_else(Vec::new, |until| export.session_profile(&session, until))
            }
        };
        let report = Report {
            pid: std::process::id(),
            image: export.image().hex(),
            boots: boots.lock().expect("never poisoned").total,
            session: export.session_stats(&session),
            server: export.stats(),
            profile,
        };
        let mut out = serde_json::to_vec(&report).map_err(io::Error::other)?;
        out.push(b'\n');
        writer.write_all(&out)?;
    }
}

/// A boot's side: its control connection.
pub struct ControlClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the server at `socket` and attaches `session`, waiting `timeout` at most
    /// for the answer (a server just started answers once it has opened the image).
    pub fn attach(socket: &Path, session: &str, timeout: Duration) -> io::Result<(ControlClient, Report)> {
        let stream = UnixStream::connect(crate::fileio::SocketPath::new(socket)?.path())?;
        stream.set_read_timeout(Some(timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut client = ControlClient { stream, reader };
        let report = client.ask(&Request::Attach { session: session.to_string() })?;
        Ok((client, report))
    }

    /// The server's report, as of now, with the session's profile up to `profile_until_ms`.
    pub fn report(&mut self, profile_until_ms: Option<u64>) -> io::Result<Report> {
        self.ask(&Request::Report { profile_until_ms })
    }

    fn ask(&mut self, request: &Request) -> io::Result<Report> {
        let mut out = serde_json::to_vec(request).map_err(io::Error::other)?;
        out.push(b'\n');
        self.stream.write_all(&out)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        serde_json::from_str(line.trim()).map_err(io::Error::other)
    }

    /// Whether the server is gone: the connection has ended (the server never writes
    /// unasked, so anything to read is its end).
    pub fn gone(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a non-blocking peek of one byte into a local buffer of that size.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;
    use crate::store::Store;

    /// A server over a real store's image: boots attach and get reports; it ends only once
    /// idle for the linger, never while a boot is attached or another holds the lock, and
    /// removes its sockets when it does.
    #[test]
    fn a_shared_server_ends_only_when_idle_and_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::write(&rootfs, vec![7u8; 200_000]).unwrap();
        let id = store.put_image(&rootfs, &[], Default::default()).unwrap();
        let export = Arc::new(Export::from_store(&store, &id, 1 << 20).unwrap());
        let paths = SharedPaths::new(dir.path(), &store.location(), &id);
        std::fs::write(paths.nbd(), b"").unwrap();
        let listener = UnixListener::bind(paths.control()).unwrap();
        let control = ControlServer::adopt(listener.into_raw_fd(), export).unwrap();
        let linger = Duration::from_millis(100);

        // Accepted while the server polls, as its accept loop does.
        let attached = std::thread::scope(|s| {
            let client = s.spawn(|| ControlClient::attach(&paths.control(), "s1", Duration::from_secs(5)));
            while !client.is_finished() {
                control.poll();
                std::thread::sleep(Duration::from_millis(5));
            }
            client.join().unwrap()
        });
        let (mut client, report) = attached.unwrap();
        assert_eq!((report.image, report.boots, report.pid), (id.hex(), 1, std::process::id()));
        assert_eq!(report.server.size, 200_000);
        assert!(!client.gone());
        std::thread::sleep(linger * 2);
        assert!(!control.should_end(Duration::ZERO, &paths), "a boot is attached");
        assert_eq!(client.report(Some(0)).unwrap().session, SessionStats::default());
        drop(client);

        std::thread::sleep(Duration::from_millis(50));
        control.poll();
        let lock = paths.flock(true).unwrap();
        std::thread::sleep(linger * 2);
        assert!(!control.should_end(linger, &paths), "the lock is held by a boot");
        drop(lock);
        assert!(control.should_end(linger, &paths));
        assert!(!paths.nbd().exists() && !paths.control().exists(), "its sockets go with it");

        // A store removed under an idle server (a test's, a cache wiped) ends it too.
        let gone = SharedPaths::new(&dir.path().join("removed"), &store.location(), &id);
        assert!(control.should_end(linger, &gone));
    }
}
