//! Where the emitter writes: positional writes to a file, or to memory in unit tests.
//!
//! The image is written out of order (data in parallel, metadata after), so the sink is a
//! positional writer rather than a stream. Zero blocks are never written: the sink starts
//! zeroed (a fresh sparse file), which keeps images sparse and the emitter fast.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::Mutex;

/// A byte sink addressed by offset, shared between threads.
pub trait WriteAt: Sync {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the sink `len` bytes of zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the sink `len` bytes long, keeping the bytes it has below `len`; what was past
    /// its end reads as zeros.
    fn grow(&self, len: u64) -> io::Result<()>;

    /// Copies `len` bytes of `src` from `src_offset` to `offset`.
    fn copy_from(&self, src: &File, src_offset: u64, len: u64, offset: u64) -> io::Result<()> {
        copy_through_buffer(self, src, src_offset, len, offset)
    }
}

impl WriteAt for File {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // Truncating to zero first drops any old bytes; the regrown file is a hole. Only when
        // there are old bytes: ext4 flushes a file truncated to zero when it is closed
        // (auto_da_alloc), which would write the whole image out synchronously.
        if self.metadata()?.len() != 0 {
            std::fs::File::set_len(self, 0)?;
        }
        std::fs::File::set_len(self, len)
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    /// copy_file_range: the bytes move between page caches without a trip through user
    /// space. Falls back to a buffer where the kernel cannot (other filesystems, old kernels).
    fn copy_from(&self, src: &File, src_offset: u64, len: u64, offset: u64) -> io::Result<()> {
        let (mut off_in, mut off_out) = (src_offset as libc::loff_t, offset as libc::loff_t);
        let mut left = len;
        while left > 0 {
            // SAFETY: both descriptors are open for the call; the offsets are valid pointers to
            // locals the kernel advances.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    self.as_raw_fd(),
                    &mut off_out,
                    left as usize,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                        let done = len - left;
                        copy_through_buffer(self, src, src_offset + done, left, offset + done)
                    }
                    _ => Err(err),
                };
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
        }
        Ok(())
    }
}

fn copy_through_buffer<W: WriteAt + ?Sized>(
    out: &W,
    src: &File,
    src_offset: u64,
    len: u64,
    offset: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], src_offset + done)?;
        out.write_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

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
