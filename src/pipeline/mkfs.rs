//! `mkfs`: a root-free `mkfs.ext4 -d`. A directory, or a tar stream read as a single image
//! layer, becomes a tree; the tree is written as ext4 into a temporary file next to the
//! output, renamed to the output only once complete, so a failed run leaves nothing behind.
//! Like `cp` or `tar`, it leaves flushing to the kernel (no fsync): durability is the
//! business of whoever keeps the image (the chunk store syncs what it stores).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::rootfs::{format_uuid, fs_time, size_spec, tree_seed};
use crate::error::{Error, ResultExt, UsageError};
use crate::ext4::{self, Options, Summary};
use crate::layer::{self, LayerExpect, SpoolRef};
use crate::tree::{host, Content, FsTree};

/// What goes into the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MkfsSource {
    /// A directory as it is on disk.
    Directory(PathBuf),
    /// A tar file: plain, gzip or zstd.
    Tar(PathBuf),
    /// A tar stream on standard input.
    Stdin,
}

impl MkfsSource {
    /// `-` is standard input; otherwise a directory or a (tar) file.
    pub fn of(path: &Path) -> Result<Self, Error> {
        if path == Path::new("-") {
            Ok(MkfsSource::Stdin)
        } else if path.is_dir() {
            Ok(MkfsSource::Directory(path.to_path_buf()))
        } else if path.is_file() {
            Ok(MkfsSource::Tar(path.to_path_buf()))
        } else {
            Err(UsageError(format!("SOURCE {} is not a directory, a tar file or -", path.display())).into())
        }
    }
}

/// An ext4 image to make.
#[derive(Clone, Debug)]
pub struct MkfsPlan {
    pub source: MkfsSource,
    /// The image file to write.
    pub output: PathBuf,
    /// Bytes; `None`: the content plus headroom.
    pub size: Option<u64>,
    pub journal: bool,
    /// Volume label (at most 16 bytes).
    pub label: Option<String>,
}

/// What `mkfs` made.
#[derive(Clone, Debug)]
pub struct Made {
    pub summary: Summary,
    /// The filesystem UUID as `blkid` prints it.
    pub uuid: String,
    pub seconds: f64,
}

/// Makes the plan's ext4 image.
pub fn mkfs(plan: &MkfsPlan) -> Result<Made, Error> {
    let started = Instant::now();
    let options = Options {
        size: size_spec(plan.size),
        journal: plan.journal,
        label: plan.label.clone(),
        ..Options::default()
    };
    let summary = match &plan.source {
        MkfsSource::Directory(dir) => {
            let tree = host::read_tree(dir).with_context(|| format!("reading {}", dir.display()))?;
            tracing::info!(
                nodes = tree.arena_len(),
                seconds = started.elapsed().as_secs_f64(),
                "read the source"
            );
            write(&tree, options, temp_beside(&plan.output)?, &plan.output)?
        }
        MkfsSource::Tar(path) => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            from_tar(Box::new(file), &path.display().to_string(), options, &plan.output)?
        }
        MkfsSource::Stdin => from_tar(Box::new(std::io::stdin()), "-", options, &plan.output)?,
    };
    let uuid = format_uuid(&summary.uuid);
    Ok(Made { summary, uuid, seconds: started.elapsed().as_secs_f64() })
}

/// A tar stream read as one image layer: its file data goes straight into the image's
/// temporary file, and stays there.
fn from_tar(input: Box<dyn Read>, name: &str, options: Options, output: &Path) -> Result<Summary, Error> {
    let tmp = temp_beside(output)?;
    let writing = || format!("writing {}", output.display());
    let spool = layer::SpoolFile::new(tmp.as_file().try_clone().with_context(writing)?);
    let writer = spool.slot(0).with_context(writing)?;
    let layer = layer::index_layer(input, &LayerExpect::default(), 0, writer)
        .with_context(|| format!("reading tar {name}"))?;
    // Unlike an image layer (where Docker keeps the root as it is), a tar made of a
    // directory tree describes its root too: keep what its `./` entry says.
    let root = layer.entries.iter().rev().find(|e| names_root(&e.path)).map(|e| e.meta.clone());
    let mut tree = layer::flatten_layers(&[layer]).with_context(|| format!("reading tar {name}"))?;
    if let Some(meta) = root {
        tree.get_mut(FsTree::<SpoolRef>::ROOT).meta = meta;
    }
    drop(spool.settle(tree.files().map(|f| &f.content)).with_context(writing)?);
    write(&tree, Options { data_in_place: true, ..options }, tmp, output)
}

/// A temporary file in the output's directory, renamed over the output when it is whole.
fn temp_beside(output: &Path) -> Result<tempfile::NamedTempFile, Error> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".diskc-mkfs-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}

/// Writes the image into `tmp`, then renames it to `output`.
fn write<C: Content>(
    tree: &FsTree<C>,
    mut options: Options,
    tmp: tempfile::NamedTempFile,
    output: &Path,
) -> Result<Summary, Error> {
    options.seed = tree_seed(tree);
    options.fs_time = fs_time(tree);
    let writing = || format!("writing {}", output.display());
    let summary = ext4::write_image(tree, &options, tmp.as_file()).with_context(writing)?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file().set_permissions(perms).with_context(writing)?;
    tmp.persist(output)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", output.display()))?;
    Ok(summary)
}

/// Whether a tar entry's name is the root itself: `.`, `./`, `/` or empty.
fn names_root(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').all(|part| part.is_empty() || part == b".")
}
