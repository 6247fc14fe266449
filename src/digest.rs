//! Content digests (`sha256:<hex>`), as the OCI image spec names blobs, and a reader
//! that hashes what passes through it so a blob is verified while it streams.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::sync::mpsc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 digest. Other algorithms are rejected when parsed: every producer we read
/// (Docker, BuildKit, registries) names blobs by sha256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
pub struct ParseDigestError(pub String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("sha256:").and_then(hex_32).map(Digest).ok_or_else(|| ParseDigestError(s.to_string()))
    }
}

/// 64 lowercase hex digits as 32 bytes.
fn hex_32(hex_part: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A file's digest, named by its algorithm as OCI descriptors name theirs. A rootfs is
/// digested with BLAKE3, which hashes in parallel (`b3sum` checks it); sha256 of a
/// multi-gigabyte image would cost seconds on one core.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileDigest {
    Sha256(Digest),
    Blake3([u8; 32]),
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileDigest::Sha256(d) => fmt::Display::fmt(d, f),
            FileDigest::Blake3(b) => write!(f, "blake3:{}", hex::encode(b)),
        }
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for FileDigest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("blake3:") {
            Some(hex_part) => {
                hex_32(hex_part).map(FileDigest::Blake3).ok_or_else(|| ParseDigestError(s.to_string()))
            }
            None => s.parse().map(FileDigest::Sha256),
        }
    }
}

impl Serialize for FileDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// sha256 on a thread of its own: `update` copies the bytes and hands them over in batches,
/// so a layer's hashing runs beside its decompression instead of after it, on whichever core
/// is free. A layer is hashed twice (blob and tar) and sha256 is about a third of the work.
pub struct BackgroundHasher {
    batch: Vec<u8>,
    to_hasher: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Batches hashed, to be filled again.
    returned: mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Digest>>,
}

/// Bytes handed to the hashing thread at a time.
const BATCH: usize = 1 << 20;

impl BackgroundHasher {
    pub fn new() -> Self {
        let (to_hasher, batches) = mpsc::sync_channel::<Vec<u8>>(4);
        let (give_back, returned) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut hasher = Hasher::new();
            for batch in batches {
                hasher.update(&batch);
                let _ = give_back.send(batch);
            }
            hasher.finish()
        });
        BackgroundHasher {
            batch: Vec::with_capacity(BATCH),
            to_hasher: Some(to_hasher),
            returned,
            thread: Some(thread),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min(BATCH - self.batch.len());
            self.batch.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.batch.len() == BATCH {
                self.send();
            }
        }
    }

    fn send(&mut self) {
        let mut next = self.returned.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
        next.clear();
        let full = std::mem::replace(&mut self.batch, next);
        // The thread only stops when the sender is dropped.
        let _ = self.to_hasher.as_ref().expect("sender lives until finish").send(full);
    }

    pub fn finish(mut self) -> Digest {
        if !self.batch.is_empty() {
            self.send();
        }
        drop(self.to_hasher.take());
        let thread = self.thread.take().expect("joined once");
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Default for BackgroundHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BackgroundHasher {
    fn drop(&mut self) {
        drop(self.to_hasher.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Hashes (on a thread of its own) and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: BackgroundHasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: BackgroundHasher::new(), count: 0 }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read, and the byte count.
    pub fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_hashing_equals_hashing() {
        let bytes: Vec<u8> = (0..3 * BATCH + 12345).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = BackgroundHasher::new();
        for piece in bytes.chunks(100_000) {
            h.update(piece);
        }
        assert_eq!(h.finish(), Digest::of(&bytes));
        assert_eq!(BackgroundHasher::new().finish(), Digest::of(b""));
    }

    #[test]
    fn file_digests_name_their_algorithm() {
        let b3 = FileDigest::Blake3([0xab; 32]);
        assert_eq!(b3.to_string(), format!("blake3:{}", "ab".repeat(32)));
        assert_eq!(b3.to_string().parse::<FileDigest>().unwrap(), b3);
        let sha = FileDigest::Sha256(Digest::of(b""));
        assert_eq!(sha.to_string().parse::<FileDigest>().unwrap(), sha);
        assert!("blake3:AB".parse::<FileDigest>().is_err());
        assert!("md5:00".parse::<FileDigest>().is_err());
    }

    #[test]
    fn parses_and_prints_round_trip() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_other_algorithms_and_bad_hex() {
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:zz".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64)).parse::<Digest>().is_err());
    }

    #[test]
    fn hashing_reader_matches_one_shot() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (d, n) = r.finish();
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of(b"hello world"));
    }
}
