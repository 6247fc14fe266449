//! Reading a host directory into a tree, as `diskc mkfs DIR` does: owners, modes, device
//! numbers, hard links (by device and inode number), xattrs of every namespace and
//! nanosecond times are kept as they are on disk, but for times ext4 cannot store (before
//! 1901-12-13 or after 2446-05-10, which tmpfs, XFS or btrfs can hold): those are clamped to
//! its range, with one warning per tree naming the first such file.
//!
//! File bytes stay on disk ([`HostFile`] names the file); which blocks hold data is found up
//! front, in parallel: the filesystem's own holes (SEEK_DATA/SEEK_HOLE), then a scan of the
//! data ranges for all-zero blocks, so zeros cost no blocks in the image.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::sparse::DataBlockScanner;
use super::{
    Content, DeviceNumber, Directory, FileData, FsTree, Metadata, Node, NodeId, NodeKind, Timestamp,
    TreeError, Xattrs, BLOCK_SIZE,
};
use crate::error::{Classify, ErrorKind};
use crate::fileio::{data_extents, open_quietly, read_dir_quietly};

/// A regular file of the host directory; read when the image is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFile {
    pub path: PathBuf,
}

impl Content for HostFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        open_quietly(&self.path)?.read_exact_at(buf, offset)
    }

    fn source_file(&self) -> Option<(&Path, u64)> {
        Some((&self.path, 0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Name { path: PathBuf, source: TreeError },
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
}

impl Classify for HostError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            HostError::Io { source, .. } => ErrorKind::of_io(source),
            _ => ErrorKind::BadInput,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError::Io { path: path.to_path_buf(), source }
}

/// Reads the directory `root` (not following symlinks) into a tree.
pub fn read_tree(root: &Path) -> Result<FsTree<HostFile>, HostError> {
    let meta = std::fs::symlink_metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        return Err(HostError::NotADirectory(root.to_path_buf()));
    }
    let mut tree = FsTree::new(metadata_of(root, &meta)?);
    let mut links: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut files: Vec<NodeId> = Vec::new();
    // Breadth first: the directories of one level are listed and their entries examined in
    // parallel; the tree is then built from the results in order, so it does not depend on
    // which thread finished first.
    let mut level = vec![(root.to_path_buf(), FsTree::<HostFile>::ROOT)];
    let mut clamped = ClampedTimes::default();
    clamped.note(root, &mut tree.get_mut(FsTree::<HostFile>::ROOT).meta);
    while !level.is_empty() {
        let listed: Vec<Result<Vec<Entry>, HostError>> =
            level.par_iter().map(|(path, _)| list_dir(path)).collect();
        let mut next = Vec::new();
        for ((_, dir_id), entries) in level.iter().zip(listed) {
            for mut e in entries? {
                clamped.note(&e.path, &mut e.node.meta);
                let key = (e.dev, e.ino);
                let id = match links.get(&key) {
                    Some(&id) if !e.node.is_dir() => id,
                    _ => {
                        let is_dir = e.node.is_dir();
                        let is_file = matches!(e.node.kind, NodeKind::File(_));
                        let id = tree.add(e.node);
                        if is_dir {
                            next.push((e.path.clone(), id));
                        } else if e.nlink > 1 {
                            links.insert(key, id);
                        }
                        if is_file {
                            files.push(id);
                        }
                        id
                    }
                };
                tree.insert(*dir_id, e.path.file_name().expect("entries have names").as_bytes(), id)
                    .map_err(|source| HostError::Name { path: e.path.clone(), source })?;
            }
        }
        level = next;
    }
    clamped.warn();
    let runs: Vec<Result<Vec<Range<u64>>, HostError>> = files
        .par_iter()
        .map(|&id| match &tree.get(id).kind {
            NodeKind::File(f) => data_blocks(&f.content.path, f.size),
            _ => unreachable!("files holds file nodes"),
        })
        .collect();
    for (&id, runs) in files.iter().zip(runs) {
        if let NodeKind::File(f) = &mut tree.get_mut(id).kind {
            f.data_blocks = runs?;
        }
    }
    Ok(tree)
}

/// The times of a tree that ext4 cannot store: clamped into its range as they are met, and
/// one warning at the end naming the first file and how many there were.
#[derive(Default)]
struct ClampedTimes {
    first: Option<PathBuf>,
    count: u64,
}

impl ClampedTimes {
    fn note(&mut self, path: &Path, meta: &mut Metadata) {
        if meta.clamp_times() {
            self.first.get_or_insert_with(|| path.to_path_buf());
            self.count += 1;
        }
    }

    fn warn(self) {
        if let Some(first) = self.first {
            tracing::warn!(
                "{}: a time outside what ext4 stores (1901-12-13 to 2446-05-10), clamped to it ({} file{} in all)",
                first.display(),
                self.count,
                if self.count == 1 { "" } else { "s" }
            );
        }
    }
}

/// One directory entry, examined: its node and what hard-link detection needs.
struct Entry {
    path: PathBuf,
    node: Node<HostFile>,
    dev: u64,
    ino: u64,
    nlink: u64,
}

/// The entries of a directory, in name order.
fn list_dir(dir: &Path) -> Result<Vec<Entry>, HostError> {
    let mut names = read_dir_quietly(dir).map_err(io_err(dir))?;
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let mut meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let kind = kind_of(&path, &meta)?;
            if meta.is_symlink() {
                // Reading a link may set its atime (it cannot be read with O_NOATIME): its
                // times are taken after the read, which a later read leaves as they are.
                meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            }
            let node = Node::new(kind, metadata_of(&path, &meta)?);
            Ok(Entry { path, node, dev: meta.dev(), ino: meta.ino(), nlink: meta.nlink() })
        })
        .collect()
}

fn kind_of(path: &Path, meta: &std::fs::Metadata) -> Result<NodeKind<HostFile>, HostError> {
    let ft = meta.file_type();
    let rdev = || {
        let dev = meta.rdev();
        DeviceNumber {
            major: (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32,
            minor: (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32,
        }
    };
    Ok(if ft.is_dir() {
        NodeKind::Directory(Directory::default())
    } else if ft.is_file() {
        // Every block counts as data until the scan below says otherwise.
        NodeKind::File(FileData::dense(meta.len(), HostFile { path: path.to_path_buf() }))
    } else if ft.is_symlink() {
        NodeKind::Symlink(std::fs::read_link(path).map_err(io_err(path))?.into_os_string().into_vec())
    } else if ft.is_char_device() {
        NodeKind::CharDevice(rdev())
    } else if ft.is_block_device() {
        NodeKind::BlockDevice(rdev())
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        NodeKind::Socket
    })
}

fn metadata_of(path: &Path, meta: &std::fs::Metadata) -> Result<Metadata, HostError> {
    let nsec = |n: i64| n.clamp(0, 999_999_999) as u32;
    Ok(Metadata {
        mode: (meta.mode() & 0o7777) as u16,
        uid: meta.uid(),
        gid: meta.gid(),
        atime: Timestamp::new(meta.atime(), nsec(meta.atime_nsec())),
        mtime: Timestamp::new(meta.mtime(), nsec(meta.mtime_nsec())),
        ctime: Timestamp::new(meta.ctime(), nsec(meta.ctime_nsec())),
        xattrs: xattrs_of(path)?,
    })
}

/// Calls a size-probing xattr syscall twice: once for the size, once to fill the buffer,
/// retrying when the value grew in between.
fn sized_call(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(&mut buf);
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

fn xattrs_of(path: &Path) -> Result<Xattrs, HostError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("paths from read_dir hold no NUL");
    let list = sized_call(|buf| {
        // SAFETY: c_path is a NUL-terminated string; buf is valid for buf.len() bytes.
        unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    });
    let list = match list {
        Ok(l) => l,
        // Filesystems without xattr support have none to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Xattrs::new()),
        Err(e) => return Err(HostError::Io { path: path.to_path_buf(), source: e }),
    };
    let mut out = Xattrs::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name).expect("split on NUL");
        let value = sized_call(|buf| {
            // SAFETY: both strings are NUL-terminated; buf is valid for buf.len() bytes.
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        });
        match value {
            Ok(v) => {
                out.insert(name.to_vec(), v);
            }
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => {
                let shown = OsStr::from_bytes(name).to_string_lossy();
                return Err(HostError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::new(e.kind(), format!("xattr {shown}: {e}")),
                });
            }
        }
    }
    Ok(out)
}

/// Files up to this size are scanned whole, without SEEK_DATA/SEEK_HOLE.
const SMALL_FILE: u64 = 64 << 10;

/// The file's data ranges (SEEK_DATA/SEEK_HOLE) as whole blocks, then the blocks in them
/// that hold a nonzero byte.
fn data_blocks(path: &Path, size: u64) -> Result<Vec<Range<u64>>, HostError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let file = open_quietly(path).map_err(io_err(path))?;
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut buf = vec![0u8; size.min(1 << 20) as usize];
    // Asking small files for their holes costs more system calls than reading them.
    let ranges = if size <= SMALL_FILE {
        std::iter::once(0..size).collect()
    } else {
        data_extents(&file, size).map_err(io_err(path))?
    };
    for range in ranges {
        let start = range.start / BLOCK_SIZE * BLOCK_SIZE;
        let end = range.end.next_multiple_of(BLOCK_SIZE).min(size);
        let mut scanner = DataBlockScanner::default();
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at).map_err(io_err(path))?;
            scanner.feed(&buf[..n]);
            at += n as u64;
        }
        let first = start / BLOCK_SIZE;
        for r in scanner.finish() {
            let r = r.start + first..r.end + first;
            match runs.last_mut() {
                Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
                _ => runs.push(r),
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn reads_kinds_links_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a"), b"abc").unwrap();
        std::fs::hard_link(d.join("sub/a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink("sub/a", d.join("s")).unwrap();
        let f = File::create(d.join("holey")).unwrap();
        f.write_all_at(b"x", 5 * BLOCK_SIZE).unwrap();
        f.write_all_at(&[0; 4096], 0).unwrap();
        let t = read_tree(d).unwrap();
        assert_eq!(t.lookup(b"b"), t.lookup(b"sub/a"));
        assert!(matches!(&t.get(t.lookup(b"s").unwrap()).kind, NodeKind::Symlink(s) if s == b"sub/a"));
        let NodeKind::File(h) = &t.get(t.lookup(b"holey").unwrap()).kind else { panic!("file") };
        assert_eq!(h.data_blocks, vec![5..6]);
        assert_eq!(h.size, 5 * BLOCK_SIZE + 1);
    }

    /// Collects what tracing prints.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Regression: times ext4 cannot store were clamped silently (by the inode writer). tmpfs
    /// holds any time, so the tree is made there.
    #[test]
    fn times_ext4_cannot_store_are_clamped_with_one_warning() {
        let dir = tempfile::tempdir_in("/dev/shm").expect("a directory on tmpfs (/dev/shm)");
        let d = dir.path();
        let year = Duration::from_secs(365 * 86_400);
        for (name, time) in [
            ("early", SystemTime::UNIX_EPOCH - 100 * year),
            ("late", SystemTime::UNIX_EPOCH + 600 * year),
            ("ordinary", SystemTime::UNIX_EPOCH + 50 * year),
        ] {
            let f = File::create(d.join(name)).unwrap();
            f.set_times(std::fs::FileTimes::new().set_accessed(time).set_modified(time)).unwrap();
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let tree = tracing::subscriber::with_default(subscriber, || read_tree(d)).unwrap();
        let meta = |name: &[u8]| tree.get(tree.lookup(name).unwrap()).meta.clone();
        assert_eq!((meta(b"early").mtime, meta(b"early").atime), (Timestamp::EXT4_MIN, Timestamp::EXT4_MIN));
        assert_eq!((meta(b"late").mtime, meta(b"late").atime), (Timestamp::EXT4_MAX, Timestamp::EXT4_MAX));
        assert_eq!(meta(b"ordinary").mtime.sec, (50 * year).as_secs() as i64);
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("WARN").count(), 1, "{log}");
        let first = d.join("early").display().to_string();
        assert!(log.contains(&first) && log.contains("clamped") && log.contains("2 files"), "{log}");
    }
}
