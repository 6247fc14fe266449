//! `diskc mkfs SOURCE -o FILE`: a root-free `mkfs.ext4 -d`. SOURCE is read into a tree, the
//! tree is written as ext4 to a temporary file next to FILE, and the temporary file is
//! renamed to FILE only once complete, so a failed run leaves nothing behind. Like `cp` or
//! `tar`, it leaves flushing to the kernel (no fsync): durability is the business of whoever
//! keeps the image (the chunk store syncs what it stores).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sha2::{Digest as _, Sha256};

use diskc::error::UsageError;
use diskc::ext4::{self, Options, SizeSpec, Summary};
use diskc::layer::{self, LayerExpect};
use diskc::pipeline;
use diskc::tree::{host, Content, FsTree, NodeKind};

use super::{parse_size, GlobalArgs, SizeArg};

#[derive(Args, Debug)]
pub struct MkfsArgs {
    /// What to put in the filesystem: a directory, or a tar stream (a file, or - for
    /// stdin; plain, gzip or zstd).
    pub source: PathBuf,
    /// The image file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// `auto` (the content plus headroom) or a size in bytes, with an optional K, M, G or T
    /// suffix (powers of 1024).
    #[arg(long, default_value = "auto", value_parser = parse_size)]
    pub size: SizeArg,
    /// Leave out the jbd2 journal (for images only ever mounted read-only).
    #[arg(long)]
    pub no_journal: bool,
    /// Volume label (at most 16 bytes).
    #[arg(long)]
    pub label: Option<String>,
}

/// Where the tree comes from: a directory as it is on disk, or a tar stream (a file, or `-`
/// for stdin; gzip or zstd compressed or not), read as a single image layer.
enum Source {
    Directory(PathBuf),
    Tar(PathBuf),
}

impl Source {
    fn of(path: &Path) -> Result<Self, UsageError> {
        if path.is_dir() {
            Ok(Source::Directory(path.to_path_buf()))
        } else if path == Path::new("-") || path.is_file() {
            Ok(Source::Tar(path.to_path_buf()))
        } else {
            Err(UsageError(format!("SOURCE {} is not a directory, a tar file or -", path.display())))
        }
    }
}

pub fn run(args: MkfsArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let source = Source::of(&args.source)?;
    let size = match args.size {
        SizeArg(None) => Options::default().size,
        SizeArg(Some(n)) => SizeSpec::Bytes(n),
    };
    let options =
        Options { size, journal: !args.no_journal, label: args.label.clone(), ..Options::default() };
    let summary = match source {
        Source::Directory(dir) => {
            let tree = host::read_tree(&dir).with_context(|| format!("reading {}", dir.display()))?;
            tracing::info!(
                nodes = tree.arena_len(),
                seconds = started.elapsed().as_secs_f64(),
                "read the source"
            );
            write(&tree, options, temp_beside(&args.output)?, &args.output)?
        }
        Source::Tar(path) => {
            let input: Box<dyn Read> = if path == Path::new("-") {
                Box::new(std::io::stdin())
            } else {
                Box::new(File::open(&path).with_context(|| format!("opening {}", path.display()))?)
            };
            // The file data goes straight into the image's temporary file, and stays there.
            let tmp = temp_beside(&args.output)?;
            let writing = || format!("writing {}", args.output.display());
            let spool = layer::SpoolFile::new(tmp.as_file().try_clone().with_context(writing)?);
            let writer = spool.slot(0).with_context(writing)?;
            let layer = layer::index_layer(input, &LayerExpect::default(), 0, writer)
                .with_context(|| format!("reading tar {}", path.display()))?;
            // Unlike an image layer (where Docker keeps the root as it is), a tar made of a
            // directory tree describes its root too: keep what its `./` entry says.
            let root = layer.entries.iter().rev().find(|e| names_root(&e.path)).map(|e| e.meta.clone());
            let mut tree =
                layer::flatten_layers(&[layer]).with_context(|| format!("reading tar {}", path.display()))?;
            if let Some(meta) = root {
                tree.get_mut(FsTree::<layer::SpoolRef>::ROOT).meta = meta;
            }
            drop(spool.settle(tree.files().map(|f| &f.content)).with_context(writing)?);
            write(&tree, Options { data_in_place: true, ..options }, tmp, &args.output)?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let uuid = pipeline::format_uuid(&summary.uuid);
    if global.json {
        let out = serde_json::json!({
            "size": summary.size_bytes,
            "uuid": uuid,
            "inodes": summary.inodes_used,
            "blocks": summary.blocks_used,
            "seconds": seconds,
        });
        println!("{out}");
    } else if !global.quiet {
        println!(
            "{}: {} bytes, {} inodes, {} of {} blocks used, uuid {uuid}, {seconds:.2}s",
            args.output.display(),
            summary.size_bytes,
            summary.inodes_used,
            summary.blocks_used,
            summary.size_bytes / u64::from(summary.block_size),
        );
    }
    Ok(0)
}

/// A temporary file in the output's directory, renamed over the output when it is whole.
fn temp_beside(output: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = parent_dir(output);
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
) -> anyhow::Result<Summary> {
    options.seed = tree_digest(tree);
    options.fs_time = pipeline::fs_time(tree);
    let summary = ext4::write_image(tree, &options, tmp.as_file())
        .with_context(|| format!("writing {}", output.display()))?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file().set_permissions(perms).with_context(|| format!("writing {}", output.display()))?;
    tmp.persist(output).with_context(|| format!("renaming into {}", output.display()))?;
    Ok(summary)
}

/// The seed for the UUID and hash seed: a digest of the tree's listing (paths, kinds,
/// modes, owners, sizes, times, targets, device numbers, xattrs, hard-link identity). File
/// contents are left out so the seed costs no extra read of the data.
fn tree_digest<C>(tree: &FsTree<C>) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut first_seen = std::collections::HashMap::new();
    let mut i = 0;
    tree.visit(|path, id| {
        let node = tree.get(id);
        h.update((path.len() as u64).to_le_bytes());
        h.update(path);
        h.update((*first_seen.entry(id).or_insert(i) as u64).to_le_bytes());
        let m = &node.meta;
        h.update(m.mode.to_le_bytes());
        h.update(m.uid.to_le_bytes());
        h.update(m.gid.to_le_bytes());
        h.update(m.mtime.sec.to_le_bytes());
        h.update(m.mtime.nsec.to_le_bytes());
        for (k, v) in &m.xattrs {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
        match &node.kind {
            NodeKind::Directory(_) => h.update(b"d"),
            NodeKind::File(f) => {
                h.update(b"f");
                h.update(f.size.to_le_bytes());
            }
            NodeKind::Symlink(t) => {
                h.update(b"l");
                h.update((t.len() as u64).to_le_bytes());
                h.update(t);
            }
            NodeKind::CharDevice(d) | NodeKind::BlockDevice(d) => {
                h.update(if matches!(node.kind, NodeKind::CharDevice(_)) { b"c" } else { b"b" });
                h.update(d.major.to_le_bytes());
                h.update(d.minor.to_le_bytes());
            }
            NodeKind::Fifo => h.update(b"p"),
            NodeKind::Socket => h.update(b"s"),
        }
        i += 1;
    });
    h.finalize().into()
}

/// Whether a tar entry's name is the root itself: `.`, `./`, `/` or empty.
fn names_root(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').all(|part| part.is_empty() || part == b".")
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
