//! `diskc mkfs SOURCE -o FILE`: a root-free `mkfs.ext4 -d` (the library's [`pipeline::mkfs`]).

use std::path::PathBuf;

use clap::Args;

use diskc::error::{Error, UsageError};
use diskc::pipeline::{self, MkfsPlan, MkfsSource};

use super::{output, parse_size, CliError, GlobalArgs, SizeArg};

/// The smallest filesystem diskc lays out: its first MiB of metadata and a little room. The
/// tree's own needs usually ask for more, and the error then says how much.
const MIN_SIZE: u64 = (1 << 20) + (256 << 10);

#[derive(Args, Debug)]
pub struct MkfsArgs {
    /// What to put in the filesystem: a directory, or a tar stream (a file, or - for
    /// stdin; plain, gzip or zstd).
    pub source: PathBuf,
    /// The image file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// `auto` (the content plus headroom) or a size in bytes, with an optional K, M, G or T
    /// suffix (powers of 1024); at least 1280K, rounded down to 4 KiB blocks.
    #[arg(long, default_value = "auto", value_parser = parse_size)]
    pub size: SizeArg,
    /// Leave out the jbd2 journal (for images only ever mounted read-only).
    #[arg(long)]
    pub no_journal: bool,
    /// Volume label (at most 16 bytes).
    #[arg(long)]
    pub label: Option<String>,
    /// Seconds since the epoch: later mtimes are clamped to it, and atimes, ctimes and the
    /// filesystem's own times are set to it, so a copy of the same tree gives the same bytes.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
}

pub fn run(args: MkfsArgs, global: &GlobalArgs) -> Result<u8, Error> {
    if args.source.as_os_str() != "-" && !args.source.exists() {
        return Err(CliError::MissingSource(args.source.clone()).into());
    }
    if let Some(size) = args.size.0 {
        if size < MIN_SIZE {
            return Err(UsageError(format!(
                "--size {size}: too small: an image is at least {MIN_SIZE} bytes (1280K), and the \
                 tree usually needs more; use --size auto to size it from the content"
            ))
            .into());
        }
    }
    let plan = MkfsPlan {
        source: MkfsSource::of(&args.source)?,
        output: args.output.clone(),
        size: args.size.0,
        journal: !args.no_journal,
        label: args.label.clone(),
        source_date_epoch: args.source_date_epoch,
    };
    let made = pipeline::mkfs(&plan)?;
    let summary = &made.summary;
    if global.json {
        let out = serde_json::json!({
            "size": summary.size_bytes,
            "uuid": made.uuid,
            "inodes": summary.inodes_used,
            "blocks": summary.blocks_used,
            "seconds": output::round_seconds(made.seconds),
        });
        output::json("mkfs", out);
    } else if !global.quiet {
        output::line(format!(
            "{}: {} bytes, {} inodes, {} of {} blocks used, uuid {}, {:.2}s",
            args.output.display(),
            summary.size_bytes,
            summary.inodes_used,
            summary.blocks_used,
            summary.size_bytes / u64::from(summary.block_size),
            made.uuid,
            made.seconds,
        ));
    }
    Ok(0)
}
