//! `diskc build`: a Dockerfile and its context, built by BuildKit in the Docker daemon, then
//! converted like `diskc convert docker-daemon:` into a bootable image in the store.
//!
//! The arguments become a [`BuildPlan`]; the library runs it and reports [`BuildEvent`]s,
//! which this file shows on stderr the way `docker build --progress=plain` does (or as a
//! compact live view on a terminal). The result goes to stdout: a human line, the bare
//! image id with `--quiet`, or one JSON object with `--json`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::runtime::Handle;

use diskc::build::{self, BuildEvent, BuildPlan, Builder};
use diskc::error::{Error, UsageError};
use diskc::pipeline::{self, Progress};

use super::convert::{print_result, OutputArgs};
use super::progress::{ConvertDisplay, Shown};
use super::GlobalArgs;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The build context: the directory whose files the Dockerfile can COPY.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile); it may live outside the context.
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    pub dockerfile: Option<PathBuf>,
    /// Name the image NAME[:TAG]; repeatable.
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// A build-time variable; `K` alone takes its value from the environment.
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
    /// Build this stage instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Build for this platform, os/arch[/variant].
    #[arg(long, value_name = "PLATFORM", value_parser = super::convert::parse_platform)]
    pub platform: Option<String>,
    /// Do not use BuildKit's cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Set a label on the image; repeatable.
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// The daemon's builder: BuildKit, or the classic one for daemons without BuildKit.
    #[arg(long, value_enum, default_value_t = BuilderArg::Buildkit)]
    pub builder: BuilderArg,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub farm: super::farm::FarmArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuilderArg {
    Buildkit,
    Classic,
}

/// Turns the arguments into a plan; `env` answers `--build-arg K` without a value.
pub fn plan(args: &BuildArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<BuildPlan, UsageError> {
    let mut build_args = BTreeMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                build_args.insert(k.to_owned(), v.to_owned());
            }
            Some(_) => return Err(UsageError(format!("--build-arg {arg:?}: the name before `=` is empty"))),
            // Like docker: a bare name passes the caller's variable, and nothing if unset.
            None => {
                if let Some(v) = env(arg) {
                    build_args.insert(arg.clone(), v);
                }
            }
        }
    }
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        match label.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_owned(), v.to_owned());
            }
            _ => return Err(UsageError(format!("--label {label:?}: expected KEY=VALUE"))),
        }
    }
    for tag in &args.tags {
        build::check_tag(tag).map_err(|problem| UsageError(format!("--tag {tag:?}: {problem}")))?;
    }
    Ok(BuildPlan {
        context: args.context.clone(),
        dockerfile: args.dockerfile.clone(),
        tags: args.tags.clone(),
        build_args,
        labels,
        target: args.target.clone(),
        platform: args.platform.clone(),
        no_cache: args.no_cache,
        builder: match args.builder {
            BuilderArg::Buildkit => Builder::BuildKit,
            BuilderArg::Classic => Builder::Classic,
        },
    })
}

pub fn run(args: BuildArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    if args.farm.farm.is_some() {
        return super::farm::submit_build(args, global, rt);
    }
    let plan = plan(&args, &|name| std::env::var(name).ok())?;
    let mut display = BuildProgress::new(args.output.progress.shown(global), global);
    let result = pipeline::build(&plan, &args.output.plan(Vec::new()), rt, &mut |p| display.show(p));
    display.finish();
    let built = result?;
    let mut extra = serde_json::Map::new();
    extra.insert("image_id".into(), built.image_id.clone().into());
    extra.insert("tags".into(), built.tags.clone().into());
    print_result("build", &built.converted, global, extra);
    Ok(0)
}

/// A build's progress on stderr: BuildKit's steps as `docker build` shows them, then the
/// conversion's. The build farm's submitter shows a worker's progress through it too.
pub struct BuildProgress {
    display: Box<dyn Display>,
    converting: Option<ConvertDisplay>,
    shown: Shown,
    json: bool,
}

impl BuildProgress {
    pub fn new(shown: Shown, global: &GlobalArgs) -> Self {
        let display: Box<dyn Display> = match shown {
            Shown::Quiet => Box::new(Silent),
            Shown::Tty => Box::new(Live::new()),
            Shown::Plain => Box::new(Plain),
        };
        BuildProgress { display, converting: None, shown, json: global.json }
    }

    pub fn show(&mut self, progress: Progress) {
        match progress {
            Progress::Build(event) => self.display.show(event),
            Progress::Built { image_id, tags } => {
                self.display.finish();
                if self.shown != Shown::Quiet && !self.json {
                    eprintln!("built {image_id}{}", tags_suffix(&tags));
                }
                self.converting = Some(ConvertDisplay::new(self.shown));
            }
            other => {
                if let Some(converting) = &mut self.converting {
                    converting.show(other);
                }
            }
        }
    }

    pub fn finish(&mut self) {
        self.display.finish();
        if let Some(converting) = &mut self.converting {
            converting.finish();
        }
    }
}

fn tags_suffix(tags: &[String]) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        format!(" as {}", tags.join(", "))
    }
}

trait Display {
    fn show(&mut self, event: BuildEvent);
    fn finish(&mut self) {}
}

struct Silent;

impl Display for Silent {
    fn show(&mut self, _: BuildEvent) {}
}

/// `docker build --progress=plain`: one line per event, on stderr.
struct Plain;

impl Display for Plain {
    fn show(&mut self, event: BuildEvent) {
        if let Some(line) = plain_line(&event) {
            eprintln!("{line}");
        }
    }
}

fn plain_line(event: &BuildEvent) -> Option<String> {
    Some(match event {
        BuildEvent::StepStarted { step, name } => format!("#{step} {name}"),
        BuildEvent::StepLog { step, seconds, line } => format!("#{step} {seconds:.3} {line}"),
        BuildEvent::StepProgress { step, id, current, done: true, .. } if *current > 0 => {
            format!("#{step} {id} {} done", human_bytes(*current))
        }
        BuildEvent::StepProgress { step, id, done: true, .. } => format!("#{step} {id} done"),
        BuildEvent::StepProgress { .. } => return None,
        BuildEvent::StepCached { step } => format!("#{step} CACHED"),
        BuildEvent::StepDone { step, seconds } => format!("#{step} DONE {seconds:.1}s"),
        BuildEvent::StepFailed { step, error } => format!("#{step} ERROR: {error}"),
        BuildEvent::Warning { step: Some(step), message } => format!("#{step} WARNING: {message}"),
        BuildEvent::Warning { step: None, message } => format!("WARNING: {message}"),
        BuildEvent::Output { line } => line.clone(),
    })
}

/// Sizes the way BuildKit's progress writes them: 76B, 2.35kB, 1.20MB.
fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n}B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.2}{unit}")
}

/// On a terminal: finished steps scroll by as one line each, and a spinner shows the
/// step that is running with its latest output line.
struct Live {
    bar: indicatif::ProgressBar,
    names: HashMap<usize, String>,
}

impl Live {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Live { bar, names: HashMap::new() }
    }

    fn name(&self, step: usize) -> &str {
        self.names.get(&step).map_or("", String::as_str)
    }
}

impl Display for Live {
    fn show(&mut self, event: BuildEvent) {
        match event {
            BuildEvent::StepStarted { step, name } => {
                self.bar.set_message(format!("#{step} {name}"));
                self.names.insert(step, name);
            }
            BuildEvent::StepLog { step, line, .. } => {
                self.bar.set_message(format!("#{step} {}: {line}", self.name(step)));
            }
            BuildEvent::StepProgress { .. } => {}
            BuildEvent::StepCached { step } => {
                self.bar.println(format!("#{step} {} CACHED", self.name(step)))
            }
            BuildEvent::StepDone { step, seconds } => {
                self.bar.println(format!("#{step} {} DONE {seconds:.1}s", self.name(step)))
            }
            BuildEvent::StepFailed { step, error } => {
                self.bar.println(format!("#{step} {} ERROR: {error}", self.name(step)))
            }
            BuildEvent::Warning { .. } | BuildEvent::Output { .. } => {
                if let Some(line) = plain_line(&event) {
                    self.bar.println(line);
                }
            }
        }
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(argv: &[&str]) -> BuildArgs {
        let cli = crate::cli::Cli::parse_from(
            std::iter::once("diskc").chain(std::iter::once("build")).chain(argv.iter().copied()),
        );
        match cli.command {
            crate::cli::Command::Build(args) => args,
            #[allow(unreachable_patterns)]
            _ => unreachable!(),
        }
    }

    #[test]
    fn arguments_become_a_plan() {
        let args = parse(&[
            "ctx",
            "-f",
            "df",
            "-t",
            "a:1",
            "-t",
            "b",
            "--build-arg",
            "X=1",
            "--build-arg",
            "FROM_ENV",
            "--build-arg",
            "UNSET",
            "--label",
            "k=v=w",
            "--target",
            "s",
            "--no-cache",
            "--builder",
            "classic",
        ]);
        let env = |name: &str| (name == "FROM_ENV").then(|| String::from("env value"));
        let plan = plan(&args, &env).unwrap();
        assert_eq!(plan.context, PathBuf::from("ctx"));
        assert_eq!(plan.dockerfile, Some(PathBuf::from("df")));
        assert_eq!(plan.tags, ["a:1", "b"]);
        assert_eq!(
            plan.build_args.into_iter().collect::<Vec<_>>(),
            [("FROM_ENV".into(), "env value".into()), ("X".into(), "1".into())]
        );
        assert_eq!(plan.labels.get("k").map(String::as_str), Some("v=w"));
        assert_eq!(plan.target.as_deref(), Some("s"));
        assert!(plan.no_cache);
        assert_eq!(plan.builder, Builder::Classic);
    }

    #[test]
    fn malformed_labels_and_args_are_usage_errors() {
        let none = |_: &str| None;
        assert!(plan(&parse(&["--label", "novalue"]), &none).is_err());
        assert!(plan(&parse(&["--build-arg", "=x"]), &none).is_err());
        assert!(plan(&parse(&["-t", "Upper/case"]), &none).is_err());
    }

    #[test]
    fn plain_lines_look_like_docker_build() {
        let line = |e| plain_line(&e).unwrap();
        assert_eq!(line(BuildEvent::StepStarted { step: 3, name: "[2/2] RUN x".into() }), "#3 [2/2] RUN x");
        assert_eq!(line(BuildEvent::StepLog { step: 3, seconds: 0.29, line: "hi".into() }), "#3 0.290 hi");
        assert_eq!(line(BuildEvent::StepCached { step: 4 }), "#4 CACHED");
        assert_eq!(line(BuildEvent::StepDone { step: 4, seconds: 0.34 }), "#4 DONE 0.3s");
        assert_eq!(human_bytes(76), "76B");
        assert_eq!(human_bytes(2345), "2.35kB");
    }
}
