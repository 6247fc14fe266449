//! The build farm on the command line: `diskc worker`, submissions (`build`/`convert` with
//! `--farm URL`), `diskc farm wait JOB` and `diskc farm status`.
//!
//! A submission does locally only what needs the submitter's files: it packs the build
//! context (or resolves the image's config digest), computes the job's key, and hands the job
//! to the farm; it shows the worker's progress as a local run shows its own, and ends with
//! the same exit code and message a local run would have given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::runtime::Handle;
use tokio::sync::watch;

use diskc::digest::Digest;
use diskc::error::{Error, ResultExt};
use diskc::farm::job::JobKernel;
use diskc::farm::status::FarmStatus;
use diskc::farm::worker::{LogLine, WorkerConfig};
use diskc::farm::{context, status, submit, worker, Farm, Job, JobEvent, JobState, Task};
use diskc::pipeline::Progress;
use diskc::source::SourceRef;
use diskc::store::{Remote, Store};

use super::build::{BuildArgs, BuildProgress};
use super::convert::{ConvertArgs, OutputArgs};
use super::progress::{ConvertDisplay, ProgressMode};
use super::{output, GlobalArgs};

/// `--farm` and what goes with it, for `build` and `convert`.
#[derive(Args, Debug, Clone, Default)]
pub struct FarmArgs {
    /// Run the job on the build farm whose NATS server is at URL (`diskc worker` runs it).
    #[arg(long, value_name = "URL", conflicts_with = "no_store")]
    pub farm: Option<String>,
    /// With --farm: pull the image into the local store too (-o and -t imply it).
    #[arg(long, requires = "farm")]
    pub pull: bool,
    /// With --farm: print the job id and return; `diskc farm wait JOB` waits for it.
    #[arg(long, requires = "farm")]
    pub detach: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
The worker takes jobs from the farm's queue (a JetStream work queue on the NATS server),
runs them with its own Docker daemon and local store, pushes each image to REMOTE and only
then acknowledges the job. SIGTERM drains it: it finishes the jobs it holds and takes no
new one. With --json it prints one JSON line per job event (started, done, failed, retry,
dead, answered).")]
pub struct WorkerArgs {
    /// The NATS server (with JetStream) the farm runs on, e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// The remote store images go to: s3://BUCKET[/PREFIX] (AWS_* environment) or file:///PATH.
    #[arg(long, value_name = "REMOTE")]
    pub store: String,
    /// The local store the worker caches conversions in [default: the default store].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Jobs run at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// How long a job may go without a sign of life before another worker gets it: 90s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of a job that keeps failing for the environment before it is given up.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliver: u32,
    /// The worker's name in `diskc farm status` [default: HOST-PID].
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct FarmCommandArgs {
    #[command(subcommand)]
    pub command: FarmCommand,
}

#[derive(Subcommand, Debug)]
pub enum FarmCommand {
    /// Wait for a job submitted with --detach; print its image id.
    Wait(WaitArgs),
    /// The queue's depth, the workers and the jobs they are running.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The job id a submission printed.
    pub job: String,
    /// The NATS server the farm runs on.
    #[arg(long, value_name = "URL")]
    pub nats: String,
    /// Pull the image into the local store too (-o implies it).
    #[arg(long)]
    pub pull: bool,
    /// Also write the image to OUTDIR, as `convert -o` does.
    #[arg(short, long, value_name = "OUTDIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub store: super::store::StoreArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The NATS server the farm runs on.
    #[arg(long, value_name = "URL")]
    pub nats: String,
}

/// `90s`, `2m`, `1h`, `500ms`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 2m or 500ms"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{text:?}: unknown unit {unit:?}: use ms, s, m or h")),
    };
    if duration < Duration::from_secs(1) {
        return Err(format!("{text:?} is too short: JetStream needs at least a second"));
    }
    Ok(duration)
}

/// `diskc build CONTEXT --farm URL`.
pub fn submit_build(args: BuildArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let plan = super::build::plan(&args, &|name| std::env::var(name).ok())?;
    let packed = context::pack(&plan)?;
    let task = Task::Build {
        context: packed.digest.clone(),
        dockerfile: packed.dockerfile.clone(),
        build_args: plan.build_args,
        labels: plan.labels,
        target: plan.target,
        platform: plan.platform,
        no_cache: plan.no_cache,
        builder: format!("{:?}", plan.builder).to_lowercase(),
    };
    let job = job(task, &args.output, args.context.display().to_string())?;
    let mut display = BuildProgress::new(args.output.progress.shown(global), global);
    let result = run_submission(
        &job,
        Submission { farm: &args.farm, output: &args.output, names: &args.tags, command: "build" },
        Some(&packed),
        global,
        rt,
        &mut |p| display.show(p),
    );
    display.finish();
    result
}

/// `diskc convert SOURCE --farm URL`.
pub fn submit_convert(args: ConvertArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let source: SourceRef = args.source.parse()?;
    // The key names the image by its config digest, resolved here (manifest and config only).
    let config = diskc::source::open(rt, &source, args.platform.as_deref(), &args.registry.options()?)
        .with_context(|| format!("converting {}", args.source))?
        .resolved()
        .config_digest;
    let task = Task::Convert {
        source: args.source.clone(),
        platform: args.platform.clone().unwrap_or_default(),
        config: config.to_string(),
    };
    let job = job(task, &args.output, args.source.clone())?;
    let mut display = ConvertDisplay::new(args.output.progress.shown(global));
    let result = run_submission(
        &job,
        Submission { farm: &args.farm, output: &args.output, names: &args.names, command: "convert" },
        None,
        global,
        rt,
        &mut |p| display.show(p),
    );
    display.finish();
    result
}

/// The job for `task`, laid out by the same flags a local run takes.
fn job(task: Task, output: &OutputArgs, input: String) -> Result<Job, Error> {
    let kernel = match (&output.kernel, &output.modules) {
        (Some(kernel), Some(modules)) => {
            let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            let bytes =
                std::fs::read(kernel).with_context(|| format!("reading kernel {}", kernel.display()))?;
            Some(JobKernel {
                kernel: absolute(kernel),
                modules: absolute(modules),
                digest: Digest::of(&bytes).hex(),
            })
        }
        _ => None,
    };
    Ok(Job {
        task,
        size: output.size.0,
        journal: !output.no_journal,
        source_date_epoch: output.source_date_epoch,
        kernel,
        input,
    })
}

struct Submission<'a> {
    farm: &'a FarmArgs,
    output: &'a OutputArgs,
    names: &'a [String],
    command: &'a str,
}

fn run_submission(
    job: &Job,
    submission: Submission<'_>,
    packed: Option<&context::PackedContext>,
    global: &GlobalArgs,
    rt: &Handle,
    show: &mut dyn FnMut(Progress),
) -> Result<u8, Error> {
    let url = submission.farm.farm.as_deref().expect("only called with --farm");
    let quiet = global.quiet;
    let (submitted, state) = rt.block_on(async {
        let farm = Farm::connect(url).await?;
        if let Some(packed) = packed {
            let sent = context::upload(&farm, packed).await?;
            if !quiet {
                let size = indicatif::HumanBytes(packed.size);
                let how = if sent { format!("sent ({size})") } else { "already in the farm".into() };
                eprintln!("diskc: build context {} {how}", &packed.digest[..12]);
            }
        }
        let events = submit::events(&farm, &job.key()).await?;
        let submitted = submit::submit(&farm, job).await?;
        if submission.farm.detach {
            return Ok::<_, Error>((submitted, None));
        }
        let state =
            submit::wait(&farm, &submitted.job, Some(events), &mut |e| show_event(e, quiet, show)).await?;
        Ok((submitted, Some(state)))
    })?;
    let Some(state) = state else {
        if global.json {
            output::json(
                submission.command,
                serde_json::json!({ "job": submitted.job, "coalesced": submitted.coalesced }),
            );
        } else {
            output::line(&submitted.job);
        }
        return Ok(0);
    };
    let state = submit::outcome(state)?;
    let pull = submission.farm.pull || submission.output.output.is_some() || !submission.names.is_empty();
    let store = submission.output.store.store.clone().unwrap_or_else(Store::default_root);
    let outdir = if pull {
        fetch(&state, &store, submission.names, submission.output.output.as_deref(), &job.input, rt)?
    } else {
        None
    };
    print_done(submission.command, &state, submitted.coalesced, pull, outdir.as_deref(), global);
    Ok(0)
}

/// Shows a worker's event on stderr as a local run shows its progress.
fn show_event(event: JobEvent, quiet: bool, show: &mut dyn FnMut(Progress)) {
    match event {
        JobEvent::Progress(p) => show(p),
        _ if quiet => {}
        JobEvent::Taken { worker, attempt: 1 } => eprintln!("diskc: worker {worker} took the job"),
        JobEvent::Taken { worker, attempt } => {
            eprintln!("diskc: worker {worker} took the job (attempt {attempt})")
        }
        JobEvent::Pushing { store } => eprintln!("diskc: pushing the image to {store}"),
        JobEvent::Retrying { error, after_seconds } => {
            eprintln!("diskc: the attempt failed ({error}); the job is queued again in {after_seconds}s")
        }
    }
}

/// Pulls the job's image into the local store, names it, and writes OUTDIR when asked.
fn fetch(
    state: &JobState,
    store: &Path,
    names: &[String],
    outdir: Option<&Path>,
    input: &str,
    rt: &Handle,
) -> Result<Option<PathBuf>, Error> {
    let (Some(id), Some(url)) = (&state.id, &state.store) else {
        return Err(Error::usage("the farm's result names no image or store"));
    };
    let remote = Remote::open(url, rt)?;
    let local = Store::open(store)?;
    let pulled = local.pull(id, &remote, &|_| {}).with_context(|| format!("pulling {id} from {url}"))?;
    for name in names {
        local.tag(id, name)?;
    }
    if let Some(outdir) = outdir {
        diskc::pipeline::export_outdir(store, &pulled.id, input, outdir)?;
    }
    Ok(outdir.map(Path::to_path_buf))
}

fn print_done(
    command: &str,
    state: &JobState,
    coalesced: bool,
    pulled: bool,
    outdir: Option<&Path>,
    global: &GlobalArgs,
) {
    let id = state.id.clone().unwrap_or_default();
    if global.json {
        output::json(
            command,
            serde_json::json!({
                "id": id,
                "job": state.job,
                "worker": state.worker,
                "coalesced": coalesced,
                "store": state.store,
                "pulled": pulled,
                "outdir": outdir,
            }),
        );
    } else if global.quiet {
        output::line(id);
    } else {
        let worker = state.worker.as_deref().unwrap_or("?");
        let how = if coalesced { ", coalesced" } else { "" };
        let outdir = outdir.map(|d| format!(" -> {}", d.display())).unwrap_or_default();
        output::line(format!(
            "{}{outdir}: image {id} (job {}, worker {worker}{how})",
            state.input,
            &state.job[..12]
        ));
    }
}

/// `diskc worker`.
pub fn worker(args: WorkerArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let name = args.name.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let config = WorkerConfig {
        name,
        remote: args.store.clone(),
        cache: args.cache.clone().unwrap_or_else(Store::default_root),
        concurrency: usize::from(args.concurrency),
        ack_wait: args.ack_wait,
        max_deliver: args.max_deliver,
    };
    let (stop, stopped) = watch::channel(false);
    drain_on_signals(stop);
    let json = global.json;
    let log = std::sync::Arc::new(move |line: &LogLine| {
        if json {
            let fields = serde_json::to_value(line).expect("a log line serializes");
            output::json("worker", fields);
        } else {
            let mut text = format!(
                "{} {} {} (job {}, attempt {})",
                line.event,
                line.kind,
                line.input,
                &line.job[..12],
                line.attempt
            );
            if let Some(id) = &line.id {
                text.push_str(&format!(": image {id}"));
            }
            if let Some(error) = &line.error {
                text.push_str(&format!(": {error}"));
            }
            output::line(text);
        }
    });
    if !global.quiet {
        eprintln!("diskc: worker {} on {}, pushing to {}", config.name, args.nats, config.remote);
    }
    rt.block_on(worker::run(&args.nats, config, rt.clone(), stopped, log))?;
    Ok(0)
}

/// The first SIGINT, SIGTERM or SIGHUP drains the worker; a second one stops it at once,
/// removing unfinished outputs as any other command does.
fn drain_on_signals(stop: watch::Sender<bool>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::spawn(move || {
        let mut draining = false;
        for signal in signals.forever() {
            if draining {
                diskc::pipeline::remove_unfinished();
                std::process::exit(128 + signal);
            }
            draining = true;
            eprintln!("diskc: draining: finishing the jobs held, taking no new one");
            let _ = stop.send(true);
        }
    });
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// `diskc farm wait` and `diskc farm status`.
pub fn run(args: FarmCommandArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    match args.command {
        FarmCommand::Wait(args) => wait(args, global, rt),
        FarmCommand::Status(args) => {
            let status = rt.block_on(async {
                let farm = Farm::connect(&args.nats).await?;
                status::status(&farm).await
            })?;
            print_status(&status, global);
            Ok(0)
        }
    }
}

fn wait(args: WaitArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let quiet = global.quiet;
    let mut display = ConvertDisplay::new(ProgressMode::Auto.shown(global));
    let state = rt.block_on(async {
        let farm = Farm::connect(&args.nats).await?;
        let events = submit::events(&farm, &args.job).await?;
        submit::wait(&farm, &args.job, Some(events), &mut |e| show_event(e, quiet, &mut |p| display.show(p)))
            .await
    });
    display.finish();
    let state = submit::outcome(state?)?;
    let pull = args.pull || args.output.is_some();
    let store = args.store.store.clone().unwrap_or_else(Store::default_root);
    let outdir =
        if pull { fetch(&state, &store, &[], args.output.as_deref(), &state.input, rt)? } else { None };
    print_done("farm-wait", &state, false, pull, outdir.as_deref(), global);
    Ok(0)
}

fn print_status(status: &FarmStatus, global: &GlobalArgs) {
    let now = diskc::farm::now();
    if global.json {
        output::json("farm-status", serde_json::to_value(status).expect("a status serializes"));
        return;
    }
    output::line(format!(
        "queue: {} waiting, {} running, {} dead letters; {} workers",
        status.queued,
        status.running,
        status.dead_letters,
        status.workers.len()
    ));
    for worker in &status.workers {
        output::line(format!(
            "{}: {}/{} jobs, last seen {}s ago, pushing to {}",
            worker.name,
            worker.jobs.len(),
            worker.concurrency,
            now.saturating_sub(worker.last_seen),
            worker.store
        ));
        for job in &worker.jobs {
            output::line(format!(
                "  {} {} (job {}) for {}s",
                job.kind,
                job.input,
                &job.job[..12],
                now.saturating_sub(job.started)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("500ms").is_err(), "under a second");
        assert!(parse_duration("").is_err());
    }
}
