//! A Network Block Device server that serves a stored image's rootfs straight from the
//! store's chunks: what `diskc boot ID` attaches QEMU to, and what `diskc serve` offers any
//! other hypervisor. A VM then costs what it reads, not the image's size: no copy of the
//! rootfs is made, chunks are decompressed on first read, and every client of the image
//! shares one bounded cache.
//!
//! - [`protocol`]: the wire format (fixed-newstyle handshake, options, requests, replies),
//!   after the NBD protocol document; no I/O of its own.
//! - [`export`]: the image's rootfs as byte ranges over chunks; [`ChunkSource`], the seam
//!   where chunks come from (the local store, or one reading through to a remote store).
//! - [`cache`]: decompressed chunks shared by the export's clients, bounded by bytes.
//! - [`server`]: the listening socket and one thread per client.
//! - [`control`]: one server shared by the boots of an image: sessions, reports, lingering.
//!
//! The export is read-only (`NBD_FLAG_READ_ONLY`; writes get `EPERM`): nothing a VM writes
//! reaches the store, its writes go to an overlay QEMU keeps (`snapshot=on`).

pub mod cache;
pub mod control;
pub mod export;
pub mod protocol;
pub mod server;

use std::io;

use crate::error::{Classify, ErrorKind};
use crate::store::StoreError;

pub use cache::CacheStats;
pub use control::{ControlClient, ControlServer, Report, SharedPaths};
pub use export::{ChunkSource, Export, ExportStats, ReadError, SessionStats};
pub use server::{session_export_name, Address, Server};

/// Decompressed chunks an export keeps by default: enough for what a VM reads to boot a
/// large image, small beside the VMs it serves.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("invalid NBD address {0:?}: {1}")]
    BadAddress(String, String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, #[source] io::Error),
    #[error("accepting NBD clients: {0}")]
    Accept(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for NbdError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            NbdError::BadAddress(..) => ErrorKind::Usage,
            NbdError::Bind(..) | NbdError::Accept(_) => ErrorKind::Environment,
            NbdError::Store(e) => e.error_kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::protocol::{self as p, Request};
    use super::*;
    use crate::store::Store;

    #[test]
    fn addresses_parse_and_print() {
        for text in ["unix:/run/x.sock", "tcp:127.0.0.1:10809", "fd:5"] {
            assert_eq!(text.parse::<Address>().unwrap().to_string(), text);
        }
        for bad in ["", "unix:", "tcp:localhost", "fd:1", "/path", "nbd://x"] {
            let err = bad.parse::<Address>().unwrap_err();
            assert_eq!(err.error_kind(), ErrorKind::Usage, "{bad}: {err}");
        }
    }

    /// A real server on a unix socket over a real store, driven by the protocol's client
    /// half: reads match the stored file, writes are refused, bad ranges are EINVAL, and two
    /// clients at once share one cache.
    #[test]
    fn serves_a_stored_rootfs_to_clients_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let rootfs = dir.path().join("rootfs");
        let mut bytes: Vec<u8> =
            (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        bytes[1_000_000..1_500_000].fill(0);
        std::fs::write(&rootfs, &bytes).unwrap();
        let id = store.put_image(&rootfs, &[], Default::default()).unwrap();
        let export = Arc::new(Export::from_store(&store, &id, 64 << 20).unwrap());
        let socket = dir.path().join("nbd.sock");
        let server = Server::bind(&Address::Unix(socket.clone()), export.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = stop.clone();
        let running = std::thread::spawn(move || server.serve(&|| stopper.load(Ordering::SeqCst)).unwrap());

        let client = |name: &str| {
            let conn = UnixStream::connect(&socket).unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            let info = p::client_handshake(&mut r, &mut w, name).unwrap();
            assert_eq!(info.size, bytes.len() as u64);
            assert_ne!(info.flags & p::NBD_FLAG_READ_ONLY, 0);
            (r, w)
        };
        std::thread::scope(|s| {
            for name in [String::new(), id.hex()] {
                let (bytes, client) = (&bytes, &client);
                s.spawn(move || {
                    let (mut r, mut w) = client(&name);
                    for (cookie, offset) in (0..bytes.len() as u64).step_by(1 << 20).enumerate() {
                        let length = (1u64 << 20).min(bytes.len() as u64 - offset) as u32;
                        let req = Request {
                            flags: 0,
                            kind: p::NBD_CMD_READ,
                            cookie: cookie as u64,
                            offset,
                            length,
                        };
                        p::write_request(&mut w, &req).unwrap();
                        assert_eq!(p::read_simple_reply(&mut r).unwrap(), (0, cookie as u64));
                        let mut got = vec![0u8; length as usize];
                        r.read_exact(&mut got).unwrap();
                        assert!(got == bytes[offset as usize..][..length as usize], "bytes at {offset}");
                    }
                });
            }
        });
        let (mut r, mut w) = client("");
        let ask = |w: &mut UnixStream, kind, offset, length| {
            p::write_request(w, &Request { flags: 0, kind, cookie: 9, offset, length }).unwrap();
        };
        ask(&mut w, p::NBD_CMD_READ, bytes.len() as u64 - 10, 11);
        assert_eq!(p::read_simple_reply(&mut r).unwrap().0, p::EINVAL);
        ask(&mut w, p::NBD_CMD_WRITE, 0, 3);
        std::io::Write::write_all(&mut w, b"abc").unwrap();
        assert_eq!(p::read_simple_reply(&mut r).unwrap().0, p::EPERM);
        ask(&mut w, 99, 0, 0);
        assert_eq!(p::read_simple_reply(&mut r).unwrap().0, p::EINVAL);
        ask(&mut w, p::NBD_CMD_DISC, 0, 0);
        assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0, "the server closes after NBD_CMD_DISC");
        let conn = UnixStream::connect(&socket).unwrap();
        let err = p::client_handshake(&mut BufReader::new(conn.try_clone().unwrap()), &mut &conn, "other")
            .unwrap_err();
        assert!(err.to_string().contains("refused export"), "{err}");

        stop.store(true, Ordering::SeqCst);
        running.join().unwrap();
        assert!(!socket.exists(), "the socket goes with the server");
        let stats = export.stats();
        assert_eq!(stats.clients, 3);
        // Both clients read every chunk; each chunk was decompressed once between them.
        let chunks = store.image(&id).unwrap().rootfs.file.chunks.len() as u64;
        assert_eq!(stats.cache.loads, chunks, "{stats:?}");
        assert_eq!(stats.read_bytes, 2 * bytes.len() as u64);
    }

    /// A boot profile warms the cache: the chunks it names are loaded once, in its order, and
    /// the reads that follow are hits; names the image lacks are passed over.
    #[test]
    fn a_boot_profile_warms_the_cache_ahead_of_the_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let rootfs = dir.path().join("rootfs");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..2_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&rootfs, &bytes).unwrap();
        let id = store.put_image(&rootfs, &[], Default::default()).unwrap();
        let chunks = store.image(&id).unwrap().rootfs.file.chunks;
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        let export = Export::from_store(&store, &id, 64 << 20).unwrap();
        let profile: Vec<_> = [2, 0, 1]
            .iter()
            .map(|&i| chunks[i].digest)
            .chain([crate::digest::Digest::of(b"elsewhere")])
            .collect();
        assert_eq!(export.warm(&profile), 3);
        assert_eq!(export.stats().cache.loads, 3);
        for i in [0, 1, 2] {
            let mut buf = vec![0u8; chunks[i].size as usize];
            export.read(chunks[i].offset, &mut buf).unwrap();
            assert!(buf == bytes[chunks[i].offset as usize..][..buf.len()]);
        }
        let stats = export.stats().cache;
        assert_eq!((stats.loads, stats.hits), (3, 3), "{stats:?}");
    }
}
