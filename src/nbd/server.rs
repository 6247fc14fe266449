//! The server: a listening socket (unix, TCP, or one inherited from `diskc boot`), one
//! thread per client, every client of the export sharing its cache. Each client's requests
//! are answered in order with simple replies; reads are checked against the export's size,
//! writes refused with `EPERM` (the export is read-only: a VM's writes go to its own
//! overlay), anything else `EINVAL`.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::export::Export;
use super::protocol::{self as p, ExportInfo, Negotiated, Request};
use super::NbdError;
use crate::fileio::SocketPath;

/// How often the accept loop looks at its stop condition.
const TICK: Duration = Duration::from_millis(50);

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `tcp:HOST:PORT`
    Tcp(SocketAddr),
    /// `fd:N`: a listening unix socket inherited from the parent (how `diskc boot` starts
    /// its server, so that QEMU can connect before the server has started).
    Inherited(RawFd),
}

impl FromStr for Address {
    type Err = NbdError;

    fn from_str(text: &str) -> Result<Address, NbdError> {
        let bad = |reason: &str| NbdError::BadAddress(text.to_string(), reason.to_string());
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("no socket path after unix:"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            return addr
                .parse()
                .map(Address::Tcp)
                .map_err(|_| bad("expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:10809"));
        }
        if let Some(fd) = text.strip_prefix("fd:") {
            return fd
                .parse()
                .ok()
                .filter(|&fd| fd > 2)
                .map(Address::Inherited)
                .ok_or_else(|| bad("expected fd:N, N > 2"));
        }
        Err(bad("expected unix:PATH or tcp:HOST:PORT"))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "tcp:{addr}"),
            Address::Inherited(fd) => write!(f, "fd:{fd}"),
        }
    }
}

enum Listener {
    Unix(UnixListener, Option<PathBuf>),
    Tcp(TcpListener),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening server for one export.
pub struct Server {
    listener: Listener,
    export: Arc<Export>,
}

/// Binds a unix socket at `path`, replacing a stale one (a socket file nobody listens on,
/// left by a server that was killed) but never a live server's or any other file.
///
/// The socket is bound under a name of its own and renamed into place, so `path` appears
/// only once the socket listens: a client that waits for the path never finds it refusing.
fn bind_unix(path: &Path) -> Result<UnixListener, NbdError> {
    use std::os::unix::fs::FileTypeExt;
    let failed = |e: io::Error| NbdError::Bind(format!("unix:{}", path.display()), e);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let stale = meta.file_type().is_socket()
            && UnixStream::connect(SocketPath::new(path).map_err(failed)?.path()).is_err();
        if !stale {
            return Err(failed(io::Error::from(io::ErrorKind::AddrInUse)));
        }
    }
    let name = path.file_name().ok_or_else(|| failed(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let temp = path.with_file_name(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(SocketPath::new(&temp).map_err(failed)?.path()).map_err(failed)?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(failed(e));
    }
    Ok(listener)
}

impl Server {
    pub fn bind(address: &Address, export: Arc<Export>) -> Result<Server, NbdError> {
        let listener = match address {
            Address::Unix(path) => Listener::Unix(bind_unix(path)?, Some(path.clone())),
            Address::Tcp(addr) => {
                Listener::Tcp(TcpListener::bind(addr).map_err(|e| NbdError::Bind(address.to_string(), e))?)
            }
            Address::Inherited(fd) => {
                // SAFETY: fstat on a descriptor number only reads its status; a closed or
                // non-socket descriptor is refused before it is adopted.
                let is_socket = unsafe {
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::fstat(*fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                };
                if !is_socket {
                    return Err(NbdError::Bind(address.to_string(), io::Error::other("not an open socket")));
                }
                // SAFETY: the descriptor is an open socket the parent handed us to own.
                Listener::Unix(unsafe { UnixListener::from_raw_fd(*fd) }, None)
            }
        };
        Ok(Server { listener, export })
    }

    /// The TCP port bound (useful with port 0).
    pub fn local_port(&self) -> Option<u16> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix(..) => None,
        }
    }

    /// Accepts clients, each on a thread of its own, until `stop` says so.
    pub fn serve(&self, stop: &dyn Fn() -> bool) -> Result<(), NbdError> {
        let nonblocking = match &self.listener {
            Listener::Unix(l, _) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
        };
        nonblocking.map_err(NbdError::Accept)?;
        while !stop() {
            let accepted = match &self.listener {
                Listener::Unix(l, _) => {
                    l.accept().and_then(|(s, _)| s.set_nonblocking(false).map(|()| Conn::Unix(s)))
                }
                Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_nodelay(true)?;
                    s.set_nonblocking(false).map(|()| Conn::Tcp(s))
                }),
            };
            match accepted {
                Ok(conn) => {
                    let export = self.export.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = serve_client(conn, &export) {
                            tracing::info!("nbd client ended: {e}");
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(TICK),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A client that went away before we accepted it, or a passing shortage.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE)) =>
                {
                    tracing::warn!("accept: {e}");
                    std::thread::sleep(TICK);
                }
                Err(e) => return Err(NbdError::Accept(e)),
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The names a client may ask for: the image id, "" (the default export), and
/// `<id>.<session>`: the same image, with what its clients read counted apart (how each
/// boot sharing a server learns what its own VM read).
fn export_info(export: &Export, name: &str) -> Option<ExportInfo> {
    session_of(export, name).map(|_| ExportInfo {
        size: export.size(),
        flags: p::NBD_FLAG_HAS_FLAGS | p::NBD_FLAG_READ_ONLY | p::NBD_FLAG_CAN_MULTI_CONN,
    })
}

/// `Some(session)` for a name of this export (`Some("")` without a session), else `None`.
fn session_of<'a>(export: &Export, name: &'a str) -> Option<&'a str> {
    let id = export.image().hex();
    if name.is_empty() || name == id {
        return Some("");
    }
    let session = name.strip_prefix(id.as_str())?.strip_prefix('.')?;
    let valid = (1..=64).contains(&session.len())
        && session.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(session)
}

/// The export name of `session` of `export`'s image.
pub fn session_export_name(image: &crate::store::ImageId, session: &str) -> String {
    format!("{}.{session}", image.hex())
}

/// Counts a client while it is in transmission.
struct Connected<'a>(&'a Export);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.client_left();
    }
}

fn serve_client(conn: Conn, export: &Export) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, conn.try_clone()?);
    let mut writer = BufWriter::with_capacity(256 << 10, conn);
    let names = [export.image().hex()];
    let lookup = |name: &str| export_info(export, name);
    let name = match p::server_handshake(&mut reader, &mut writer, &lookup, &names)? {
        Negotiated::Closed => return Ok(()),
        Negotiated::Export(name) => name,
    };
    let session = session_of(export, &name).unwrap_or_default();
    export.client_connected();
    let _connected = Connected(export);
    let mut buf = Vec::new();
    while let Some(req) = p::read_request(&mut reader)? {
        match req.kind {
            p::NBD_CMD_DISC => return Ok(()),
            p::NBD_CMD_READ => {
                let error = check_read(&req, export.size());
                if error != 0 {
                    p::write_simple_reply(&mut writer, req.cookie, error, &[])?;
                    continue;
                }
                buf.resize(req.length as usize, 0);
                let read = export.read(req.offset, &mut buf);
                if !session.is_empty() {
                    export.count_session_read(session, req.offset, buf.len() as u64, read.is_err());
                }
                match read {
                    Ok(()) => p::write_simple_reply(&mut writer, req.cookie, 0, &buf)?,
                    Err(_) => p::write_simple_reply(&mut writer, req.cookie, p::EIO, &[])?,
                }
            }
            p::NBD_CMD_WRITE => {
                // The payload follows the header: read past it to stay in step.
                io::copy(&mut (&mut reader).take(u64::from(req.length)), &mut io::sink())?;
                p::write_simple_reply(&mut writer, req.cookie, p::EPERM, &[])?;
            }
            p::NBD_CMD_TRIM | p::NBD_CMD_WRITE_ZEROES => {
                p::write_simple_reply(&mut writer, req.cookie, p::EPERM, &[])?
            }
            _ => p::write_simple_reply(&mut writer, req.cookie, p::EINVAL, &[])?,
        }
    }
    Ok(())
}

/// The error a read request gets before any data is read, 0 if none.
fn check_read(req: &Request, size: u64) -> u32 {
    if req.length > p::MAX_REQUEST_BYTES {
        return p::EOVERFLOW;
    }
    // Reads take no flags but FUA and DF, both meaningless without writes or chunking.
    let known_flags = 1 << 0 | 1 << 2;
    if req.flags & !known_flags != 0
        || req.offset.checked_add(u64::from(req.length)).is_none_or(|end| end > size)
    {
        return p::EINVAL;
    }
    0
}
