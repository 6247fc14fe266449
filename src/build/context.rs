//! The build context as a tar stream: what `docker build` uploads, produced on the fly.
//!
//! A context can be large (a repository with its assets), so it is never read whole: a
//! thread walks the directory and writes tar entries into a bounded channel whose other end
//! is the HTTP request body. Entries come in a fixed order (names sorted per directory), so
//! the same tree gives the same bytes, which lets BuildKit's cache recognise it. Modes,
//! symlinks and modification times are kept; owners are written as 0:0 like the Docker CLI
//! does, since the owner of a file on the build machine means nothing in the image.
//! `.dockerignore` is applied while walking; the Dockerfile and `.dockerignore` are always
//! sent. A Dockerfile from outside the context is added under a name of its own.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::dockerignore::Ignore;

/// What to put in the tar besides the context directory itself.
#[derive(Clone, Debug)]
pub struct ContextSpec {
    pub root: PathBuf,
    pub ignore: Ignore,
    /// Context-relative paths sent even when `.dockerignore` excludes them.
    pub always: Vec<String>,
    /// A Dockerfile that lives outside the context: its name in the tar and its bytes.
    pub extra_dockerfile: Option<(String, Vec<u8>)>,
}

/// An I/O failure while reading the context, with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ContextError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes the whole context as a tar archive to `out`; returns the number of entries.
pub fn write_context(spec: &ContextSpec, out: impl Write) -> Result<u64, ContextError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut count = 0;
    if let Some((name, bytes)) = &spec.extra_dockerfile {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        tar.append_data(&mut header, name, bytes.as_slice())
            .map_err(|source| ContextError { path: PathBuf::from(name), source })?;
        count += 1;
    }
    walk(spec, &spec.root, "", &mut tar, &mut count)?;
    tar.into_inner().map_err(|source| ContextError { path: spec.root.clone(), source })?;
    Ok(count)
}

fn walk<W: Write>(
    spec: &ContextSpec,
    dir: &Path,
    prefix: &str,
    tar: &mut tar::Builder<W>,
    count: &mut u64,
) -> Result<(), ContextError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError { path, source }
    };
    let mut entries: Vec<fs::DirEntry> =
        fs::read_dir(dir).and_then(|rd| rd.collect::<Result<_, _>>()).map_err(at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let meta = fs::symlink_metadata(&path).map_err(at(&path))?;
        let forced = spec.always.contains(&rel);
        let excluded = !forced && spec.ignore.is_excluded(&rel);
        if meta.is_dir() {
            let holds_forced = spec.always.iter().any(|a| a.starts_with(&format!("{rel}/")));
            if !excluded {
                append_header_only(tar, &meta, &rel, tar::EntryType::Directory).map_err(at(&path))?;
                *count += 1;
            }
            if !excluded || holds_forced || spec.ignore.may_include_below(&rel) {
                walk(spec, &path, &format!("{rel}/"), tar, count)?;
            }
            continue;
        }
        if excluded {
            continue;
        }
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(at(&path))?;
            let mut header = header_for(&meta, tar::EntryType::Symlink);
            tar.append_link(&mut header, &rel, &target).map_err(at(&path))?;
        } else if file_type.is_file() {
            let file = fs::File::open(&path).map_err(at(&path))?;
            let mut header = header_for(&meta, tar::EntryType::Regular);
            header.set_size(meta.len());
            // A file that changes size while being sent would corrupt the stream; take
            // exactly the size the header announces and fail if the file is shorter.
            let data = ExactReader { inner: io::Read::take(file, meta.len()), left: meta.len() };
            tar.append_data(&mut header, &rel, data).map_err(at(&path))?;
        } else {
            // Sockets, fifos and devices cannot be read as context files; docker skips
            // sockets too, and a device in a build context is nearly always an accident.
            tracing::debug!(path = %path.display(), "not a file, directory or symlink: left out of the context");
            continue;
        }
        *count += 1;
    }
    Ok(())
}

fn header_for(meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(meta.mtime().max(0) as u64);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

fn append_header_only<W: Write>(
    tar: &mut tar::Builder<W>,
    meta: &fs::Metadata,
    rel: &str,
    kind: tar::EntryType,
) -> io::Result<()> {
    let mut header = header_for(meta, kind);
    tar.append_data(&mut header, format!("{rel}/"), io::empty())
}

/// Fails instead of padding when a file shrank after its size was written into the header.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: io::Read> io::Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn entries(spec: &ContextSpec) -> Vec<(String, tar::EntryType, u32, Option<String>)> {
        let mut bytes = Vec::new();
        write_context(spec, &mut bytes).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    fn spec(root: &Path, ignore: &str) -> ContextSpec {
        ContextSpec {
            root: root.to_path_buf(),
            ignore: Ignore::parse(ignore),
            always: vec!["Dockerfile".into(), ".dockerignore".into()],
            extra_dockerfile: None,
        }
    }

    #[test]
    fn entries_are_sorted_and_keep_modes_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("b")).unwrap();
        fs::write(root.join("b/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("b/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink("b/run.sh", root.join("link")).unwrap();
        let got = entries(&spec(root, ""));
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a.txt", "b/", "b/run.sh", "link"]);
        assert_eq!(got[0].2, 0o640);
        assert_eq!(got[2].2, 0o755);
        assert_eq!((got[3].1, got[3].3.as_deref()), (tar::EntryType::Symlink, Some("b/run.sh")));
    }

    #[test]
    fn ignored_paths_are_left_out_but_the_dockerfile_is_always_sent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["Dockerfile", ".dockerignore", "keep.txt", "secret.key"] {
            fs::write(root.join(f), f).unwrap();
        }
        fs::create_dir_all(root.join("logs/keep")).unwrap();
        fs::write(root.join("logs/a.log"), "").unwrap();
        fs::write(root.join("logs/keep/b.log"), "").unwrap();
        let got = entries(&spec(root, "*\n!keep.txt\n!logs/keep/b.log"));
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, [".dockerignore", "Dockerfile", "keep.txt", "logs/keep/b.log"]);
    }

    #[test]
    fn a_dockerfile_from_outside_the_context_is_added_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), "x").unwrap();
        let mut s = spec(dir.path(), "");
        s.extra_dockerfile = Some((".diskc.Dockerfile.abc".into(), b"FROM scratch\n".to_vec()));
        let got = entries(&s);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, [".diskc.Dockerfile.abc", "x"]);
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "data").unwrap();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        write_context(&spec(dir.path(), ""), &mut one).unwrap();
        write_context(&spec(dir.path(), ""), &mut two).unwrap();
        assert_eq!(one, two);
    }
}
