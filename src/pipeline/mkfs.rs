//! `mkfs`: a root-free `mkfs.ext4 -d`. A directory, or a tar stream read as a single image
//! layer, becomes a tree; the tree is written as ext4 into a temporary file next to the
//! output, renamed to the output only once complete, so a failed run leaves nothing behind.
//! Like `cp` or `tar`, it leaves flushing to the kernel (no fsync): durability is the
//! business of whoever keeps the image (the chunk store syncs what it stores).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::rootfs::{clamp_times, format_uuid, fs_time, size_spec, tree_seed};
use super::staging::{sweep_stale, Unfinished};
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
    /// `SOURCE_DATE_EPOCH`: mtimes later than it are clamped to it, and atime, ctime and the
    /// filesystem's own times are it, so the same tree copied anew gives the same bytes.
    pub source_date_epoch: Option<i64>,
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
            let mut tree = host::read_tree(dir).with_context(|| format!("reading {}", dir.display()))?;
            if let Some(epoch) = plan.source_date_epoch {
                clamp_times(&mut tree, epoch);
            }
            tracing::info!(
                nodes = tree.arena_len(),
                seconds = started.elapsed().as_secs_f64(),
                "read the source"
            );
            let (tmp, _unfinished) = temp_beside(&plan.output)?;
            write(&tree, options, plan.source_date_epoch, tmp, &plan.output)?
        }
        MkfsSource::Tar(path) => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            from_tar(Box::new(file), &path.display().to_string(), options, plan)?
        }
        MkfsSource::Stdin => from_tar(Box::new(std::io::stdin()), "-", options, plan)?,
    };
    let uuid = format_uuid(&summary.uuid);
    Ok(Made { summary, uuid, seconds: started.elapsed().as_secs_f64() })
}

/// A tar stream read as one image layer: its file data goes straight into the image's
/// temporary file, and stays there.
fn from_tar(input: Box<dyn Read>, name: &str, options: Options, plan: &MkfsPlan) -> Result<Summary, Error> {
    let output = &plan.output;
    let (tmp, _unfinished) = temp_beside(output)?;
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
    if let Some(epoch) = plan.source_date_epoch {
        clamp_times(&mut tree, epoch);
    }
    drop(spool.settle(tree.files().map(|f| &f.content)).with_context(writing)?);
    write(&tree, Options { data_in_place: true, ..options }, plan.source_date_epoch, tmp, output)
}

/// The prefix of mkfs's temporary files; the writer's pid follows, so that the next run can
/// sweep what a killed one left.
const TEMP_PREFIX: &str = ".diskc-mkfs-";

/// A temporary file in the output's directory, renamed over the output when it is whole;
/// removed if the process is interrupted first.
fn temp_beside(output: &Path) -> Result<(tempfile::NamedTempFile, Unfinished), Error> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sweep_stale(dir, TEMP_PREFIX);
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let unfinished = Unfinished::new(tmp.path());
    Ok((tmp, unfinished))
}

/// Writes the image into `tmp`, then renames it to `output`.
fn write<C: Content>(
    tree: &FsTree<C>,
    mut options: Options,
    source_date_epoch: Option<i64>,
    tmp: tempfile::NamedTempFile,
    output: &Path,
) -> Result<Summary, Error> {
    options.seed = tree_seed(tree);
    options.fs_time = fs_time(tree, source_date_epoch);
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
