//! `diskc convert SOURCE`: any container image to a root filesystem, its manifest and its
//! boot files, kept in the store and/or written to an output directory.

use std::path::PathBuf;

use clap::Args;
use tokio::runtime::Handle;

use diskc::error::Error;
use diskc::pipeline::{self, ConvertPlan, Converted, HostKernel, OutputPlan, RootfsOptions};
use diskc::source::registry::{parse_creds, Credentials, RegistryOptions};
use diskc::source::SourceRef;

use super::progress::{ConvertDisplay, ProgressMode};
use super::store::StoreArgs;
use super::{output, parse_size, CliError, GlobalArgs, SizeArg};

#[derive(Args, Debug)]
#[command(after_help = "\
SOURCE names an image the way skopeo does:
  docker-daemon:NAME[:TAG]      an image in the local Docker Engine
  oci:DIR[:REF]                 an OCI image layout directory
  oci-archive:FILE[:REF]        a tar of an OCI image layout
  docker-archive:FILE[:REF]     a `docker save` archive
  docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry (plain HTTP on loopback;
                                credentials as `docker pull` finds them, or --creds;
                                429 and 5xx answers are tried again with backoff)

The image is kept in the store and its id printed; -o also writes OUTDIR/rootfs.ext4,
OUTDIR/manifest.json and, with a kernel, OUTDIR/vmlinuz and OUTDIR/initrd.img.")]
pub struct ConvertArgs {
    /// The image to convert (see below).
    pub source: String,
    /// The platform the image must be for, os/arch[/variant]: picked from a multi-platform
    /// image, else an error naming the platforms it has [default: an index's linux/amd64,
    /// a single image as it is].
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<String>,
    /// Name the stored image (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME", conflicts_with = "no_store")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub farm: super::farm::FarmArgs,
}

/// How a `docker://` SOURCE is reached, with skopeo's flags.
#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// Registry credentials, instead of the Docker config's.
    #[arg(long, value_name = "USER:PASSWORD", value_parser = parse_creds)]
    pub creds: Option<Credentials>,
    /// The Docker config file with the credentials (auths, credHelpers, credsStore)
    /// [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// `--tls-verify=false`: accept any certificate, and plain HTTP from a registry without
    /// TLS (a test registry). Loopback registries are always plain HTTP.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub tls_verify: bool,
}

impl RegistryArgs {
    pub fn options(&self) -> Result<RegistryOptions, CliError> {
        if let Some(file) = self.authfile.as_ref().filter(|f| !f.is_file()) {
            return Err(CliError::MissingAuthfile(file.clone()));
        }
        Ok(RegistryOptions {
            insecure: !self.tls_verify,
            docker_config: self.authfile.clone(),
            credentials: self.creds.clone(),
        })
    }
}

/// Where an image goes and how it is laid out; shared by `convert` and `build`.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Also write the image to OUTDIR; it appears whole or not at all.
    #[arg(short, long, value_name = "OUTDIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Do not keep the image in the store (then -o is needed).
    #[arg(long, requires = "output")]
    pub no_store: bool,
    /// The kernel to boot with (a bzImage) [default: the image's own /boot/vmlinuz-*].
    #[arg(long, env = "DISKC_KERNEL", value_name = "VMLINUZ", requires = "modules")]
    pub kernel: Option<PathBuf>,
    /// The kernel's modules: its lib/modules/<version> directory.
    #[arg(long, env = "DISKC_MODULES", value_name = "DIR", requires = "kernel")]
    pub modules: Option<PathBuf>,
    /// Filesystem size: `auto` (content plus headroom) or bytes with K, M, G, T suffixes.
    #[arg(long, default_value = "auto", value_parser = parse_size)]
    pub size: SizeArg,
    /// Leave out the ext4 journal (for images only ever mounted read-only).
    #[arg(long)]
    pub no_journal: bool,
    /// Seconds since the epoch: the filesystem's own time [default: the newest mtime in the
    /// image].
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
    /// How progress shows on stderr: bars on a terminal (tty), lines (plain), or nothing.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, value_name = "MODE")]
    pub progress: ProgressMode,
}

impl OutputArgs {
    /// Where the image goes; `names` are given to the stored image.
    pub fn plan(&self, names: Vec<String>) -> OutputPlan {
        OutputPlan {
            outdir: self.output.clone(),
            store: (!self.no_store).then(|| self.store.location()),
            rootfs: RootfsOptions {
                size: self.size.0,
                journal: !self.no_journal,
                source_date_epoch: self.source_date_epoch,
            },
            kernel: match (&self.kernel, &self.modules) {
                (Some(kernel), Some(modules)) => {
                    Some(HostKernel { kernel: kernel.clone(), modules: modules.clone() })
                }
                _ => None,
            },
            build_inputs: Default::default(),
            names,
        }
    }
}

pub fn run(args: ConvertArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    if args.farm.farm.is_some() {
        return super::farm::submit_convert(args, global, rt);
    }
    let plan = ConvertPlan {
        source: args.source.parse::<SourceRef>()?,
        input: args.source.clone(),
        platform: args.platform.clone(),
        registry: args.registry.options()?,
        output: args.output.plan(args.names.clone()),
    };
    let mut display = ConvertDisplay::new(args.output.progress.shown(global));
    let converted = pipeline::convert(&plan, rt, &mut |p| display.show(p));
    display.finish();
    print_result("convert", &converted?, global, serde_json::Map::new());
    Ok(0)
}

/// `os/arch[/variant]`, each part lowercase letters, digits, `_` or `-`: a malformed platform
/// is a usage error before any work starts.
pub fn parse_platform(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
    };
    if (2..=3).contains(&parts.len()) && parts.iter().all(part_ok) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a platform: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"
        ))
    }
}

/// Said once, on stderr, when an image got no boot part.
const NO_KERNEL: &str = "diskc: note: no kernel found (none given, none in the image): the image \
will not be bootable. Add one with --kernel VMLINUZ --modules DIR, or DISKC_KERNEL and \
DISKC_MODULES (scripts/fetch-kernel.sh prints them).";

/// One line for people, or one JSON object (with `extra` fields) for machines; a note on
/// stderr when the image cannot boot.
pub fn print_result(
    command: &str,
    converted: &Converted,
    global: &GlobalArgs,
    mut extra: serde_json::Map<String, serde_json::Value>,
) {
    let m = &converted.manifest;
    if m.boot.is_none() && !global.quiet {
        eprintln!("{NO_KERNEL}");
    }
    if global.json {
        let fields = serde_json::json!({
            "id": m.id,
            "cache_hit": converted.cache_hit,
            "layers_reused": converted.layers_reused,
            "store_reused_bytes": converted.store_reused_bytes,
            "daemon_layers": converted.daemon_layers,
            "outdir": converted.outdir,
            "rootfs": m.rootfs,
            "source": m.source,
            "config": m.config,
            "boot": m.boot,
            "timings": output::rounded_timings(&converted.timings),
        });
        if let serde_json::Value::Object(fields) = fields {
            extra.extend(fields);
        }
        output::json(command, serde_json::Value::Object(extra));
    } else if global.quiet {
        output::line(m.id.as_deref().unwrap_or(&m.rootfs.digest.to_string()));
    } else {
        let id = m.id.as_deref().map(|id| format!("image {id}")).unwrap_or_else(|| "not stored".into());
        let outdir = converted.outdir.as_ref().map(|d| format!(" -> {}", d.display())).unwrap_or_default();
        let boot = if m.boot.is_some() { "bootable" } else { "no kernel" };
        let hit = if converted.cache_hit { ", from the cache" } else { "" };
        output::line(format!(
            "{}{outdir}: {id} ({:.1} MiB rootfs, {boot}{hit}), {:.2}s",
            m.source.reference,
            m.rootfs.size as f64 / (1 << 20) as f64,
            converted.timings.total
        ));
    }
}
