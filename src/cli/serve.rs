//! `diskc serve ID|NAME --nbd unix:PATH|tcp:HOST:PORT`: serves a stored image's rootfs
//! read-only over NBD until SIGINT or SIGTERM, for hypervisors that take a block device
//! (`nbd-client` makes it `/dev/nbdN`) or speak NBD themselves (QEMU). Every client shares
//! one cache; what they read and what the cache held is reported when the server stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use diskc::error::{Error, ResultExt};
use diskc::nbd::{Address, ControlServer, Export, ExportStats, Server, SharedPaths, DEFAULT_CACHE_BYTES};

use super::listing::human_bytes;
use super::store::StoreArgs;
use super::{output, parse_size, GlobalArgs, SizeArg};

#[derive(Args, Debug)]
#[command(after_help = "\
The export is read-only; its name is the image id, and the default export (\"\") is the
same image. Stop the server with Ctrl-C or SIGTERM: it then prints what it served.
  diskc serve app --nbd unix:/run/app.sock &
  nbd-client -unix /run/app.sock /dev/nbd0 -readonly
  qemu-system-x86_64 ... -drive file=nbd+unix:///?socket=/run/app.sock,format=raw,snapshot=on")]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The image: id, unambiguous id prefix or name.
    #[arg(value_name = "ID|NAME")]
    pub image: String,
    /// Where to listen: a unix socket, or a TCP address (the export has no authentication:
    /// keep it on loopback or a network you trust).
    #[arg(long, value_name = "unix:PATH|tcp:HOST:PORT")]
    pub nbd: String,
    /// Decompressed chunks kept in memory for all clients together (K, M, G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "SIZE")]
    pub cache_size: SizeArg,
    /// (`diskc boot`'s shared server) The inherited control socket of the boots.
    #[arg(long, hide = true, value_name = "FD", requires = "shared")]
    pub control: Option<i32>,
    /// (`diskc boot`'s shared server) Its files' BASE path (BASE.sock, BASE.ctl, BASE.lock).
    #[arg(long, hide = true, value_name = "BASE", requires = "control")]
    pub shared: Option<std::path::PathBuf>,
    /// (`diskc boot`'s shared server) Milliseconds to stay after the last boot left.
    #[arg(long, hide = true, default_value_t = 2000, value_name = "MS")]
    pub linger_ms: u64,
}

pub fn run(args: ServeArgs, global: &GlobalArgs, rt: &tokio::runtime::Handle) -> Result<u8, Error> {
    let address: Address = args.nbd.parse()?;
    let cache_bytes = args.cache_size.0.unwrap_or(DEFAULT_CACHE_BYTES);
    if cache_bytes < 1 << 20 {
        return Err(Error::usage(format!("--cache-size {}: at least 1M", args.cache_size.0.unwrap_or(0))));
    }
    let store = args.store.open_existing(rt)?;
    let id = store.resolve(&args.image)?;
    let export = Arc::new(
        Export::from_store(&store, &id, cache_bytes).with_context(|| format!("serving {}", args.image))?,
    );
    // With a boot profile, the chunks a boot reads first are decompressed while the VM
    // starts, before it asks for them (from a remote store, the boot fetched them already).
    if let Ok(Some(profile)) = store.boot_profile(&id) {
        let export = export.clone();
        std::thread::spawn(move || {
            let loaded = export.warm(&profile);
            tracing::info!(chunks = loaded, "cache warmed from the boot profile");
        });
    }
    let server = Server::bind(&address, export.clone())?;
    let shared = match (args.control, &args.shared) {
        (Some(fd), Some(base)) => {
            let control = ControlServer::adopt(fd, export.clone()).context("the boots' control socket")?;
            Some((control, SharedPaths { base: base.clone() }))
        }
        _ => None,
    };
    let linger = Duration::from_millis(args.linger_ms);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot handle signals")?;
    }
    let shown = match (&address, server.local_port()) {
        (Address::Tcp(addr), Some(port)) => format!("tcp:{}:{port}", addr.ip()),
        _ => address.to_string(),
    };
    if !global.quiet {
        eprintln!(
            "diskc: serving image {} ({}) read-only over NBD on {shown}; export name \"\" or the id",
            id.short(),
            human_bytes(export.size())
        );
    }
    // A shared server also ends once its boots have gone (see `diskc::nbd::control`).
    let ended = || shared.as_ref().is_some_and(|(control, paths)| control.should_end(linger, paths));
    server.serve(&|| stop.load(Ordering::SeqCst) || ended())?;
    drop(server);
    let stats = export.stats();
    if !global.quiet {
        eprintln!("diskc: {}", summary(&stats));
    }
    if global.json {
        output::json(
            "serve",
            json!({
                "id": id.hex(),
                "address": shown,
                "clients": stats.clients,
                "read_bytes": stats.read_bytes,
                "failed_reads": stats.failed_reads,
                "fetched_bytes": stats.fetched_bytes,
                "cache": stats.cache,
            }),
        );
    }
    Ok(0)
}

/// One line on what a server did: clients, bytes, the cache's memory.
pub fn summary(stats: &ExportStats) -> String {
    let c = &stats.cache;
    format!(
        "served {} client(s) {} in {} reads ({} failed); cache {} in {} chunks (peak {} of {}), {} chunks decompressed, {} hits; fetched {}",
        stats.clients,
        human_bytes(stats.read_bytes),
        stats.read_requests,
        stats.failed_reads,
        human_bytes(c.bytes),
        c.chunks,
        human_bytes(c.peak_bytes),
        human_bytes(c.limit_bytes),
        c.loads,
        c.hits,
        human_bytes(stats.fetched_bytes),
    )
}
