//! A build context on its way to a worker: packed by the submitter as the tar a local build
//! would send the daemon, stored once in JetStream's object store under its sha256 (an
//! unchanged context is found there and not sent again), fetched and unpacked by the worker,
//! which builds the unpacked directory. The tar keeps modes and modification times, so the
//! worker's BuildKit sees the files the submitter's would have.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use tokio::io::AsyncWriteExt;

use super::{Farm, FarmError};
use crate::build::{write_build_context, BuildPlan};
use crate::digest::Hasher;
use crate::error::Error;

/// A context packed into a temporary file.
pub struct PackedContext {
    pub file: tempfile::NamedTempFile,
    /// sha256 of the tar, hex: the object's name.
    pub digest: String,
    pub size: u64,
    /// The Dockerfile's name inside the tar.
    pub dockerfile: String,
}

/// Writes into a file and a hash at once.
struct HashingWriter<W> {
    out: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Packs the context of `plan` (blocking), with the same checks and errors as a local build.
pub fn pack(plan: &BuildPlan) -> Result<PackedContext, Error> {
    let file = tempfile::NamedTempFile::new()?;
    let mut writer = HashingWriter { out: BufWriter::new(file.reopen()?), hasher: Hasher::new(), count: 0 };
    let dockerfile = write_build_context(plan, &mut writer)
        .map_err(|e| Error::from(e).context(format!("building {}", plan.context.display())))?;
    writer.flush()?;
    Ok(PackedContext { file, digest: writer.hasher.finish().hex(), size: writer.count, dockerfile })
}

/// Stores the packed context in the farm unless it is there already; returns whether it was
/// sent.
pub async fn upload(farm: &Farm, packed: &PackedContext) -> Result<bool, FarmError> {
    if farm.contexts.info(&packed.digest).await.is_ok() {
        return Ok(false);
    }
    // A put is idempotent (the name is the content's digest), and under many submitters at
    // once the server has been seen to refuse a chunk for a moment: try again before failing.
    let mut attempt = 1;
    loop {
        let mut file = tokio::fs::File::open(packed.file.path())
            .await
            .map_err(|e| FarmError::Context(format!("{}: {e}", packed.file.path().display())))?;
        match farm.contexts.put(packed.digest.as_str(), &mut file).await {
            Ok(_) => return Ok(true),
            Err(e) if attempt < UPLOAD_ATTEMPTS => {
                tracing::warn!(
                    "storing build context {} (attempt {attempt}): {e}; trying again",
                    packed.digest
                );
                tokio::time::sleep(std::time::Duration::from_millis(250 * attempt as u64)).await;
                attempt += 1;
            }
            Err(e) => return Err(farm.error("storing the build context", e)),
        }
    }
}

const UPLOAD_ATTEMPTS: u32 = 3;

/// Fetches the context named `digest` into the file `out`.
pub async fn download(farm: &Farm, digest: &str, out: &Path) -> Result<(), FarmError> {
    let mut object = farm
        .contexts
        .get(digest)
        .await
        .map_err(|e| farm.error(&format!("fetching build context {digest}"), e))?;
    let mut file = tokio::fs::File::create(out)
        .await
        .map_err(|e| FarmError::Context(format!("{}: {e}", out.display())))?;
    tokio::io::copy(&mut object, &mut file)
        .await
        .map_err(|e| farm.error(&format!("fetching build context {digest}"), e))?;
    file.flush().await.map_err(|e| FarmError::Context(format!("{}: {e}", out.display())))?;
    Ok(())
}

/// Unpacks a context tar into `dir` (blocking), keeping modes and modification times.
pub fn unpack(tar: &Path, dir: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(File::open(tar)?);
    archive.set_preserve_mtime(true);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    archive.unpack(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tree_packs_to_the_same_digest_and_unpacks_whole() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(context.join("sub")).unwrap();
        std::fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY sub /sub\n").unwrap();
        std::fs::write(context.join("sub/file"), "data").unwrap();
        std::fs::write(context.join(".dockerignore"), "ignored\n").unwrap();
        std::fs::write(context.join("ignored"), "not sent").unwrap();
        let plan = BuildPlan { context: context.clone(), ..Default::default() };
        let first = pack(&plan).unwrap();
        let second = pack(&plan).unwrap();
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.dockerfile, "Dockerfile");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(first.file.path(), &out).unwrap();
        assert_eq!(std::fs::read(out.join("sub/file")).unwrap(), b"data");
        assert!(!out.join("ignored").exists());
        // The unpacked tree packs to the same bytes again: what the worker builds is what
        // the submitter packed.
        let again = pack(&BuildPlan { context: out, ..Default::default() }).unwrap();
        assert_eq!(again.digest, first.digest);
        std::fs::write(context.join("sub/file"), "changed").unwrap();
        assert_ne!(pack(&plan).unwrap().digest, first.digest);
    }
}
