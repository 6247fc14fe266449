//! Command-line interface: one file per subcommand. Each turns its raw arguments into a
//! validated plan for the library before any work starts.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio::runtime::Handle;

use diskc::error::{Classify, Error, ErrorKind};

pub mod boot;
pub mod build;
pub mod convert;
pub mod farm;
pub mod generate;
pub mod listing;
pub mod mkfs;
pub mod output;
pub mod progress;
pub mod serve;
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
    /// The store, for every command that uses one (a subcommand's own --store wins): a
    /// directory, or s3://BUCKET[/PREFIX] or file:///PATH, read and written through the local
    /// store [default: $DISKC_STORE, else $XDG_CACHE_HOME/diskc, else ~/.cache/diskc].
    #[arg(long, value_name = "DIR|URL")]
    pub store: Option<PathBuf>,
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
    /// Serve an image's rootfs read-only over NBD, for other hypervisors or nbd-client.
    Serve(serve::ServeArgs),
    /// List the images in the store.
    Ls(store::LsArgs),
    /// Show images: a summary, or with --json the full record.
    Inspect(store::InspectArgs),
    /// Write an image's rootfs (and optionally kernel and initrd) out of the store.
    Export(store::ExportArgs),
    /// Give an image one or more names.
    Tag(store::TagArgs),
    /// Remove names, and the images left without one (by id: the image and all its names).
    Rm(store::RmArgs),
    /// Remove images without a name (--all: every image), then their unused chunks.
    Prune(store::PruneArgs),
    /// Remove chunks no image references, and leftovers of interrupted writes.
    Gc(store::GcArgs),
    /// Re-hash every chunk and report damaged images (exit 2 on damage).
    Verify(store::VerifyArgs),
    /// Print a shell completion script: bash, zsh or fish.
    Completion(generate::CompletionArgs),
    /// Write manual pages (diskc.1, diskc-COMMAND.1) into a directory.
    Man(generate::ManArgs),
    /// Copy an image and its names to another store, sending only what it lacks.
    Push(transfer::TransferArgs),
    /// Copy an image from another store, fetching only what this store lacks.
    Pull(transfer::PullArgs),
    /// The store's upkeep: `diskc store migrate` moves a format-2 store into packs.
    Store(store_admin::StoreAdminArgs),
    /// Run build-farm jobs from a NATS JetStream queue, pushing images to a remote store.
    Worker(farm::WorkerArgs),
    /// The build farm: wait for a detached job, or show the queue and the workers.
    Farm(farm::FarmCommandArgs),
    /// Store a rootfs file as an image (for tests and measurements).
    #[command(hide = true)]
    StorePut(store::StorePutArgs),
}

/// Runs a parsed command on `rt`, the process's runtime; returns the process exit code.
pub fn run(mut cli: Cli, rt: &Handle) -> Result<u8, Error> {
    if let Some(store) = cli.global.store.take() {
        if let Some(args) = cli.command.store_args() {
            args.store.get_or_insert(store);
        }
    }
    let global = &cli.global;
    match cli.command {
        Command::Build(args) => build::run(args, global, rt),
        Command::Convert(args) => convert::run(args, global, rt),
        Command::Mkfs(args) => mkfs::run(args, global),
        Command::Boot(args) => boot::run(args, global, rt),
        Command::Serve(args) => serve::run(args, global, rt),
        Command::Ls(args) => store::ls(args, global, rt),
        Command::Inspect(args) => store::inspect(args, global, rt),
        Command::Export(args) => store::export(args, global, rt),
        Command::Tag(args) => store::tag(args, global, rt),
        Command::Rm(args) => store::rm(args, global, rt),
        Command::Prune(args) => store::prune(args, global, rt),
        Command::Gc(args) => store::gc(args, global, rt),
        Command::Verify(args) => store::verify(args, global, rt),
        Command::Completion(args) => generate::completion(args),
        Command::Man(args) => generate::man(args, global),
        Command::Push(args) => transfer::push(args, global, rt),
        Command::Pull(args) => transfer::pull(args, global, rt),
        Command::Store(args) => store_admin::run(args, global, rt),
        Command::StorePut(args) => store::store_put(args, global, rt),
        Command::Worker(args) => farm::worker(args, global, rt),
        Command::Farm(args) => farm::run(args, global, rt),
    }
}

impl Command {
    /// The command's own `--store`, where it has one: the global `--store` fills it in.
    fn store_args(&mut self) -> Option<&mut store::StoreArgs> {
        match self {
            Command::Build(args) => Some(&mut args.output.store),
            Command::Convert(args) => Some(&mut args.output.store),
            Command::Mkfs(_) | Command::Completion(_) | Command::Man(_) | Command::Worker(_) => None,
            Command::Farm(args) => match &mut args.command {
                farm::FarmCommand::Wait(wait) => Some(&mut wait.store),
                farm::FarmCommand::Status(_) => None,
            },
            Command::Boot(args) => Some(&mut args.store),
            Command::Serve(args) => Some(&mut args.store),
            Command::Ls(args) => Some(&mut args.store),
            Command::Inspect(args) => Some(&mut args.store),
            Command::Export(args) => Some(&mut args.store),
            Command::Tag(args) => Some(&mut args.store),
            Command::Rm(args) => Some(&mut args.store),
            Command::Prune(args) => Some(&mut args.store),
            Command::Gc(args) => Some(&mut args.store),
            Command::Verify(args) => Some(&mut args.store),
            Command::Push(args) => Some(&mut args.store),
            Command::Pull(args) => Some(&mut args.transfer.store),
            Command::Store(args) => match &mut args.command {
                store_admin::StoreAdminCommand::Migrate(migrate) => Some(&mut migrate.store),
            },
            Command::StorePut(args) => Some(&mut args.store),
        }
    }
}

/// What the command line names that is not there, or not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "no store at {0}: nothing has been stored there yet; check --store or DISKC_STORE \
         (build or convert create a store)"
    )]
    NoStore(PathBuf),
    #[error("the store at {0} is not a directory: give --store (or DISKC_STORE) a directory")]
    StoreNotADirectory(PathBuf),
    #[error("SOURCE {0} does not exist: give a directory, a tar file, or - for a tar on stdin")]
    MissingSource(PathBuf),
    #[error("--authfile {0} is not a file: give the Docker config file that holds the credentials (docker login writes ~/.docker/config.json)")]
    MissingAuthfile(PathBuf),
}

impl Classify for CliError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            CliError::NoStore(_) | CliError::MissingSource(_) | CliError::MissingAuthfile(_) => {
                ErrorKind::BadInput
            }
            CliError::StoreNotADirectory(_) => ErrorKind::Usage,
        }
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .init();
}

/// Colour codes only for a person at a terminal: never into a pipe or a file, and never when
/// `NO_COLOR` is set to anything non-empty (no-color.org).
fn colour_on_stderr() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
