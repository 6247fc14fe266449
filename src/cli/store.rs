//! `diskc ls | inspect | export | tag | rm | gc | verify`: the commands over the image store,
//! plus the hidden `diskc store-put` that stores a rootfs file directly (for tests that kill a
//! put mid-way, and for measuring chunking strategies on real images).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use diskc::error::{Error, ResultExt};
use diskc::store::{Chunking, ImageRecord, Store};

use super::GlobalArgs;

/// Where the store lives; shared by every command that uses it.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The store's directory [default: $DISKC_STORE, else $XDG_CACHE_HOME/diskc, else
    /// ~/.cache/diskc].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    pub fn open(&self) -> Result<Store, Error> {
        let root = self.store.clone().unwrap_or_else(Store::default_root);
        Store::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))
    }
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image id (an unambiguous prefix will do) or name.
    pub image: String,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image id (an unambiguous prefix will do) or name.
    pub image: String,
    /// Where to write the rootfs (sparse, byte-identical to what was stored).
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
    /// The new name, such as `app:latest`.
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image id (an unambiguous prefix will do) or name; the image goes with all its names.
    pub image: String,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
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

pub fn ls(args: LsArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let images = args.store.open()?.ls()?;
    if global.json {
        let rows: Vec<_> = images
            .iter()
            .map(|i| {
                json!({"id": i.id, "names": i.names, "size": i.size, "stored_size": i.stored_size,
                       "created": rfc3339(i.created)})
            })
            .collect();
        println!("{}", json!({ "images": rows }));
        return Ok(0);
    }
    println!("{:<12}  {:<24}  {:>10}  {:>10}  CREATED", "ID", "NAME", "SIZE", "STORED");
    for image in images {
        let names = if image.names.is_empty() { "-".to_string() } else { image.names.join(",") };
        println!(
            "{:<12}  {:<24}  {:>10}  {:>10}  {}",
            image.id.short(),
            names,
            human_bytes(image.size),
            human_bytes(image.stored_size),
            rfc3339(image.created)
        );
    }
    Ok(0)
}

pub fn inspect(args: InspectArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let store = args.store.open()?;
    let id = store.resolve(&args.image)?;
    let manifest = store.manifest(&id)?;
    if global.json {
        let names: Vec<String> =
            store.names()?.into_iter().filter(|(_, n)| *n == id).map(|(name, _)| name).collect();
        println!("{}", json!({"id": id, "names": names, "manifest": manifest}));
    } else {
        println!("{}", serde_json::to_string_pretty(&manifest).expect("a manifest serializes"));
    }
    Ok(0)
}

pub fn export(args: ExportArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let store = args.store.open()?;
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
        println!(
            "{}",
            json!({"id": id, "rootfs": args.output, "kernel": args.kernel_out, "initrd": args.initrd_out})
        );
    } else if !global.quiet {
        println!("exported {} to {}", id.short(), args.output.display());
    }
    Ok(0)
}

pub fn tag(args: TagArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let id = args.store.open()?.tag(&args.image, &args.name)?;
    if global.json {
        println!("{}", json!({"id": id, "name": args.name}));
    } else if !global.quiet {
        println!("{} {}", id.short(), args.name);
    }
    Ok(0)
}

pub fn rm(args: RmArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let (id, names) = args.store.open()?.rm(&args.image)?;
    if global.json {
        println!("{}", json!({"id": id, "names": names}));
    } else if !global.quiet {
        println!("removed {}", id);
    }
    Ok(0)
}

pub fn gc(args: GcArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let report = args.store.open()?.gc()?;
    if global.json {
        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
    } else if !global.quiet {
        println!(
            "removed {} chunks ({}), kept {}; removed {} temp files and {} stale names or cache entries",
            report.chunks_removed,
            human_bytes(report.bytes_freed),
            report.chunks_kept,
            report.temp_files_removed,
            report.stale_entries_removed
        );
    }
    Ok(0)
}

/// Exits 2 when anything is damaged.
pub fn verify(args: VerifyArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let report = args.store.open()?.verify()?;
    let code = if report.is_clean() { 0 } else { 2 };
    if global.json {
        println!("{}", json!({"clean": report.is_clean(), "report": report}));
        return Ok(code);
    }
    for (chunk, problem) in &report.damaged_chunks {
        println!("damaged chunk {chunk}: {problem}");
    }
    for image in &report.damaged_images {
        let names =
            if image.names.is_empty() { String::new() } else { format!(" ({})", image.names.join(", ")) };
        if image.manifest_damaged {
            println!("damaged image {}{names}: its manifest is damaged", image.id);
        } else {
            println!(
                "damaged image {}{names}: {} damaged and {} missing chunks",
                image.id,
                image.damaged_chunks.len(),
                image.missing_chunks.len()
            );
        }
    }
    if !global.quiet {
        let verdict = if report.is_clean() { "clean" } else { "DAMAGED" };
        println!("checked {} images and {} chunks: {verdict}", report.images_checked, report.chunks_checked);
    }
    Ok(code)
}

pub fn store_put(args: StorePutArgs, global: &GlobalArgs) -> Result<u8, Error> {
    let store = args.store.open()?.with_chunking(args.chunking);
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
        println!("{}", json!({ "id": id }));
    } else {
        println!("{id}");
    }
    Ok(0)
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time (days to civil date after H. Hinnant's
/// published algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
