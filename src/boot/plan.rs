//! `diskc boot` as a plan: the command line's values ([`BootRequest`]) checked once into a
//! [`BootPlan`] before anything starts, and [`boot`], which runs a plan: it sweeps what
//! killed boots left, gets the image's files (an OUTDIR in place, or a stored image's kernel
//! and initrd exported into a private directory and its rootfs served over NBD from the
//! store's chunks), the kernel's modules disk, free host ports for `-p`/`-P`, file servers
//! for `-v`, and then the VM.

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::nbd::DEFAULT_CACHE_BYTES;
use crate::store::{ImageId, Store};

use super::disk_server::{DiskServer, Served};
use super::fileserver::FileServers;
use super::guest::{RunConfig, DEFAULT_HOSTNAME};
use super::options::{self, OptionError, Protocol, Publish, Volume};
use super::profile::{self, Prefetched, ProfileUse};
use super::qemu::{kvm_works, Machine, MODULES_DEVICE, QEMU_BINARY};
use super::run::{self, Ended, SignalGuard, Streams};
use super::scratch::{self, Scratch};
use super::{modules_disk, BootError, BootSpec, HostKernel, RootDisk};

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An output directory of `diskc build`/`convert`, booted in place.
    Outdir(PathBuf),
    /// An image in the store: id, unambiguous id prefix or name.
    Stored(String),
}

/// The values of `diskc boot`'s command line, as given.
#[derive(Clone, Debug, Default)]
pub struct BootRequest {
    /// An existing directory is an OUTDIR; anything else names a stored image.
    pub image: String,
    /// MiB, or with a suffix M or G.
    pub memory: String,
    pub cpus: u32,
    pub timeout_s: Option<u64>,
    pub read_only: bool,
    /// `user` or `none`.
    pub net: String,
    pub publish: Vec<String>,
    pub publish_all: bool,
    pub volumes: Vec<String>,
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub entrypoint: Option<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub interactive: bool,
    /// The host's `lib/modules/<version>` of the boot kernel, for its modules disk.
    pub modules: Option<PathBuf>,
    /// The host's boot kernel: with `modules`, a boot from a remote store takes the kernel
    /// and initrd from here when they are the image's ([`super::host_files`]).
    pub kernel: Option<PathBuf>,
    pub cmd: Vec<OsString>,
}

/// A checked request.
#[derive(Clone, Debug)]
pub struct BootPlan {
    pub target: Target,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Option<Duration>,
    pub read_only: bool,
    pub network: bool,
    pub publish: Vec<Publish>,
    pub publish_all: bool,
    pub volumes: Vec<Volume>,
    pub interactive: bool,
    pub modules_dir: Option<PathBuf>,
    pub host_kernel: Option<HostKernel>,
    /// The guest's settings; network, stdin, volumes and the modules disk are filled in
    /// when the boot starts.
    pub run: RunConfig,
    pub qemu: PathBuf,
    /// `None`: KVM when it works, else TCG.
    pub kvm: Option<bool>,
    /// Decompressed chunks the root disk's server keeps (a boot from the store).
    pub cache_bytes: u64,
}

fn bad(flag: &'static str, value: &str, reason: &str) -> OptionError {
    OptionError { flag, value: value.to_string(), reason: reason.to_string() }
}

/// MiB from `256`, `256M` or `2G`; at least 64.
pub fn parse_memory(text: &str) -> Result<u32, OptionError> {
    let err = || bad("--memory", text, "expected MiB, e.g. 256, 256M or 2G");
    let (digits, factor) = match text.as_bytes().last() {
        Some(b'M' | b'm') => (&text[..text.len() - 1], 1),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 1024),
        _ => (text, 1),
    };
    let n: u32 = digits.parse().map_err(|_| err())?;
    let mib = n.checked_mul(factor).ok_or_else(err)?;
    if mib < 64 {
        return Err(bad("--memory", text, "the guest needs at least 64 MiB"));
    }
    Ok(mib)
}

impl BootPlan {
    /// Checks every value; reads the env files (`KEY` alone takes the value from this
    /// process's environment, as `docker run` does).
    pub fn new(req: BootRequest) -> Result<BootPlan, BootError> {
        let memory_mib = parse_memory(&req.memory)?;
        if req.cpus == 0 {
            return Err(bad("--cpus", "0", "at least 1").into());
        }
        let network = match req.net.as_str() {
            "user" => true,
            "none" => false,
            other => return Err(bad("--net", other, "expected user or none").into()),
        };
        let publish: Vec<Publish> = req.publish.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
        if !network && (!publish.is_empty() || req.publish_all) {
            return Err(bad("--net", "none", "-p and -P need the network").into());
        }
        let volumes: Vec<Volume> = req.volumes.iter().map(|v| v.parse()).collect::<Result<_, _>>()?;
        let host_env = |key: &str| std::env::var(key).ok();
        let mut env = Vec::new();
        for file in &req.env_files {
            let text = std::fs::read_to_string(file).map_err(|e| BootError::Read(file.clone(), e))?;
            env.extend(options::resolve_env("--env-file", &options::parse_env_file(&text), host_env)?);
        }
        env.extend(options::resolve_env("-e", &req.env, host_env)?);
        if let Some(dir) = &req.workdir {
            options::check_workdir(dir)?;
        }
        let hostname = req.hostname.unwrap_or_else(|| DEFAULT_HOSTNAME.to_string());
        options::check_hostname(&hostname)?;
        let target = if std::path::Path::new(&req.image).is_dir() {
            Target::Outdir(PathBuf::from(&req.image))
        } else {
            Target::Stored(req.image)
        };
        let cmd = (!req.cmd.is_empty()).then(|| req.cmd.into_iter().map(OsString::into_vec).collect());
        Ok(BootPlan {
            target,
            memory_mib,
            cpus: req.cpus,
            // 0, like none, is no limit (a guest killed at once helps nobody).
            timeout: req.timeout_s.filter(|&s| s > 0).map(Duration::from_secs),
            read_only: req.read_only,
            network,
            publish,
            publish_all: req.publish_all,
            volumes,
            interactive: req.interactive,
            host_kernel: req
                .kernel
                .zip(req.modules.clone())
                .map(|(kernel, modules)| HostKernel { kernel, modules }),
            modules_dir: req.modules,
            run: RunConfig {
                cmd,
                // Docker takes --entrypoint as one word, and "" as no ENTRYPOINT.
                entrypoint: req.entrypoint.map(|e| if e.is_empty() { Vec::new() } else { vec![e] }),
                env,
                workdir: req.workdir,
                user: req.user,
                hostname,
                ..RunConfig::default()
            },
            qemu: PathBuf::from(QEMU_BINARY),
            kvm: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
        })
    }
}

/// A free port on `ip` for `protocol`, as the kernel picks one: QEMU binds it a moment
/// later.
fn free_port(ip: Ipv4Addr, protocol: Protocol) -> std::io::Result<u16> {
    match protocol {
        Protocol::Tcp => TcpListener::bind((ip, 0))?.local_addr().map(|a| a.port()),
        Protocol::Udp => UdpSocket::bind((ip, 0))?.local_addr().map(|a| a.port()),
    }
}

/// Seconds from the start of [`boot`]: until QEMU started, until the guest program first
/// wrote, until the end.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BootTimings {
    pub prepare: f64,
    pub first_output: Option<f64>,
    pub total: f64,
}

/// How a boot went.
#[derive(Clone, Debug)]
pub struct Booted {
    pub ended: Ended,
    /// The stored image booted (`None` for an OUTDIR).
    pub image: Option<ImageId>,
    pub timings: BootTimings,
    /// What the root disk's server served (a boot from the store).
    pub served: Option<Served>,
    /// The image's boot profile's chunks fetched before the VM started.
    pub prefetched: Prefetched,
    pub profile: ProfileUse,
}

/// Runs `plan`, with the image found in (and the modules disk kept under) `store`; the
/// program's stdio on `streams`, `-p`/`-P` mappings the boot chose on `streams.stderr`.
pub fn boot(store: &Store, plan: &BootPlan, streams: Streams) -> Result<Booted, BootError> {
    let started = Instant::now();
    // From here on a signal stops the boot in order: what it made is removed.
    let signals = SignalGuard::install();
    let tmp = std::env::temp_dir();
    for dir in scratch::sweep(&tmp) {
        tracing::info!(dir = %dir.display(), "removed what a killed boot left");
    }
    let scratch = Scratch::create(&tmp).map_err(|e| BootError::Write(tmp.clone(), e))?;
    let mut prefetched = Prefetched::default();
    let (spec, image, mut disk_server) = match &plan.target {
        Target::Outdir(dir) => (BootSpec::from_outdir(dir)?, None, None),
        Target::Stored(reference) => {
            let (id, mut spec) =
                BootSpec::from_store(store, reference, scratch.path(), plan.host_kernel.as_ref())?;
            let RootDisk::Nbd { socket, export } = &mut spec.rootfs else {
                unreachable!("a stored rootfs is served")
            };
            let size = store.image(&id)?.rootfs.file.size;
            prefetched = profile::prefetch(store, &id);
            let server = DiskServer::attach(store, &id, size, socket, plan.cache_bytes)?;
            *export = server.export_name.clone();
            (spec, Some(id), Some(server))
        }
    };
    let modules_disk = modules_disk::find_or_make(
        store.root(),
        &spec.kernel_version,
        &spec.kernel_digest,
        plan.modules_dir.as_deref(),
    )?;

    let mut published = plan.publish.clone();
    if plan.publish_all {
        for port in &spec.config.exposed_ports {
            published.push(Publish::exposed(port)?);
        }
    }
    for p in &mut published {
        if p.host_port == 0 {
            let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            p.host_port = free_port(ip, p.protocol)
                .map_err(|e| BootError::Qemu(format!("cannot find a free port on {ip}: {e}")))?;
            let _ = writeln!(streams.stderr, "diskc: published {}", p.describe());
        }
    }
    let servers = FileServers::start(&plan.volumes, scratch.path())?;
    let run = RunConfig {
        network: plan.network,
        stdin: streams.stdin.is_some(),
        volumes: servers.mounts.clone(),
        modules_device: modules_disk.as_ref().map(|_| MODULES_DEVICE.to_string()),
        ..plan.run.clone()
    };
    let machine = Machine {
        spec: &spec,
        memory_mib: plan.memory_mib,
        cpus: plan.cpus,
        kvm: plan.kvm.unwrap_or_else(kvm_works),
        read_only: plan.read_only,
        modules_disk: modules_disk.as_deref(),
        network: plan.network.then_some(published.as_slice()),
        volumes: &servers.sockets,
        ports: &[],
    };
    let prepare = started.elapsed();
    let mut disk_gone = || disk_server.as_mut().and_then(DiskServer::gone);
    let finished = run::run(machine, &run, &plan.qemu, plan.timeout, streams, &signals, &mut disk_gone)?;
    // Without a profile, this boot's reads until its program started become it (unless the
    // boot was cut short: a timeout or a signal).
    let until = (prefetched.chunks == 0 && matches!(finished.ended, Ended::Exited(_)))
        .then(|| profile::unix_ms_at(finished.first_output.unwrap_or_else(Instant::now)));
    let served = disk_server.and_then(|server| server.stop(until));
    let recorded = match (image, &served, until) {
        (Some(id), Some(served), Some(_)) => profile::record(store, &id, &served.profile),
        _ => false,
    };
    let profile = match (prefetched.chunks > 0, recorded) {
        (true, _) => ProfileUse::Used,
        (false, true) => ProfileUse::Recorded,
        (false, false) => ProfileUse::None,
    };
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    Ok(Booted {
        ended: finished.ended,
        image,
        timings: BootTimings {
            prepare: prepare.as_secs_f64(),
            first_output: finished.first_output.map(since),
            total: started.elapsed().as_secs_f64(),
        },
        served,
        prefetched,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BootRequest {
        BootRequest {
            image: "no-such-dir".into(),
            memory: "256".into(),
            cpus: 1,
            net: "user".into(),
            ..Default::default()
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256").unwrap(), 256);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert!(parse_memory("32").is_err());
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn a_request_becomes_a_checked_plan() {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("env");
        std::fs::write(&env_file, "# settings\nA=from-file\nB=b\n").unwrap();
        let plan = BootPlan::new(BootRequest {
            env: vec!["A=from-flag".into()],
            env_files: vec![env_file],
            entrypoint: Some(String::new()),
            publish: vec!["8080:80".into()],
            cmd: vec!["sh".into()],
            ..request()
        })
        .unwrap();
        assert_eq!(plan.target, Target::Stored("no-such-dir".into()));
        // The env file first, then -e: the flag wins when the guest applies them in order.
        assert_eq!(plan.run.env, ["A=from-file", "B=b", "A=from-flag"]);
        assert_eq!(plan.run.entrypoint, Some(vec![]));
        assert_eq!(plan.run.cmd, Some(vec![b"sh".to_vec()]));
        assert_eq!(plan.run.hostname, DEFAULT_HOSTNAME);
        assert_eq!(plan.publish[0].guest_port, 80);

        let outdir =
            BootPlan::new(BootRequest { image: dir.path().display().to_string(), ..request() }).unwrap();
        assert_eq!(outdir.target, Target::Outdir(dir.path().to_path_buf()));
    }

    #[test]
    fn bad_requests_are_usage_errors() {
        use crate::error::{Classify, ErrorKind};
        let cases = [
            BootRequest { cpus: 0, ..request() },
            BootRequest { net: "bridge".into(), ..request() },
            BootRequest { net: "none".into(), publish: vec!["80".into()], ..request() },
            BootRequest { workdir: Some("relative".into()), ..request() },
            BootRequest { hostname: Some("bad name".into()), ..request() },
            BootRequest { volumes: vec!["rel:/x".into()], ..request() },
        ];
        for req in cases {
            let err = BootPlan::new(req.clone()).unwrap_err();
            assert_eq!(err.error_kind(), ErrorKind::Usage, "{req:?}: {err}");
        }
        let missing = BootRequest { env_files: vec!["/no/such/env".into()], ..request() };
        assert_eq!(BootPlan::new(missing).unwrap_err().error_kind(), ErrorKind::BadInput);
    }
}
