//! A job as it travels through the queue, its key, its state in the key-value bucket, and the
//! events a worker sends the submitters while it runs one.
//!
//! A job's key is the digest of what determines its result and nothing else: for a build,
//! the context's digest, the Dockerfile's place in it and every build option; for a
//! conversion, the image's config digest (which names its layers) and the platform; for both,
//! the rootfs options, the kernel's digest and diskc's version. Two submissions with the same
//! key get the same image, so the key is also the job's id: it is what single flight and
//! `diskc farm wait` go by. Names (`-t`) and where the image is written are left out: they
//! do not change the image, and the submitter applies them itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::pipeline::{HostKernel, Progress, RootfsOptions};

/// One job: what to run and how to lay out its image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub task: Task,
    /// `--size` in bytes; `None` is the content plus headroom.
    pub size: Option<u64>,
    pub journal: bool,
    pub source_date_epoch: Option<i64>,
    /// The kernel and its modules directory, as paths every worker sees (a shared file
    /// system or the same layout), with the kernel's digest for the key.
    pub kernel: Option<JobKernel>,
    /// The input as the first submitter named it (a context directory or a source), for
    /// messages; not part of the key.
    pub input: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobKernel {
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub digest: String,
}

/// What a worker does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A Dockerfile build: the context is the object `context` (its sha256, hex) in the
    /// farm's context store; the Dockerfile is `dockerfile` inside it.
    Build {
        context: String,
        dockerfile: String,
        build_args: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        target: Option<String>,
        platform: Option<String>,
        no_cache: bool,
        builder: String,
    },
    /// A conversion of `source` (as `diskc convert` takes it), whose config digest the
    /// submitter resolved to `config`.
    Convert { source: String, platform: String, config: String },
}

impl Job {
    /// The job's key (and id): 64 hex digits.
    pub fn key(&self) -> String {
        let task = match &self.task {
            // The source's name does not change the image its config digest names.
            Task::Convert { platform, config, .. } => {
                serde_json::json!({ "convert": { "config": config, "platform": platform } })
            }
            build @ Task::Build { .. } => serde_json::json!(build),
        };
        let key = serde_json::json!({
            "diskc": env!("CARGO_PKG_VERSION"),
            "format": crate::manifest::FORMAT_VERSION,
            "task": task,
            "size": self.size,
            "journal": self.journal,
            "source_date_epoch": self.source_date_epoch,
            "kernel": self.kernel.as_ref().map(|k| (&k.digest, &k.modules)),
        });
        Digest::of(key.to_string().as_bytes()).hex()
    }

    pub fn rootfs(&self) -> RootfsOptions {
        RootfsOptions { size: self.size, journal: self.journal, source_date_epoch: self.source_date_epoch }
    }

    pub fn host_kernel(&self) -> Option<HostKernel> {
        self.kernel.as_ref().map(|k| HostKernel { kernel: k.kernel.clone(), modules: k.modules.clone() })
    }

    /// `build` or `convert`.
    pub fn kind(&self) -> &'static str {
        match self.task {
            Task::Build { .. } => "build",
            Task::Convert { .. } => "convert",
        }
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// In the queue (again, after an environment failure: `error` says which).
    Queued,
    /// A worker holds it.
    Running,
    /// The image is in the remote store.
    Done,
    /// It failed for its input; it would fail the same way again.
    Failed,
    /// It failed for the environment as many times as allowed; it is in the dead-letter
    /// subject. A new submission of the key queues it again.
    Dead,
}

impl State {
    /// Whether the job will not change any more (but by a new submission, for `Dead`).
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Dead)
    }
}

/// A job's entry in the key-value bucket, under its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub job: String,
    pub state: State,
    pub kind: String,
    pub input: String,
    /// The worker that holds or held it.
    pub worker: Option<String>,
    /// How many times it was delivered to a worker.
    pub attempts: u32,
    /// The image id, when done.
    pub id: Option<String>,
    /// The remote store the image is in, when done.
    pub store: Option<String>,
    /// Why it failed (or, queued again, why the last attempt failed).
    pub error: Option<String>,
    /// The exit code a local run gives for that failure.
    pub exit_code: Option<u8>,
    /// When it was submitted and last changed, in seconds since the epoch.
    pub submitted: u64,
    pub updated: u64,
}

impl JobState {
    pub fn queued(job: &Job, key: &str) -> JobState {
        let now = super::now();
        JobState {
            job: key.to_string(),
            state: State::Queued,
            kind: job.kind().to_string(),
            input: job.input.clone(),
            worker: None,
            attempts: 0,
            id: None,
            store: None,
            error: None,
            exit_code: None,
            submitted: now,
            updated: now,
        }
    }
}

/// What a worker tells the submitters of a job while it runs it (core NATS, on the job's
/// progress subject: best effort, the result is in the bucket).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEvent {
    /// A worker took the job; `attempt` counts deliveries from 1.
    Taken { worker: String, attempt: u32 },
    /// The entry point's own progress, as a local run shows it.
    Progress(Progress),
    /// The image is being pushed to the remote store.
    Pushing { store: String },
    /// The attempt failed for the environment; the job goes back to the queue.
    Retrying { error: String, after_seconds: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(source: &str, config: &str) -> Job {
        Job {
            task: Task::Convert {
                source: source.into(),
                platform: "linux/amd64".into(),
                config: config.into(),
            },
            size: None,
            journal: true,
            source_date_epoch: None,
            kernel: None,
            input: source.into(),
        }
    }

    #[test]
    fn the_key_is_what_decides_the_image() {
        let a = convert("docker-daemon:app:1", "sha256:aa");
        // Another name for the same image, another submitter's wording: the same key.
        let mut b = convert("docker-daemon:app:latest", "sha256:aa");
        b.input = "elsewhere".into();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key().len(), 64);
        // Anything that changes the image changes the key.
        assert_ne!(a.key(), convert("docker-daemon:app:1", "sha256:bb").key());
        let mut no_journal = a.clone();
        no_journal.journal = false;
        assert_ne!(a.key(), no_journal.key());
        let mut epoch = a.clone();
        epoch.source_date_epoch = Some(1);
        assert_ne!(a.key(), epoch.key());
    }

    #[test]
    fn build_options_are_in_the_key() {
        let build = |target: Option<&str>| Job {
            task: Task::Build {
                context: "ab".into(),
                dockerfile: "Dockerfile".into(),
                build_args: BTreeMap::new(),
                labels: BTreeMap::new(),
                target: target.map(String::from),
                platform: None,
                no_cache: false,
                builder: "buildkit".into(),
            },
            ..convert("ctx", "x")
        };
        assert_ne!(build(None).key(), build(Some("stage")).key());
        assert_eq!(build(None).key(), build(None).key());
    }

    #[test]
    fn jobs_and_states_survive_the_wire() {
        let job = convert("docker-daemon:app", "sha256:aa");
        let wire = serde_json::to_vec(&job).unwrap();
        assert_eq!(serde_json::from_slice::<Job>(&wire).unwrap(), job);
        let state = JobState::queued(&job, &job.key());
        let wire = serde_json::to_vec(&state).unwrap();
        assert_eq!(serde_json::from_slice::<JobState>(&wire).unwrap(), state);
        assert!(!State::Queued.is_final() && State::Dead.is_final());
    }
}
