//! `diskc convert SOURCE -o OUTDIR`: any container image to a root filesystem and manifest.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use diskc::pipeline::{self, ConvertPlan, Progress, RootfsOptions};
use diskc::source::{SourceRef, DEFAULT_PLATFORM};

use super::{parse_size, GlobalArgs, SizeArg};

#[derive(Args, Debug)]
#[command(after_help = "\
SOURCE names an image the way skopeo does:
  docker-daemon:NAME[:TAG]      an image in the local Docker Engine
  oci:DIR[:REF]                 an OCI image layout directory
  oci-archive:FILE[:REF]        a tar of an OCI image layout
  docker-archive:FILE[:REF]     a `docker save` archive
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry (plain HTTP on loopback)")]
pub struct ConvertArgs {
    /// The image to convert (see below).
    pub source: String,
    /// Output directory: rootfs.ext4 and manifest.json appear there whole, or not at all.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub rootfs: RootfsArgs,
}

/// Layout of the root filesystem, shared by `convert` and `build`.
#[derive(Args, Debug, Clone)]
pub struct RootfsArgs {
    /// Which image of a multi-platform index: os/arch[/variant].
    #[arg(long, default_value = DEFAULT_PLATFORM)]
    pub platform: String,
    /// Filesystem size: `auto` (content plus headroom) or bytes with K, M, G, T suffixes.
    #[arg(long, default_value = "auto", value_parser = parse_size)]
    pub size: SizeArg,
    /// Leave out the ext4 journal (for images only ever mounted read-only).
    #[arg(long)]
    pub no_journal: bool,
}

impl RootfsArgs {
    pub fn options(&self) -> RootfsOptions {
        RootfsOptions { size: self.size.0, journal: !self.no_journal }
    }
}

pub fn run(args: ConvertArgs, global: &GlobalArgs) -> anyhow::Result<u8> {
    let source: SourceRef = args.source.parse()?;
    let plan = ConvertPlan {
        source,
        input: args.source.clone(),
        platform: args.rootfs.platform.clone(),
        outdir: args.output.clone(),
        rootfs: args.rootfs.options(),
        spool_dir: None,
    };
    let converted = convert_with_progress(&plan, global)?;
    report(&converted, global);
    Ok(0)
}

/// Runs the pipeline with a progress line on stderr when it is a terminal.
pub fn convert_with_progress(plan: &ConvertPlan, global: &GlobalArgs) -> anyhow::Result<pipeline::Converted> {
    let bar = (!global.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(format!("resolving {}", plan.input));
        bar
    });
    let mut on_progress = |p: Progress| {
        let Some(bar) = &bar else { return };
        bar.set_message(match p {
            Progress::Resolved { layers, bytes: Some(b) } => {
                format!("reading {layers} layers ({})", indicatif::HumanBytes(b))
            }
            Progress::Resolved { layers, bytes: None } => format!("reading {layers} layers"),
            Progress::LayersIndexed { .. } => "merging layers".into(),
            Progress::Flattened { entries } => format!("writing ext4 ({entries} entries)"),
            Progress::RootfsWritten { .. } => "finishing".into(),
        });
    };
    let result = pipeline::convert(plan, &mut on_progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result.with_context(|| format!("converting {}", plan.input))
}

fn report(converted: &pipeline::Converted, global: &GlobalArgs) {
    let m = &converted.manifest;
    if global.json {
        let out = serde_json::json!({
            "id": m.id,
            "outdir": converted.outdir,
            "rootfs": m.rootfs,
            "source": m.source,
            "config": m.config,
            "boot": m.boot,
            "timings": converted.timings,
        });
        println!("{out}");
    } else {
        println!(
            "{} -> {}: {} ({:.1} MiB), {:.2}s",
            m.source.reference,
            converted.outdir.display(),
            m.rootfs.digest,
            m.rootfs.size as f64 / (1 << 20) as f64,
            converted.timings.total
        );
    }
}
