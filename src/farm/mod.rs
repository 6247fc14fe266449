//! The build farm: many `diskc worker`s take builds and conversions from one queue, share one
//! remote store, and never do the same work twice.
//!
//! The queue is NATS JetStream, not a broker of our own: a work-queue stream holds the jobs
//! (each delivered to one worker at a time, redelivered when its worker stops acknowledging
//! it), a key-value bucket holds each job's state and result under its key (what makes single
//! flight work: the first submission of a key creates the entry, every other one finds it), a
//! second bucket holds the workers' heartbeats, and JetStream's object store holds build
//! contexts by their digest. Results are images in the remote store (`store::Remote`); a job
//! is acknowledged only once its image is there.
//!
//! - [`job`]: what a job is, and its key.
//! - [`queue`]: the streams, buckets and names, and connecting.
//! - [`context`]: a build context packed, shipped once by digest, and unpacked.
//! - [`worker`]: the worker loop.
//! - [`submit`]: submitting a job and waiting for its result.
//! - [`status`]: what the farm is doing.

pub mod context;
pub mod job;
pub mod queue;
pub mod status;
pub mod submit;
pub mod worker;

use crate::error::{Classify, ErrorKind};
use crate::store::StoreError;

pub use job::{Job, JobEvent, JobState, State, Task};
pub use queue::Farm;

#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    #[error("cannot reach the NATS server at {url}: {reason} (is nats-server -js running there?)")]
    Unreachable { url: String, reason: String },
    #[error("NATS server {url}: {doing}: {reason}")]
    Nats { url: String, doing: String, reason: String },
    /// The job failed on a worker for its input: the worker's message and kind, as a local
    /// run would have said them.
    #[error("{message}")]
    JobFailed { message: String, kind: ErrorKind },
    #[error("job {job} gave up after {attempts} attempts (it is in the dead-letter subject): {reason}")]
    GaveUp { job: String, attempts: u32, reason: String },
    #[error("no job {0} in the farm: give the job id a submission printed")]
    NoSuchJob(String),
    #[error("job {job}: {reason}")]
    Malformed { job: String, reason: String },
    #[error("build context: {0}")]
    Context(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for FarmError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            FarmError::Unreachable { .. } | FarmError::Nats { .. } | FarmError::GaveUp { .. } => {
                ErrorKind::Environment
            }
            FarmError::JobFailed { kind, .. } => *kind,
            FarmError::NoSuchJob(_) | FarmError::Malformed { .. } => ErrorKind::BadInput,
            FarmError::Context(_) => ErrorKind::Environment,
            FarmError::Store(e) => e.error_kind(),
        }
    }
}

/// Seconds since the epoch: when a job was submitted or a worker last seen (never in an image).
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
