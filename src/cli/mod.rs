//! Command-line interface: one file per subcommand. Each turns its raw arguments into a
//! validated plan for the library before any work starts.

use clap::{Args, Parser, Subcommand};
use tokio::runtime::Handle;

use diskc::error::Error;

pub mod boot;
pub mod build;
pub mod convert;
pub mod mkfs;
pub mod store;
pub mod store_admin;
pub mod transfer;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  usage: the command line is wrong
  2  bad input: corrupt, missing or unsupported image, layer, Dockerfile or tree
  3  environment: Docker daemon down, registry unreachable, disk full, QEMU missing
  diskc boot exits with the guest program's exit status.";

#[derive(Parser)]
#[command(name = "diskc", version, about = "Compile a Dockerfile or any container image into a bootable VM disk image", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only the result: no progress.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More logging on stderr (-v, -vv); RUST_LOG works too.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
pub enum Command {
    /// Build a Dockerfile into an image with BuildKit, in the Docker daemon.
    Build(build::BuildArgs),
    /// Convert any container image into rootfs.ext4 + manifest.json.
    Convert(convert::ConvertArgs),
    /// Make an ext4 image from a directory, without root: a faster `mkfs.ext4 -d`.
    Mkfs(mkfs::MkfsArgs),
    /// Boot a built image under QEMU; exits with the guest program's exit status.
    Boot(boot::BootArgs),
    /// List the images in the store.
    Ls(store::LsArgs),
    /// Print an image's manifest.
    Inspect(store::InspectArgs),
    /// Write an image's rootfs (and optionally kernel and initrd) out of the store.
    Export(store::ExportArgs),
    /// Give an image a name.
    Tag(store::TagArgs),
    /// Remove an image and its names from the store (its chunks go at the next gc).
    Rm(store::RmArgs),
    /// Remove chunks no image references, and leftovers of interrupted writes.
    Gc(store::GcArgs),
    /// Re-hash every chunk and report damaged images (exit 2 on damage).
    Verify(store::VerifyArgs),
    /// Copy an image and its names to another store, sending only what it lacks.
    Push(transfer::TransferArgs),
    /// Copy an image from another store, fetching only what this store lacks.
    Pull(transfer::TransferArgs),
    /// The store's upkeep: `diskc store migrate` moves a format-2 store into packs.
    Store(store_admin::StoreAdminArgs),
    /// Store a rootfs file as an image (for tests and measurements).
    #[command(hide = true)]
    StorePut(store::StorePutArgs),
}

/// Runs a parsed command on `rt`, the process's runtime; returns the process exit code.
pub fn run(cli: Cli, rt: &Handle) -> Result<u8, Error> {
    let global = &cli.global;
    match cli.command {
        Command::Build(args) => build::run(args, global, rt),
        Command::Convert(args) => convert::run(args, global, rt),
        Command::Mkfs(args) => mkfs::run(args, global),
        Command::Boot(args) => boot::run(args),
        Command::Ls(args) => store::ls(args, global),
        Command::Inspect(args) => store::inspect(args, global),
        Command::Export(args) => store::export(args, global),
        Command::Tag(args) => store::tag(args, global),
        Command::Rm(args) => store::rm(args, global),
        Command::Gc(args) => store::gc(args, global),
        Command::Verify(args) => store::verify(args, global),
        Command::Push(args) => transfer::push(args, global, rt),
        Command::Pull(args) => transfer::pull(args, global, rt),
        Command::Store(args) => store_admin::run(args, global),
        Command::StorePut(args) => store::store_put(args, global),
    }
}

/// A filesystem size on the command line: `auto` (None) or bytes with K, M, G, T suffixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeArg(pub Option<u64>);

pub fn parse_size(s: &str) -> Result<SizeArg, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(SizeArg(None));
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
    n.checked_mul(1 << shift).map(|b| SizeArg(Some(b))).ok_or_else(|| format!("{s:?} is too large"))
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
