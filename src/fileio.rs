//! Low-level file I/O, in one place: where a file's data is (SEEK_DATA/SEEK_HOLE), which
//! blocks are all zeros, the one sparse writer, punching holes, kernel copies
//! (copy_file_range), positional reads, syncs, and opening source files without touching
//! them.
//!
//! The spool, the ext4 writer, the store and the image sources all read and write large
//! sparse files at positions, often from several threads at once; they share these helpers
//! so that each system call, its fallback and its SAFETY argument exist once. Every function
//! returns a plain `io::Error`: the caller knows which file it was and names it in its own
//! error.
//!
//! Zeros are found in whole [`BLOCK_SIZE`] blocks aligned to the file, the image's block: a
//! block of zeros is never written, so it stays a hole.

use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::layout::BLOCK_SIZE;

/// A byte sink addressed by offset, shared between threads: the image file, or memory in
/// tests. Data is written out of order (in parallel, metadata after data), so it is a
/// positional writer rather than a stream.
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
            File::set_len(self, 0)?;
        }
        File::set_len(self, len)
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn copy_from(&self, src: &File, src_offset: u64, len: u64, offset: u64) -> io::Result<()> {
        copy_range(src, src_offset, self, offset, len)
    }
}

/// Copies the data `extents` of `src` to `dest`, each moved by `shift` (dest offset = src
/// offset + shift), in pieces of at most 32 MiB on every core: an in-kernel copy between page
/// caches costs a core per ~0.6 GB/s here, and one layer's data is often most of an image's.
/// The pieces are copied in any order: `src` and `dest` must not be one file whose source
/// and destination ranges overlap.
pub fn copy_extents(src: &File, extents: &[Range<u64>], dest: &File, shift: i64) -> io::Result<()> {
    use rayon::prelude::*;
    const PIECE: u64 = 32 << 20;
    let pieces: Vec<Range<u64>> = extents
        .iter()
        .flat_map(|e| (e.start..e.end).step_by(PIECE as usize).map(move |at| at..(at + PIECE).min(e.end)))
        .collect();
    pieces.into_par_iter().try_for_each(|p| {
        let to = p.start.checked_add_signed(shift).ok_or_else(|| io::Error::other("copy below offset 0"))?;
        copy_range(src, p.start, dest, to, p.end - p.start)
    })
}

/// Copies `len` bytes of `src` at `src_offset` to `dest` at `dest_offset` with
/// copy_file_range: the bytes move between page caches without a trip through user space.
/// Falls back to a buffer where the kernel cannot (other filesystems, old kernels). `src` and
/// `dest` may be the same file if the ranges do not overlap.
pub fn copy_range(src: &File, src_offset: u64, dest: &File, dest_offset: u64, len: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (src_offset as libc::loff_t, dest_offset as libc::loff_t);
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open for the call; the offsets are valid pointers to
        // locals the kernel advances.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dest.as_raw_fd(),
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
                    copy_through_buffer(dest, src, src_offset + done, left, dest_offset + done)
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

/// `ranges` sorted, and merged where they touch or overlap.
pub fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// The byte ranges of `file` (of `size` bytes) that hold data, found with
/// `SEEK_DATA`/`SEEK_HOLE`. A file system without them reports the whole file as data,
/// which is still correct, only slower.
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<Range<u64>>> {
    data_extents_in(file, 0..size)
}

/// The byte ranges of `file` within `range` that hold data (see [`data_extents`]).
pub fn data_extents_in(file: &File, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
    let (from, size) = (range.start, range.end);
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor `file` keeps open for the call; it reads no memory
        // of ours.
        let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // ENXIO: no data at or after `offset`.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        }
    };
    let mut extents: Vec<Range<u64>> = Vec::new();
    let mut at = from;
    while at < size {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(Some(start)) => start,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(std::iter::once(from..size).collect())
            }
            Err(e) => return Err(e),
        };
        if start >= size {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        extents.push(start..end);
        at = end;
    }
    Ok(extents)
}

/// Whether every byte is zero; compares word-sized pieces, which the compiler vectorizes.
pub fn is_zero(bytes: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe {
        // SAFETY: any byte pattern is a valid u64; align_to only reinterprets the aligned middle.
        bytes.align_to::<u64>()
    };
    prefix.iter().all(|&b| b == 0)
        && words.iter().fold(0, |acc, &w| acc | w) == 0
        && suffix.iter().all(|&b| b == 0)
}

/// The stretches of `data` that hold a nonzero byte, in whole blocks, adjacent blocks
/// merged: index ranges into `data`. Blocks are aligned to the file `data` sits in at
/// `offset`, so the first and last block may be partial.
pub fn nonzero_runs(data: &[u8], offset: u64) -> impl Iterator<Item = Range<usize>> + '_ {
    let block_end = move |i: usize| {
        // The first block boundary after byte `i`.
        let next = ((offset + i as u64) / BLOCK_SIZE + 1) * BLOCK_SIZE;
        (next - offset).min(data.len() as u64) as usize
    };
    let zero_block = move |i: usize| is_zero(&data[i..block_end(i)]);
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < data.len() && zero_block(i) {
            i = block_end(i);
        }
        if i == data.len() {
            return None;
        }
        let start = i;
        while i < data.len() && !zero_block(i) {
            i = block_end(i);
        }
        Some(start..i)
    })
}

/// The one sparse writer: writes `data` at `offset` of `out`, leaving out every block that
/// is all zeros. The sink must read as zeros there already (a fresh or pre-sized file), so
/// what is left out stays a hole. Each run of nonzero blocks is one write.
pub fn write_sparse<W: WriteAt + ?Sized>(out: &W, data: &[u8], offset: u64) -> io::Result<()> {
    for run in nonzero_runs(data, offset) {
        out.write_at(&data[run.clone()], offset + run.start as u64)?;
    }
    Ok(())
}

/// Makes `range` of `file` read as zeros: a hole where the filesystem can punch one, zeros
/// written where it cannot.
pub fn punch_hole(file: &File, range: Range<u64>) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let (offset, len) = (range.start as libc::off_t, (range.end - range.start) as libc::off_t);
    // SAFETY: fallocate on a descriptor `file` keeps open for the call; it reads no memory
    // of ours.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } == 0 {
        return Ok(());
    }
    const PIECE: u64 = 1 << 20;
    let zeros = vec![0u8; PIECE.min(range.end - range.start) as usize];
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(PIECE);
        file.write_all_at(&zeros[..n as usize], pos)?;
        pos += n;
    }
    Ok(())
}

/// Opens a source file for reading without updating its atime (O_NOATIME), so making an
/// image does not change its source; falls back to a plain open where that is not permitted
/// (files of other owners without CAP_FOWNER).
pub fn open_quietly(path: &Path) -> io::Result<File> {
    match File::options().read(true).custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
}

/// A path as the C string a system call takes; a path holding a NUL is invalid input.
pub fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Exchanges two paths atomically (both must exist): `renameat2(RENAME_EXCHANGE)`.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (c_path(a)?, c_path(b)?);
    // SAFETY: both are valid NUL-terminated paths, relative to the working directory.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The names in a directory (without `.` and `..`), listed without updating the directory's
/// atime (O_NOATIME where permitted), so that reading a source tree does not change it.
pub fn read_dir_quietly(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let opened = File::options().read(true).custom_flags(flags | libc::O_NOATIME).open(dir);
    let file = match opened {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            File::options().read(true).custom_flags(flags).open(dir)?
        }
        other => other?,
    };
    // SAFETY: fdopendir takes ownership of the descriptor on success (into_raw_fd hands it
    // over); the stream is closed below, and each dirent is read before the next readdir.
    unsafe {
        use std::os::fd::IntoRawFd;
        let fd = file.into_raw_fd();
        let stream = libc::fdopendir(fd);
        if stream.is_null() {
            let err = io::Error::last_os_error();
            libc::close(fd);
            return Err(err);
        }
        let mut names = Vec::new();
        let result = loop {
            *libc::__errno_location() = 0;
            let entry = libc::readdir64(stream);
            if entry.is_null() {
                let errno = *libc::__errno_location();
                break if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(errno)) };
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes();
            if name != b"." && name != b".." {
                names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
            }
        };
        libc::closedir(stream);
        result.map(|()| names)
    }
}

/// Reads one byte range of a file with positioned reads (`pread`), so that many readers of
/// one shared file (`&File`, `Arc<File>`) need neither seeking nor a lock.
pub struct RangeReader<F> {
    file: F,
    pos: u64,
    end: u64,
}

impl<F: Borrow<File>> RangeReader<F> {
    pub fn new(file: F, range: Range<u64>) -> Self {
        RangeReader { file, pos: range.start, end: range.end }
    }
}

impl<F: Borrow<File>> Read for RangeReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.borrow().read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ends inside the range being read",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Flushes the whole file system holding `path` (the data and metadata of every file) and
/// waits for it: one call where an fsync per file would cost seconds for thousands of files.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    // SAFETY: syncfs on a descriptor `dir` keeps open for the call; it reads no memory of ours.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes a file's data, or a directory's entries (a rename into it), durable: fsync.
pub fn sync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Starts writing a file's dirty pages out without waiting for it (sync_file_range), so that
/// a later fsync finds most of the work done. It can block for a while on a large file (the
/// filesystem allocates the delayed blocks first): call it on a thread of its own.
pub fn start_writeback(file: &File) -> io::Result<()> {
    // SAFETY: sync_file_range on a descriptor `file` keeps open for the call only schedules
    // writeback; it reads no memory of ours.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A unix socket's path as `bind`/`connect` can take it, whatever its length: a socket
/// address holds 108 bytes of path, so a longer one (a store deep in a home directory) is
/// named through a descriptor of its directory, `/proc/self/fd/N/NAME`, which stays open
/// as long as this value.
pub struct SocketPath {
    path: std::path::PathBuf,
    _dir: Option<File>,
}

/// What a socket address holds, less its terminating NUL.
const SOCKET_PATH_MAX: usize = 107;

impl SocketPath {
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        use std::os::unix::ffi::OsStrExt;
        if path.as_os_str().as_bytes().len() <= SOCKET_PATH_MAX {
            return Ok(SocketPath { path: path.to_path_buf(), _dir: None });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket path"));
        };
        let dir = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?;
        let path = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(SocketPath { path, _dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = BLOCK_SIZE as usize;

    #[test]
    fn copy_extents_moves_every_piece_by_the_shift_and_leaves_holes_alone() {
        const M: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let src =
            File::options().read(true).write(true).create_new(true).open(dir.path().join("src")).unwrap();
        // 70 MiB of data (three pieces), then one block further on.
        let big: Vec<u8> = (0..70 * M).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect();
        src.write_all_at(&big, 3 * M).unwrap();
        src.write_all_at(&[7; B], 100 * M).unwrap();
        let extents = data_extents(&src, src.metadata().unwrap().len()).unwrap();
        for shift in [5 * M as i64, -(3 * M as i64)] {
            let dest = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("dest"))
                .unwrap();
            copy_extents(&src, &extents, &dest, shift).unwrap();
            let at = |offset: u64| offset.checked_add_signed(shift).unwrap();
            let mut back = vec![0u8; big.len()];
            dest.read_exact_at(&mut back, at(3 * M)).unwrap();
            assert!(back == big, "shift {shift}");
            let mut block = [0u8; B];
            dest.read_exact_at(&mut block, at(100 * M)).unwrap();
            assert_eq!(block, [7; B]);
            let copied = data_extents(&dest, dest.metadata().unwrap().len()).unwrap();
            let expect: Vec<_> = extents.iter().map(|e| at(e.start)..at(e.end)).collect();
            assert_eq!(copied, expect, "shift {shift}: the holes between stay holes");
        }
        let below = File::create(dir.path().join("below")).unwrap();
        assert!(copy_extents(&src, &extents, &below, -(4 * M as i64)).is_err(), "nothing lands below 0");
    }

    #[test]
    fn nonzero_runs_are_whole_blocks_aligned_to_the_file() {
        let mut data = vec![0u8; 5 * B];
        data[10] = 1;
        data[2 * B] = 1;
        data[3 * B + B - 1] = 1;
        let runs: Vec<_> = nonzero_runs(&data, 0).collect();
        assert_eq!(runs, [0..B, 2 * B..4 * B]);
        // The same bytes 100 bytes into a block: blocks follow the file, so the first is
        // partial and the byte at the end of data block 3 falls into the file's block 4.
        let runs: Vec<_> = nonzero_runs(&data, 100).collect();
        assert_eq!(runs, [0..B - 100, 2 * B - 100..3 * B - 100, 4 * B - 100..5 * B - 100]);
        assert_eq!(nonzero_runs(&[], 0).count(), 0);
        assert_eq!(nonzero_runs(&[0; 3 * B], 7).count(), 0);
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one data extent: a list of one range
    fn sparse_write_skips_zero_blocks_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        file.set_len(5 * BLOCK_SIZE).unwrap();
        let mut data = vec![0u8; 3 * B];
        data[B + 7] = 9;
        // Starts mid-block, so the first piece is a partial block.
        write_sparse(&file, &data, 100).unwrap();
        let back = std::fs::read(&path).unwrap();
        let mut expect = vec![0u8; 5 * B];
        expect[100 + B + 7] = 9;
        assert_eq!(back, expect);
        let extents = data_extents(&file, 5 * BLOCK_SIZE).unwrap();
        assert_eq!(extents, vec![BLOCK_SIZE..2 * BLOCK_SIZE], "only the block with the nonzero byte is data");
    }

    #[test]
    fn a_punched_range_reads_as_zeros_and_is_no_longer_data() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&vec![7u8; 4 * B], 0).unwrap();
        punch_hole(&file, BLOCK_SIZE..3 * BLOCK_SIZE).unwrap();
        let mut back = vec![0u8; 4 * B];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..B].iter().all(|&b| b == 7) && back[3 * B..].iter().all(|&b| b == 7));
        assert!(is_zero(&back[B..3 * B]));
        assert_eq!(file.metadata().unwrap().len(), 4 * BLOCK_SIZE, "the size is kept");
    }

    #[test]
    fn a_kernel_copy_within_one_file_moves_the_bytes() {
        let file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..3 * B).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&bytes, 0).unwrap();
        copy_range(&file, 0, &file, 5 * BLOCK_SIZE, bytes.len() as u64).unwrap();
        let mut back = vec![0u8; bytes.len()];
        file.read_exact_at(&mut back, 5 * BLOCK_SIZE).unwrap();
        assert_eq!(back, bytes);
    }

    #[test]
    fn a_range_reader_reads_its_range_and_fails_where_the_file_ends() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(b"0123456789", 0).unwrap();
        let mut got = String::new();
        RangeReader::new(&file, 3..7).read_to_string(&mut got).unwrap();
        assert_eq!(got, "3456");
        let shared = std::sync::Arc::new(file);
        let err = RangeReader::new(shared, 8..20).read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_file_opened_quietly_reads_like_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"bytes").unwrap();
        let mut got = Vec::new();
        open_quietly(&path).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bytes");
        assert_eq!(open_quietly(&dir.path().join("absent")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_socket_path_longer_than_an_address_holds_binds_and_connects() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("server.sock");
        assert!(UnixListener::bind(&path).is_err(), "the kernel took a {}-byte path", path.as_os_str().len());
        let listener = UnixListener::bind(SocketPath::new(&path).unwrap().path()).unwrap();
        assert!(path.exists(), "bound somewhere else than {}", path.display());
        UnixStream::connect(SocketPath::new(&path).unwrap().path()).unwrap();
        listener.accept().unwrap();
    }
}
