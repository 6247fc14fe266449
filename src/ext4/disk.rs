//! Where the emitter writes: any positional sink ([`WriteAt`], from [`crate::fileio`]): the
//! image file, or memory in unit tests.
//!
//! The image is written out of order (data in parallel, metadata after), so the sink is a
//! positional writer rather than a stream. Zero blocks are never written: the sink starts
//! zeroed (a fresh sparse file), which keeps images sparse and the emitter fast.

use std::io;
use std::sync::Mutex;

pub use crate::fileio::WriteAt;

/// An image held in memory, for tests that inspect bytes without touching the disk.
#[derive(Default)]
pub struct MemDisk {
    pub bytes: Mutex<Vec<u8>>,
}

impl WriteAt for MemDisk {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset as usize + buf.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        bytes.clear();
        bytes.resize(len as usize, 0);
        Ok(())
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).resize(len as usize, 0);
        Ok(())
    }
}

/// Little-endian field writers: ext4 structures are little-endian (jbd2's are big-endian,
/// see `journal.rs`).
pub(crate) fn put_u8(buf: &mut [u8], at: usize, v: u8) {
    buf[at] = v;
}

pub(crate) fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

pub(crate) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("four bytes"))
}
