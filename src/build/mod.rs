//! The first stage of the pipeline: a Dockerfile and its context become an image in the
//! Docker daemon, built by BuildKit through the Engine API.
//!
//! diskc does not build images itself: BuildKit already runs every `RUN`, caches every
//! step, and stores the result where `docker-daemon:` (the next stage) reads it. What this
//! module adds is the part `docker build` does on the client side, without needing the
//! Docker CLI: it streams the context as a tar (honouring `.dockerignore`), opens a BuildKit
//! session, turns BuildKit's status stream into [`BuildEvent`]s for whoever shows progress,
//! and turns the daemon's error text into a [`BuildError`] that says which mistake it was.
//! It never asks the daemon to pull: base images resolve from the local image store, so
//! builds work offline and do not change under the user.
//!
//! [`build_image`] is synchronous: it runs its async part on the caller's runtime (a
//! [`Handle`]; the library never starts one), so it must be called from outside that
//! runtime, as blocking code is (in an async caller, from `spawn_blocking`).

mod context;
mod daemon;
pub(crate) mod dockerignore;
mod failure;
mod progress;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bollard::models::{BuildInfo, BuildInfoAux, ImageId};
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion, TagImageOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::runtime::Handle;

use crate::error::{Classify, ErrorKind};

pub use context::{write_context, ContextError, ContextSpec};
use failure::FailureContext;
pub use progress::{FailedStep, TAIL_LINES};

/// Which of the daemon's builders runs the Dockerfile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Builder {
    /// BuildKit (`version=2`): parallel stages, cache, the progress stream.
    #[default]
    BuildKit,
    /// The classic builder (`version=1`), for daemons without BuildKit; only on request.
    Classic,
}

/// Everything a build needs, validated by the caller.
#[derive(Clone, Debug, Default)]
pub struct BuildPlan {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile; `None` means `Dockerfile` in the context. It may live outside the
    /// context.
    pub dockerfile: Option<PathBuf>,
    /// `NAME[:TAG]` names to give the image.
    pub tags: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// The stage to build (`--target`); `None` builds the last one.
    pub target: Option<String>,
    /// `os[/arch[/variant]]`; `None` is the daemon's own platform.
    pub platform: Option<String>,
    pub no_cache: bool,
    pub builder: Builder,
}

/// The image the daemon now holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BuiltImage {
    /// The image id, `sha256:...`.
    pub image_id: String,
    pub tags: Vec<String>,
}

/// What a build is doing, for progress displays. `step` is the `#N` that
/// `docker build --progress=plain` shows: steps are numbered in the order BuildKit first
/// mentions them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum BuildEvent {
    /// The step started, or was found in the cache (then [`BuildEvent::StepCached`] follows).
    StepStarted {
        step: usize,
        name: String,
    },
    /// A line of the step's output; `seconds` since the step started.
    StepLog {
        step: usize,
        seconds: f64,
        line: String,
    },
    /// A transfer or other counted activity of the step (`total` when known).
    StepProgress {
        step: usize,
        id: String,
        current: i64,
        total: Option<i64>,
        done: bool,
    },
    StepCached {
        step: usize,
    },
    StepDone {
        step: usize,
        seconds: f64,
    },
    StepFailed {
        step: usize,
        error: String,
    },
    Warning {
        step: Option<usize>,
        message: String,
    },
    /// A line of the classic builder's output (it has no structured progress).
    Output {
        line: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Connect(#[from] crate::docker::DockerError),
    #[error(
        "the Docker daemon at {host} (Engine {engine}, API {api}, {os}) has no BuildKit, which \
         needs API 1.39 (Engine 18.09) or newer on Linux; upgrade the daemon, or build with the \
         classic builder by passing --builder classic"
    )]
    NoBuildKit { host: String, engine: String, api: String, os: String },
    #[error("context {}: not a directory", .0.display())]
    ContextNotADirectory(PathBuf),
    #[error("build context {}", .context.display())]
    Context {
        context: PathBuf,
        #[source]
        source: ContextError,
    },
    #[error("Dockerfile {}: {source}", .path.display())]
    DockerfileUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Dockerfile {dockerfile}: syntax error at line {line}: {detail}")]
    DockerfileSyntax { dockerfile: String, line: u32, detail: String },
    #[error("step `{step}` failed with exit code {code}{}", last_output(.last_lines))]
    RunFailed { step: String, code: i64, last_lines: Vec<String> },
    #[error(
        "base image {image} is not present locally, and diskc never pulls: build, load or import \
         it into the daemon first (`docker image ls` shows what it has)"
    )]
    MissingBaseImage { image: String },
    #[error("build failed: {message}")]
    Failed { message: String },
    #[error("the Docker daemon refused the build: {message}")]
    Refused { message: String },
    #[error("the Docker daemon failed during the build: {0}")]
    Daemon(String),
    #[error("the Docker daemon finished the build without reporting an image id")]
    NoImageId,
    #[error("cannot tag {image_id} as {tag}: {reason}")]
    Tag { image_id: String, tag: String, reason: String },
}

fn last_output(lines: &[String]) -> String {
    if lines.is_empty() {
        String::from(" and no output")
    } else {
        format!("; its last output: {}", lines.join(" | "))
    }
}

impl Classify for BuildError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            BuildError::ContextNotADirectory(_)
            | BuildError::Context { .. }
            | BuildError::DockerfileUnreadable { .. }
            | BuildError::DockerfileSyntax { .. }
            | BuildError::RunFailed { .. }
            | BuildError::MissingBaseImage { .. }
            | BuildError::Failed { .. }
            | BuildError::Refused { .. } => ErrorKind::BadInput,
            BuildError::Connect(_)
            | BuildError::NoBuildKit { .. }
            | BuildError::Daemon(_)
            | BuildError::NoImageId
            | BuildError::Tag { .. } => ErrorKind::Environment,
        }
    }
}

/// Builds `plan` in the Docker daemon, reporting progress to `on_event`.
pub fn build_image(
    rt: &Handle,
    plan: &BuildPlan,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<BuiltImage, BuildError> {
    let prepared = prepare(plan)?;
    rt.block_on(run(plan, prepared, on_event))
}

/// Writes the context of `plan` to `out` as the tar a build sends the daemon (`.dockerignore`
/// applied, the Dockerfile included); returns the Dockerfile's name inside it. The build farm
/// ships a context this way, and a worker builds the unpacked tar with that Dockerfile.
pub fn write_build_context(plan: &BuildPlan, out: impl Write) -> Result<String, BuildError> {
    let prepared = prepare(plan)?;
    write_context(&prepared.context, out)
        .map_err(|source| BuildError::Context { context: plan.context.clone(), source })?;
    Ok(prepared.dockerfile_in_tar)
}

/// The local half of a build, resolved before the daemon is contacted.
struct Prepared {
    context: ContextSpec,
    /// The Dockerfile's path inside the tar.
    dockerfile_in_tar: String,
    /// The Dockerfile as the user named it, for messages.
    dockerfile_shown: String,
}

fn prepare(plan: &BuildPlan) -> Result<Prepared, BuildError> {
    let context = &plan.context;
    if !context.is_dir() {
        return Err(BuildError::ContextNotADirectory(context.clone()));
    }
    let dockerfile = plan.dockerfile.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let unreadable = |source| BuildError::DockerfileUnreadable { path: dockerfile.clone(), source };
    let bytes = std::fs::read(&dockerfile).map_err(unreadable)?;
    let context_abs = context.canonicalize().map_err(|source| BuildError::Context {
        context: context.clone(),
        source: ContextError { path: context.clone(), source },
    })?;
    let dockerfile_abs = dockerfile.canonicalize().map_err(unreadable)?;
    let inside =
        dockerfile_abs.strip_prefix(&context_abs).ok().and_then(|rel| rel.to_str()).map(str::to_owned);
    let ignore_path = context.join(".dockerignore");
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => dockerignore::Ignore::parse(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => dockerignore::Ignore::default(),
        Err(source) => {
            return Err(BuildError::Context {
                context: context.clone(),
                source: ContextError { path: ignore_path, source },
            })
        }
    };
    let mut always = vec![String::from(".dockerignore")];
    let (dockerfile_in_tar, extra_dockerfile) = match inside {
        Some(rel) => {
            always.push(rel.clone());
            (rel, None)
        }
        None => {
            // Named after its content so that the same Dockerfile gives the same context
            // bytes (and BuildKit's cache a chance), and unlikely to meet a context file.
            let name = format!(".diskc.Dockerfile.{}", &hex::encode(Sha256::digest(&bytes))[..16]);
            (name.clone(), Some((name, bytes)))
        }
    };
    Ok(Prepared {
        context: ContextSpec { root: context.clone(), ignore, always, extra_dockerfile },
        dockerfile_in_tar,
        dockerfile_shown: dockerfile.display().to_string(),
    })
}

/// A session id no other build on the daemon uses: BuildKit routes its callbacks by it.
fn session_id() -> String {
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.finish()
    };
    format!("diskc-{}-{:016x}{:016x}", std::process::id(), random(1), random(2))
}

async fn run(
    plan: &BuildPlan,
    prepared: Prepared,
    on_event: &mut dyn FnMut(BuildEvent),
) -> Result<BuiltImage, BuildError> {
    let docker = daemon::connect(plan.builder).await?;
    let session = session_id();
    let build_args: HashMap<&str, &str> =
        plan.build_args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let labels: HashMap<&str, &str> = plan.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&prepared.dockerfile_in_tar)
        .nocache(plan.no_cache)
        .rm(true)
        .buildargs(&build_args)
        .labels(&labels)
        .target(plan.target.as_deref().unwrap_or(""))
        .platform(plan.platform.as_deref().unwrap_or(""));
    if let Some(first) = plan.tags.first() {
        options = options.t(first);
    }
    options = match plan.builder {
        Builder::BuildKit => options.version(BuilderVersion::BuilderBuildKit).session(&session),
        Builder::Classic => options.version(BuilderVersion::BuilderV1),
    };

    let (body, context_failure) = stream_context(prepared.context);
    let mut stream = docker.build_image(options.build(), None, Some(bollard::body_try_stream(body)));
    let mut buildkit = progress::BuildKitProgress::default();
    let mut classic = progress::ClassicProgress::default();
    let mut image_id = None;
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(BuildInfo { aux, stream: text, .. }) => {
                match aux {
                    Some(BuildInfoAux::BuildKit(status)) => buildkit.update(status, on_event),
                    Some(BuildInfoAux::Default(ImageId { id: Some(id) })) => image_id = Some(id),
                    _ => {}
                }
                if let Some(text) = text {
                    classic.update(&text, on_event);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                failure = Some(error);
                break;
            }
            Err(other) => {
                drop(stream);
                return Err(
                    context_error(&plan.context, &context_failure).unwrap_or_else(|| daemon_error(other))
                );
            }
        }
    }
    drop(stream);
    if let Some(error) = context_error(&plan.context, &context_failure) {
        return Err(error);
    }
    if let Some(message) = failure {
        if message.contains("buildkit not supported") {
            let version = docker.version().await.unwrap_or_default();
            return Err(BuildError::NoBuildKit {
                host: crate::docker::daemon_host(),
                engine: version.version.unwrap_or_default(),
                api: version.api_version.unwrap_or_default(),
                os: version.os.unwrap_or_default(),
            });
        }
        let step = match plan.builder {
            Builder::BuildKit => buildkit.failed_step().cloned(),
            Builder::Classic => classic.current_instruction().map(|name| FailedStep {
                name: name.to_owned(),
                error: message.clone(),
                last_lines: classic.last_lines(),
            }),
        };
        return Err(failure::explain(
            &message,
            FailureContext { dockerfile: &prepared.dockerfile_shown, step },
        ));
    }
    let image_id = image_id.ok_or(BuildError::NoImageId)?;
    for tag in plan.tags.iter().skip(1) {
        tag_image(&docker, &image_id, tag).await?;
    }
    Ok(BuiltImage { image_id, tags: plan.tags.clone() })
}

fn daemon_error(err: bollard::errors::Error) -> BuildError {
    match err {
        // Engine 20.10 answers a malformed tag with a 500.
        bollard::errors::Error::DockerResponseServerError { status_code, message }
            if (400..500).contains(&status_code) || message.contains("invalid reference format") =>
        {
            BuildError::Refused { message }
        }
        other => BuildError::Daemon(other.to_string()),
    }
}

/// Splits `NAME[:TAG]` into the repository and the tag (`latest` when absent): the tag is
/// what follows the last `:` after the last `/`, since a registry host may have a port.
fn split_tag(reference: &str) -> (&str, &str) {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => (&reference[..name_start + i], &reference[name_start + i + 1..]),
        None => (reference, "latest"),
    }
}

/// Checks `NAME[:TAG]` against Docker's reference grammar, so that a bad `-t` is reported
/// as such before anything is built; returns what is wrong.
pub fn check_tag(reference: &str) -> Result<(), String> {
    let (name, tag) = split_tag(reference);
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !tag_ok {
        return Err(format!("tag {tag:?} must be 1 to 128 letters, digits, `_`, `.` or `-`"));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // A first component with a `.` or `:`, or `localhost`, is a registry host.
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost") {
        let host = components.remove(0);
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)) {
            return Err(format!("registry host {host:?} is not a host name"));
        }
    }
    for component in components {
        let ok = !component.is_empty()
            && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "name component {component:?} must be lowercase letters and digits, separated by `.`, `_` or `-`"
            ));
        }
    }
    Ok(())
}

async fn tag_image(docker: &Docker, image_id: &str, tag: &str) -> Result<(), BuildError> {
    let (repo, version) = split_tag(tag);
    let options = TagImageOptionsBuilder::default().repo(repo).tag(version).build();
    docker.tag_image(image_id, Some(options)).await.map_err(|e| BuildError::Tag {
        image_id: image_id.to_owned(),
        tag: tag.to_owned(),
        reason: e.to_string(),
    })
}

/// The first context read error, if the context thread hit one.
type ContextFailure = Arc<Mutex<Option<ContextError>>>;

fn context_error(context: &Path, failure: &ContextFailure) -> Option<BuildError> {
    let taken = failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    taken.map(|source| BuildError::Context { context: context.to_path_buf(), source })
}

/// Chunks of the tar stream handed to the HTTP body.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the walking thread and the request: bounds memory use.
const CHANNEL_DEPTH: usize = 8;

/// Starts the thread that writes the context tar; returns the request body stream fed by
/// it and the slot where it leaves a read error.
fn stream_context(
    spec: ContextSpec,
) -> (impl futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static, ContextFailure) {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(CHANNEL_DEPTH);
    let failure: ContextFailure = Arc::default();
    let slot = Arc::clone(&failure);
    std::thread::spawn(move || {
        let mut sender = ChunkSender { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let result = write_context(&spec, &mut sender)
            .and_then(|_| sender.flush().map_err(|source| ContextError { path: spec.root.clone(), source }));
        if let Err(error) = result {
            // A closed channel means the daemon stopped reading: the build reports why.
            if error.source.kind() != io::ErrorKind::BrokenPipe {
                let message = error.to_string();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
                let _ = tx.blocking_send(Err(io::Error::other(message)));
            }
        }
    });
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (body, failure)
}

/// A `Write` that hands full chunks to the request body, blocking while it is behind.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the daemon stopped reading the context"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_dockers_reference_grammar() {
        for good in
            ["a", "diskc-test/build-x", "a:1.0", "localhost:5000/x/y:v_1", "registry.example.com/a__b"]
        {
            assert_eq!(check_tag(good), Ok(()), "{good}");
        }
        for bad in ["BadTag", "a:", "a:-x", "/a", "a//b", "a/b-", "x:y:z", "a b"] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        assert_eq!(split_tag("localhost:5000/x"), ("localhost:5000/x", "latest"));
        assert_eq!(split_tag("x/y:2"), ("x/y", "2"));
    }

    #[test]
    fn session_ids_differ() {
        assert_ne!(session_id(), session_id());
    }

    #[test]
    fn a_dockerfile_outside_the_context_gets_a_name_from_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("ctx");
        std::fs::create_dir(&context).unwrap();
        std::fs::write(dir.path().join("Containerfile"), "FROM scratch\n").unwrap();
        std::fs::write(context.join("Dockerfile"), "FROM busybox\n").unwrap();
        let outside = BuildPlan {
            context: context.clone(),
            dockerfile: Some(dir.path().join("Containerfile")),
            ..BuildPlan::default()
        };
        let prepared = prepare(&outside).unwrap();
        assert!(prepared.dockerfile_in_tar.starts_with(".diskc.Dockerfile."));
        assert_eq!(
            prepared.context.extra_dockerfile.as_ref().map(|(n, _)| n),
            Some(&prepared.dockerfile_in_tar)
        );
        let inside = prepare(&BuildPlan { context, ..BuildPlan::default() }).unwrap();
        assert_eq!(inside.dockerfile_in_tar, "Dockerfile");
        assert!(inside.context.extra_dockerfile.is_none());
        assert!(inside.context.always.contains(&"Dockerfile".to_string()));
    }
}
