//! Compares two directory trees exactly: what a mounted image holds against the directory
//! (or unpacked image) it was made from. Type, mode, uid, gid, size, content hash, symlink
//! target, device number, xattrs, hard-link groups and mtime to the nanosecond.
//!
//! Independent of diskc's own readers on purpose: it is the oracle. Use it as
//! `#[path = "common/tree_compare.rs"] mod tree_compare;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Everything compared about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub mtime: (i64, i64),
    /// The first path (in sorted order) naming the same inode, for hard-linked non-directories.
    pub link_group: Option<Vec<u8>>,
}

pub struct Options {
    /// The top-level lost+found of an image that the source lacks is not a difference.
    pub ignore_extra_lost_found: bool,
    /// Compare the top directory's own metadata.
    pub compare_root: bool,
    /// Compare xattrs (docker export drops user.*).
    pub compare_xattrs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { ignore_extra_lost_found: true, compare_root: true, compare_xattrs: true }
    }
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    // SAFETY: c is NUL-terminated; a null buffer with size 0 asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return out;
    }
    let mut list = vec![0u8; n as usize];
    // SAFETY: list is valid for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    list.truncate(n as usize);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        // SAFETY: as above.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(size >= 0, "lgetxattr {} {:?}", path.display(), String::from_utf8_lossy(name));
        let mut value = vec![0u8; size as usize];
        // SAFETY: value is valid for its length.
        let got = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(got >= 0);
        value.truncate(got as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Every path under `root` (relative, as bytes; the root itself is empty) and its entry.
pub fn scan(root: &Path, options: &Options) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    let mut paths = Vec::new();
    while let Some((path, rel)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let name = e.file_name();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(name.as_bytes());
                if options.ignore_extra_lost_found && rel.is_empty() && name.as_bytes() == b"lost+found" {
                    continue;
                }
                stack.push((e.path(), r));
            }
        }
        paths.push((path, rel, meta));
    }
    paths.sort_by(|a, b| a.1.cmp(&b.1));
    for (path, rel, meta) in paths {
        if rel.is_empty() && !options.compare_root {
            continue;
        }
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        let link_group = (kind != 'd' && meta.nlink() > 1)
            .then(|| inodes.entry((meta.dev(), meta.ino())).or_insert_with(|| rel.clone()).clone());
        out.insert(
            rel,
            Entry {
                kind,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                size: if kind == 'd' { 0 } else { meta.len() },
                sha256: (kind == 'f').then(|| sha256_file(&path)),
                target: (kind == 'l')
                    .then(|| std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec()),
                rdev: matches!(kind, 'c' | 'b').then(|| meta.rdev()),
                xattrs: if options.compare_xattrs { xattrs(&path) } else { BTreeMap::new() },
                mtime: (meta.mtime(), meta.mtime_nsec()),
                link_group,
            },
        );
    }
    out
}

/// Differences between two trees, one line each; empty when they are equal.
pub fn differences(expected: &Path, actual: &Path, options: &Options) -> Vec<String> {
    let a = scan(expected, options);
    let b = scan(actual, options);
    let mut out = Vec::new();
    for (path, ea) in &a {
        let shown = String::from_utf8_lossy(path);
        match b.get(path) {
            None => out.push(format!("missing: /{shown}")),
            Some(eb) if ea != eb => {
                out.push(format!("differs: /{shown}\n  expected {ea:?}\n  actual   {eb:?}"))
            }
            Some(_) => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("extra: /{}", String::from_utf8_lossy(path)));
    }
    out
}

pub fn assert_same_tree(expected: &Path, actual: &Path, options: &Options) {
    let diffs = differences(expected, actual, options);
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// A read-only loop mount, unmounted on drop so a failing test leaves nothing mounted.
pub struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(image: &Path) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let out =
            Command::new("mount").args(["-o", "loop,ro"]).arg(image).arg(dir.path()).output().expect("mount");
        assert!(
            out.status.success(),
            "mount {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
