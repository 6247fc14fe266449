//! `diskc mkfs SOURCE -o FILE`: a root-free `mkfs.ext4 -d`. SOURCE is read into a tree, the
//! tree is written as ext4 to a temporary file next to FILE, and the temporary file is
//! renamed to FILE only once complete, so a failed run leaves nothing behind. Like `cp` or
//! `tar`, it leaves flushing to the kernel (no fsync): durability is the business of whoever
//! keeps the image (the chunk store syncs what it stores).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use sha2::{Digest as _, Sha256};

use diskc::error::UsageError;
use diskc::ext4::{self, Options, SizeSpec, Summary};
use diskc::tree::{host, Content, FsTree, NodeKind, Timestamp};

use super::GlobalArgs;

#[derive(Args, Debug)]
pub struct MkfsArgs {
    /// What to put in the filesystem: a directory.
    pub source: PathBuf,
    /// The image file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// `auto` (the content plus headroom) or a size in bytes, with an optional K, M, G or T
    /// suffix (powers of 1024).
    #[arg(long, default_value = "auto", value_parser = parse_size)]
    pub size: Size,
    /// Leave out the jbd2 journal (for images only ever mounted read-only).
    #[arg(long)]
    pub no_journal: bool,
    /// Volume label (at most 16 bytes).
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Auto,
    Bytes(u64),
}

fn parse_size(s: &str) -> Result<Size, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Size::Auto);
    }
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?}: use K, M, G or T")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not `auto` or a size like 512M"))?;
    n.checked_mul(1 << shift).map(Size::Bytes).ok_or_else(|| format!("{s:?} is too large"))
}

/// Where the tree comes from. A directory today; a tar stream joins as a second variant.
enum Source {
    Directory(PathBuf),
}

impl Source {
    fn of(path: &Path) -> Result<Self, UsageError> {
        if path.is_dir() {
            Ok(Source::Directory(path.to_path_buf()))
        } else {
            Err(UsageError(format!("SOURCE {} is not a directory", path.display())))
        }
    }
}

pub fn run(args: MkfsArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let source = Source::of(&args.source)?;
    let size = match args.size {
        Size::Auto => Options::default().size,
        Size::Bytes(n) => SizeSpec::Bytes(n),
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
            write(&tree, options, &args.output)?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let uuid = format_uuid(&summary.uuid);
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

/// Writes the image through a temporary file in the output's directory.
fn write<C: Content>(tree: &FsTree<C>, mut options: Options, output: &Path) -> anyhow::Result<Summary> {
    options.seed = tree_digest(tree);
    options.fs_time = fs_time(tree)?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".diskc-mkfs-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let summary = ext4::write_image(tree, &options, tmp.as_file())
        .with_context(|| format!("writing {}", output.display()))?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file().set_permissions(perms).with_context(|| format!("writing {}", output.display()))?;
    tmp.persist(output).with_context(|| format!("renaming into {}", output.display()))?;
    Ok(summary)
}

/// `SOURCE_DATE_EPOCH` when set, else the newest mtime in the tree: never the clock.
fn fs_time<C>(tree: &FsTree<C>) -> anyhow::Result<Timestamp> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        let sec = v
            .trim()
            .parse()
            .map_err(|_| UsageError(format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")))?;
        return Ok(Timestamp::new(sec, 0));
    }
    let newest = tree.walk().into_iter().map(|(_, id)| tree.get(id).meta.mtime).max().unwrap_or_default();
    Ok(Timestamp::new(newest.sec.max(0), 0))
}

/// The seed for the UUID and hash seed: a digest of the tree's listing (paths, kinds,
/// modes, owners, sizes, times, targets, device numbers, xattrs, hard-link identity). File
/// contents are left out so the seed costs no extra read of the data.
fn tree_digest<C>(tree: &FsTree<C>) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut first_seen = std::collections::HashMap::new();
    for (i, (path, id)) in tree.walk().into_iter().enumerate() {
        let node = tree.get(id);
        h.update((path.len() as u64).to_le_bytes());
        h.update(&path);
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
    }
    h.finalize().into()
}

fn format_uuid(u: &[u8; 16]) -> String {
    let hex = hex::encode(u);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("auto"), Ok(Size::Auto));
        assert_eq!(parse_size("4096"), Ok(Size::Bytes(4096)));
        assert_eq!(parse_size("512M"), Ok(Size::Bytes(512 << 20)));
        assert_eq!(parse_size("2g"), Ok(Size::Bytes(2 << 30)));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
