//! `diskc boot ID|NAME|OUTDIR [OPTIONS] [-- CMD...]`: runs a built image under QEMU as
//! `docker run` would run it, with the program's stdout and stderr on ours, and exits with
//! its exit status. The options become a checked plan in the library (`diskc::boot::plan`),
//! which one call runs. With `--json` the program's stdout goes to stderr with the rest, and
//! stdout carries one object: the exit code, the timings and what the root disk served.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use diskc::boot::{BootError, BootPlan, BootRequest, Booted, Streams};
use diskc::error::Error;
use diskc::store::StoreError;

use super::output::{self, rounded_timings};
use super::store::StoreArgs;
use super::GlobalArgs;

#[derive(Args, Debug)]
pub struct BootArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// An image in the store (id, unambiguous id prefix or name), or the output directory of
    /// `diskc build`/`convert` (manifest.json, rootfs.ext4, vmlinuz, initrd.img).
    #[arg(value_name = "ID|NAME|OUTDIR")]
    pub image: String,
    /// Guest memory: MiB, or with a suffix M or G.
    #[arg(long, default_value = "256", value_name = "M")]
    pub memory: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Kill the guest after S seconds and exit 124, as timeout(1) does; 0 or none: no limit.
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// Attach the root disk read-only and mount it so.
    #[arg(long)]
    pub read_only: bool,
    /// The guest's network: `user` (QEMU's user-mode network: 10.0.2.15, the host at
    /// 10.0.2.2) or `none`.
    #[arg(long, default_value = "user", value_name = "user|none")]
    pub net: String,
    /// Publish a guest port on the host: [HOSTIP:][HOSTPORT:]GUESTPORT[/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs on a free host port (the mapping goes to stderr).
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Mount a host directory: HOSTDIR:GUESTDIR[:ro] (virtiofs; needs root).
    #[arg(short = 'v', long = "volume", value_name = "HOSTDIR:GUESTDIR[:ro]")]
    pub volume: Vec<String>,
    /// More logging on stderr (or `diskc -v boot`: here `-v` is --volume, as for `docker run`).
    // Having the global flag's id keeps clap from adding its `-v` to this subcommand; the
    // count still reaches the global flag.
    #[arg(id = "verbose", long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this one's value.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines; # comments).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Replace the image's ENTRYPOINT ("" for none); the image's CMD is then dropped.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// The program's working directory (created when missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as USER[:GROUP] (names or numbers, resolved in the image).
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// The guest's hostname.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Pass stdin to the program; its end is the program's end of file.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// The boot kernel's lib/modules/<version> directory, made into the guest's modules disk
    /// the first time (kept in the store).
    #[arg(long, env = "DISKC_MODULES", value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// The boot kernel on this host. With --modules, a boot from a remote store takes the
    /// kernel and initrd from this host when they are the image's very bytes (same digests)
    /// instead of fetching them.
    #[arg(long, env = "DISKC_KERNEL", value_name = "VMLINUZ")]
    pub kernel: Option<PathBuf>,
    /// Replaces the image's CMD for this boot (the ENTRYPOINT stays).
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

pub fn run(args: BootArgs, global: &GlobalArgs, rt: &tokio::runtime::Handle) -> Result<u8, Error> {
    let image = args.image.clone();
    let plan = BootPlan::new(BootRequest {
        image: args.image,
        memory: args.memory,
        cpus: args.cpus,
        timeout_s: args.timeout,
        read_only: args.read_only,
        net: args.net,
        publish: args.publish,
        publish_all: args.publish_all,
        volumes: args.volume,
        env: args.env,
        env_files: args.env_file,
        entrypoint: args.entrypoint,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname,
        interactive: args.interactive,
        modules: args.modules,
        kernel: args.kernel,
        cmd: args.cmd,
    })?;
    let store = args.store.open(rt)?;
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    // With --json, stdout is the JSON object's alone.
    let mut program_stdout = std::io::stderr();
    let streams = Streams {
        stdout: if global.json { &mut program_stdout } else { &mut stdout },
        stderr: &mut stderr,
        stdin: plan.interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
    };
    let booted = diskc::boot::boot(&store, &plan, streams).map_err(|e| {
        let context = match &e {
            BootError::Store(StoreError::NotFound(_)) => {
                format!("{image:?} is neither a directory nor an image in the store at {}", store.location())
            }
            _ => format!("booting {image}"),
        };
        Error::from(e).context(context)
    })?;
    let ended = booted.ended;
    if let Some(message) = ended.message() {
        eprintln!("diskc: {message}");
    }
    if let Some(failed) = booted.served.as_ref().map(|s| s.failed_reads).filter(|&n| n > 0) {
        eprintln!(
            "diskc: {failed} read(s) of image {image} failed (damaged chunks?): the guest got I/O errors"
        );
    }
    // From a remote store: what this boot fetched (boot files, then the chunks the guest read).
    let fetched = store.fetched_bytes() + booted.served.as_ref().map_or(0, |s| s.fetched_bytes);
    if fetched > 0 && !global.quiet && !global.json {
        eprintln!("diskc: fetched {} from {}", indicatif::HumanBytes(fetched), store.location());
    }
    if global.json {
        drop(stdout);
        output::json("boot", boot_json(&booted, fetched));
    }
    Ok(ended.exit_code())
}

fn boot_json(booted: &Booted, fetched_bytes: u64) -> serde_json::Value {
    let served = booted.served.as_ref();
    json!({
        "id": booted.image.map(|id| id.hex()),
        "exit_code": booted.ended.exit_code(),
        "timings": rounded_timings(booted.timings),
        "read_bytes": served.map_or(0, |s| s.read_bytes),
        "fetched_bytes": fetched_bytes,
        "prefetched_bytes": booted.prefetched.bytes,
        "fetches": booted.prefetched.fetches + served.map_or(0, |s| s.fetches),
        "boot_profile": booted.profile,
        "cache": served.map(|s| s.cache),
        "server": served.map(|s| {
            json!({"pid": s.pid, "boots": s.boots, "clients": s.clients, "read_bytes": s.server_read_bytes})
        }),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn parse(args: &[&str]) -> (Cli, super::BootArgs) {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Command::Boot(boot) = Cli::try_parse_from(args).unwrap().command else { panic!("not boot") };
        (cli, boot)
    }

    #[test]
    fn docker_run_flags_parse_and_v_is_a_volume() {
        let (cli, b) = parse(&[
            "diskc", "boot", "img", "-e", "A=1", "-p", "8080:80", "-v", "/h:/g:ro", "-w", "/w", "-u", "1:2",
            "-i", "--", "sh", "-c", "x",
        ]);
        assert_eq!(
            (b.env, b.publish, b.volume),
            (vec!["A=1".into()], vec!["8080:80".into()], vec!["/h:/g:ro".into()])
        );
        assert_eq!((b.workdir.as_deref(), b.user.as_deref(), b.interactive), (Some("/w"), Some("1:2"), true));
        assert_eq!(b.cmd, ["sh", "-c", "x"]);
        assert_eq!(cli.global.verbose, 0);
        // Logging stays reachable: before the subcommand, or spelled out after it.
        assert_eq!(parse(&["diskc", "-v", "boot", "img"]).0.global.verbose, 1);
        assert_eq!(parse(&["diskc", "boot", "img", "--verbose", "--verbose"]).0.global.verbose, 2);
    }
}
