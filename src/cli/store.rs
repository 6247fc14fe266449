//! `diskc ls | inspect | export | tag | rm | prune | gc | verify`: the commands over the image
//! store, plus the hidden `diskc store-put` that stores a rootfs file directly (for tests that
//! kill a put mid-way, and for measuring chunking strategies on real images).
//!
//! Only `build`, `convert` and `store-put` create a store. The others read or change one that
//! exists: a mistyped `--store` is an error naming the path, not a new empty store.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use diskc::error::{Error, ResultExt, UsageError};
use diskc::source::reference::with_default_tag;
use diskc::store::{Chunking, ImageId, ImageRecord, Store, StoreLocation};
use tokio::runtime::Handle;

use super::listing::{self, human_bytes, rfc3339, Filter, Format};
use super::{output, CliError, GlobalArgs};

/// Where the store lives; shared by every command that uses it.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The store: a directory, or a remote store read and written through the local one,
    /// s3://BUCKET[/PREFIX] (configured by AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP) or file:///PATH [default:
    /// $DISKC_STORE, else $XDG_CACHE_HOME/diskc, else ~/.cache/diskc].
    #[arg(long, value_name = "DIR|URL")]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    /// The store named by --store, else by the environment.
    pub fn location(&self) -> StoreLocation {
        self.store.clone().map_or_else(StoreLocation::from_env, StoreLocation::from)
    }

    /// Opens the store, creating it if absent (for the commands that put images in it).
    pub fn open(&self, rt: &Handle) -> Result<Store, Error> {
        let location = self.location();
        if let StoreLocation::Dir(root) = &location {
            if root.exists() && !root.is_dir() {
                return Err(CliError::StoreNotADirectory(root.clone()).into());
            }
        }
        location.open(rt).with_context(|| format!("cannot open the store at {location}"))
    }

    /// Opens a store that exists; never creates one. A remote store always exists (an
    /// empty one holds no images).
    pub fn open_existing(&self, rt: &Handle) -> Result<Store, Error> {
        if let StoreLocation::Dir(root) = self.location() {
            if !root.exists() {
                return Err(CliError::NoStore(root).into());
            }
        }
        self.open(rt)
    }
}

#[derive(Args, Debug)]
#[command(after_help = "\
--format takes `table` (the default), `json`, or a comma-separated list of fields printed
tab-separated without a header: id, short_id, names, size, stored_size, created.
  diskc ls --format id,names
--filter takes name=PATTERN (`*` matches anything; `app` means app:latest),
since=DURATION (90s, 15m, 24h, 7d, 2w), since=IMAGE, dangling=true|false; repeat it or
separate filters with commas.")]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print image ids only, one per line.
    #[arg(short, long)]
    pub quiet: bool,
    /// table, json, or a list of fields (see below).
    #[arg(long, default_value = "table", value_parser = listing::parse_format)]
    pub format: Format,
    /// Show only the images that match (see below).
    #[arg(long, value_name = "FILTER", value_parser = listing::parse_filter)]
    pub filter: Vec<Vec<Filter>>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image ids (an unambiguous prefix will do) or names; a name without a tag means :latest.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image id (an unambiguous prefix will do) or name.
    pub image: String,
    /// Where to write the rootfs: a file (sparse, byte-identical to what was stored).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Also write the image's kernel here.
    #[arg(long, value_name = "FILE")]
    pub kernel_out: Option<PathBuf>,
    /// Also write the image's initrd here.
    #[arg(long, value_name = "FILE")]
    pub initrd_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image id (an unambiguous prefix will do) or name.
    pub image: String,
    /// The new names, such as `app:v1` (`app` alone means app:latest).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Names or ids. A name is removed alone, and the image with it when no name is left; an
    /// id (or unambiguous prefix) removes the image with all its names.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Remove every image, named or not (default: only images without a name).
    #[arg(short, long)]
    pub all: bool,
    /// Only images stored longer ago than this: 90s, 15m, 24h, 7d, 2w.
    #[arg(long, value_name = "DURATION", value_parser = listing::parse_duration)]
    pub until: Option<u64>,
    /// On a remote store: spare packs, names and cache entries younger than this, and
    /// remove a condemned pack only this long after condemning it (pushes running beside gc
    /// must finish within it): 90s, 15m, 24h, 7d, 2w. A local store has its lock and needs
    /// no grace.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = listing::parse_duration)]
    pub grace: u64,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// On a remote store: spare packs, names and cache entries younger than this, and
    /// remove a condemned pack only this long after condemning it (pushes running beside gc
    /// must finish within it): 90s, 15m, 24h, 7d, 2w. A local store has its lock and needs
    /// no grace.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = listing::parse_duration)]
    pub grace: u64,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct StorePutArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The rootfs image file.
    pub rootfs: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Filesystem UUID to record.
    #[arg(long, default_value = "")]
    pub uuid: String,
    /// How to cut the files: fixed:SIZE or cdc:SIZE.
    #[arg(long, default_value_t = Chunking::DEFAULT)]
    pub chunking: Chunking,
}

pub fn ls(args: LsArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    // Nothing stored yet in the default place is an empty list; a --store that is not
    // there is most likely a typo, and an error.
    let unused_default = args.store.store.is_none()
        && matches!(args.store.location(), StoreLocation::Dir(root) if !root.exists());
    let images = if unused_default {
        Vec::new()
    } else {
        let store = args.store.open_existing(rt)?;
        let filters: Vec<Filter> = args.filter.into_iter().flatten().collect();
        listing::apply(&store, store.ls()?, &filters)?
    };
    let format = if global.json { Format::Json } else { args.format };
    listing::print(&images, &format, args.quiet);
    Ok(0)
}

pub fn inspect(args: InspectArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let store = args.store.open_existing(rt)?;
    let summaries = store.ls()?;
    let mut records = Vec::new();
    for reference in &args.images {
        let id = store.resolve(reference)?;
        let manifest = store.image(&id)?;
        let summary = summaries.iter().find(|s| s.id == id);
        records.push((id, manifest, summary));
    }
    if global.json {
        let images: Vec<_> = records
            .iter()
            .map(|(id, manifest, summary)| {
                json!({
                    "id": id,
                    "names": summary.map(|s| s.names.clone()).unwrap_or_default(),
                    "created": summary.map(|s| rfc3339(s.created)),
                    "stored_size": summary.map(|s| s.stored_size),
                    "manifest": manifest,
                })
            })
            .collect();
        output::json("inspect", json!({ "images": images }));
        return Ok(0);
    }
    for (i, (id, manifest, summary)) in records.iter().enumerate() {
        if i > 0 {
            output::line("");
        }
        inspect_summary(id, manifest, *summary);
    }
    Ok(0)
}

/// What a person wants to know of an image, one field a line.
fn inspect_summary(
    id: &ImageId,
    manifest: &diskc::store::StoredImage,
    summary: Option<&diskc::store::ImageSummary>,
) {
    let list = |items: &[String]| if items.is_empty() { "-".to_string() } else { items.join(" ") };
    output::line(format!("id:          {id}"));
    output::line(format!("names:       {}", summary.map_or("-".into(), |s| list(&s.names))));
    if let Some(s) = summary {
        output::line(format!("created:     {}", rfc3339(s.created)));
    }
    if let Some(source) = &manifest.source {
        output::line(format!("source:      {} ({})", source.reference, source.platform));
        output::line(format!("layers:      {}", source.layers.len()));
    }
    let config = &manifest.config;
    output::line(format!("entrypoint:  {}", list(&config.entrypoint)));
    output::line(format!("cmd:         {}", list(&config.cmd)));
    output::line(format!(
        "workdir:     {}",
        if config.working_dir.is_empty() { "/" } else { &config.working_dir }
    ));
    output::line(format!("user:        {}", if config.user.is_empty() { "root" } else { &config.user }));
    output::line(format!("env:         {}", list(&config.env)));
    let stored = summary.map(|s| format!(", {} stored", human_bytes(s.stored_size))).unwrap_or_default();
    output::line(format!("rootfs:      {}{stored}", human_bytes(manifest.rootfs.file.size)));
    output::line(format!("chunks:      {}", manifest.chunks().count()));
    match &manifest.boot {
        Some(boot) => {
            output::line(format!("boot:        kernel {}, cmdline {:?}", boot.kernel_version, boot.cmdline))
        }
        None => output::line("boot:        none (not bootable; convert again with --kernel and --modules)"),
    }
}

pub fn export(args: ExportArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    if args.output.as_os_str() == "-" {
        return Err(UsageError(
            "-o -: the rootfs is written sparse and needs a file it can seek in; give a file path \
             (-o rootfs.ext4)"
                .into(),
        )
        .into());
    }
    if args.output.is_dir() {
        return Err(UsageError(format!(
            "-o {}: is a directory; give the rootfs file to write, e.g. -o {}",
            args.output.display(),
            args.output.join("rootfs.ext4").display()
        ))
        .into());
    }
    let store = args.store.open_existing(rt)?;
    let id = store.resolve(&args.image)?;
    store
        .export_rootfs(&id, &args.output)
        .with_context(|| format!("cannot export image {} to {}", id.short(), args.output.display()))?;
    for (name, out) in [("kernel", &args.kernel_out), ("initrd", &args.initrd_out)] {
        if let Some(out) = out {
            store.export_file(&id, name, out).with_context(|| {
                format!("cannot export the {name} of image {} to {}", id.short(), out.display())
            })?;
        }
    }
    if global.json {
        output::json(
            "export",
            json!({"id": id, "rootfs": args.output, "kernel": args.kernel_out, "initrd": args.initrd_out}),
        );
    } else if !global.quiet {
        output::line(format!("exported {} to {}", id.short(), args.output.display()));
    }
    Ok(0)
}

pub fn tag(args: TagArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let store = args.store.open_existing(rt)?;
    let mut tagged = Vec::new();
    for name in &args.names {
        tagged.push((store.tag(&args.image, name)?, with_default_tag(name)));
    }
    if global.json {
        let names: Vec<&String> = tagged.iter().map(|(_, name)| name).collect();
        output::json("tag", json!({"id": tagged[0].0, "names": names}));
    } else if !global.quiet {
        for (id, name) in &tagged {
            output::line(format!("{} {name}", id.short()));
        }
    }
    Ok(0)
}

pub fn rm(args: RmArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let store = args.store.open_existing(rt)?;
    let mut removed = Vec::new();
    for image in &args.images {
        let done = store.rm(image)?;
        if !global.json && !global.quiet {
            print_removed(&done);
        }
        removed.push(done);
    }
    if global.json {
        output::json("rm", json!({ "removed": removed }));
    }
    Ok(0)
}

/// As `docker rmi` says it: the names untagged, then the image if it went.
fn print_removed(removed: &diskc::store::Removed) {
    for name in &removed.untagged {
        output::line(format!("untagged: {name}"));
    }
    if removed.deleted {
        output::line(format!("deleted: {}", removed.id));
    }
}

/// Removes images without a name (`--all`: every image) stored longer ago than `--until`,
/// then collects the chunks nothing uses any more.
pub fn prune(args: PruneArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let store = args.store.open_existing(rt)?;
    let now = listing::now();
    let mut removed = Vec::new();
    for image in store.ls()? {
        let old_enough = args.until.is_none_or(|until| image.created + until <= now);
        if old_enough && (args.all || image.names.is_empty()) {
            removed.push(store.rm(&image.id.to_string())?);
        }
    }
    let report = store.gc_with_grace(Duration::from_secs(args.grace))?;
    if global.json {
        output::json("prune", json!({ "removed": removed, "gc": report }));
    } else if !global.quiet {
        for done in &removed {
            print_removed(done);
        }
        output::line(format!(
            "removed {} images; freed {} in {} chunks",
            removed.len(),
            human_bytes(report.bytes_freed),
            report.chunks_removed
        ));
    }
    Ok(0)
}

pub fn gc(args: GcArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let store = args.store.open_existing(rt)?;
    let report = store.gc_with_grace(Duration::from_secs(args.grace))?;
    if global.json {
        output::json("gc", serde_json::to_value(&report).expect("a report serializes"));
    } else if !global.quiet {
        output::line(format!(
            "removed {} chunks ({}), kept {}; removed {} temp files and {} stale names or cache entries",
            report.chunks_removed,
            human_bytes(report.bytes_freed),
            report.chunks_kept,
            report.temp_files_removed,
            report.stale_entries_removed
        ));
        if store.upstream().is_some() {
            output::line(format!(
                "packs: {} removed, {} condemned (removed by a gc after the grace period), {} rescued, \
                 {} spared as young, {} written",
                report.packs_removed,
                report.packs_condemned,
                report.packs_rescued,
                report.packs_spared,
                report.packs_written
            ));
        }
    }
    Ok(0)
}

/// Exits 2 when anything is damaged.
pub fn verify(args: VerifyArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let report = args.store.open_existing(rt)?.verify()?;
    let code = if report.is_clean() { 0 } else { 2 };
    if global.json {
        output::json("verify", json!({"clean": report.is_clean(), "report": report}));
        return Ok(code);
    }
    for (chunk, problem) in &report.damaged_chunks {
        output::line(format!("damaged chunk {chunk}: {problem}"));
    }
    for image in &report.damaged_images {
        let names =
            if image.names.is_empty() { String::new() } else { format!(" ({})", image.names.join(", ")) };
        if image.manifest_damaged {
            output::line(format!("damaged image {}{names}: its manifest is damaged", image.id));
        } else {
            output::line(format!(
                "damaged image {}{names}: {} damaged and {} missing chunks",
                image.id,
                image.damaged_chunks.len(),
                image.missing_chunks.len()
            ));
        }
    }
    if !global.quiet {
        let verdict = if report.is_clean() { "clean" } else { "DAMAGED" };
        output::line(format!(
            "checked {} images and {} chunks: {verdict}",
            report.images_checked, report.chunks_checked
        ));
    }
    Ok(code)
}

pub fn store_put(args: StorePutArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let store = args.store.open(rt)?.with_chunking(args.chunking);
    let mut boot = Vec::new();
    if let Some(kernel) = &args.kernel {
        boot.push(("kernel", kernel.as_path()));
    }
    if let Some(initrd) = &args.initrd {
        boot.push(("initrd", initrd.as_path()));
    }
    let record = ImageRecord { uuid: args.uuid, ..Default::default() };
    let id = store
        .put_image(&args.rootfs, &boot, record)
        .with_context(|| format!("cannot store {}", args.rootfs.display()))?;
    if global.json {
        output::json("store-put", json!({ "id": id }));
    } else {
        output::line(id);
    }
    Ok(0)
}
