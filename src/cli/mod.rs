//! Command-line interface: one file per subcommand. Each turns its raw arguments into a
//! validated plan for the library before any work starts.

use clap::{Args, Parser, Subcommand};

use diskc::error::{Classify, ErrorClass};

pub mod store;

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
    /// Store a rootfs file as an image (for tests and measurements).
    #[command(hide = true)]
    StorePut(store::StorePutArgs),
}

/// Runs a parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Ls(args) => store::ls(args, global),
        Command::Inspect(args) => store::inspect(args, global),
        Command::Export(args) => store::export(args, global),
        Command::Tag(args) => store::tag(args, global),
        Command::Rm(args) => store::rm(args, global),
        Command::Gc(args) => store::gc(args, global),
        Command::Verify(args) => store::verify(args, global),
        Command::StorePut(args) => store::store_put(args, global),
    }
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

/// The error and its causes on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        // Skip a cause whose text the previous part already carries.
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The exit code of the first classified error in the chain; unclassified I/O errors are
/// environment failures.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(class) = classify(cause) {
            return class.exit_code() as u8;
        }
    }
    ErrorClass::Environment.exit_code() as u8
}

fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
    macro_rules! try_types {
        ($($t:ty),* $(,)?) => {$(
            if let Some(e) = cause.downcast_ref::<$t>() {
                return Some(e.class());
            }
        )*};
    }
    try_types!(diskc::error::UsageError, diskc::store::StoreError);
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        return Some(ErrorClass::of_io(io));
    }
    None
}
