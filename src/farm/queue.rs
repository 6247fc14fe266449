//! The farm's parts in JetStream, by name, and the connection to them. Every process that
//! connects declares them with the same configuration (JetStream treats that as a no-op when
//! they exist), so no separate setup step is needed and a fresh server works at once.
//!
//! | part | kind | holds |
//! |---|---|---|
//! | `DISKC_JOBS` on `diskc.jobs` | work-queue stream | jobs not yet done, one delivery at a time |
//! | `diskc-workers` | durable pull consumer | the workers' shared view of the queue |
//! | `diskc-jobs` | key-value bucket | job key → [`JobState`] (single flight, results) |
//! | `diskc-workers` | key-value bucket | worker name → heartbeat (expires after 30 s) |
//! | `diskc-contexts` | object store | build contexts, named by their sha256 |
//! | `DISKC_DEAD` on `diskc.dead.>` | stream | jobs given up, with their reason |
//! | `diskc.progress.<job>` | core subject | a running job's events |

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use bytes::Bytes;

use super::{FarmError, JobState};

pub const JOBS_STREAM: &str = "DISKC_JOBS";
pub const JOBS_SUBJECT: &str = "diskc.jobs";
pub const CONSUMER: &str = "diskc-workers";
pub const JOBS_BUCKET: &str = "diskc-jobs";
pub const WORKERS_BUCKET: &str = "diskc-workers";
pub const CONTEXTS_BUCKET: &str = "diskc-contexts";
pub const DEAD_STREAM: &str = "DISKC_DEAD";
pub const DEAD_SUBJECTS: &str = "diskc.dead.>";
/// How long a worker's heartbeat counts: a worker not seen for this long is gone.
pub const WORKER_TTL: Duration = Duration::from_secs(30);

/// The subject a job's events go to.
pub fn progress_subject(job: &str) -> String {
    format!("diskc.progress.{job}")
}

/// The subject a job given up goes to.
pub fn dead_subject(job: &str) -> String {
    format!("diskc.dead.{job}")
}

/// A connection to the farm, with its parts declared.
#[derive(Clone)]
pub struct Farm {
    pub url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub jobs: kv::Store,
    pub workers: kv::Store,
    pub contexts: object_store::ObjectStore,
    pub stream: stream::Stream,
}

impl Farm {
    /// Connects to `url` once: a server that does not answer is an error at once (for
    /// submitters, which should say so rather than hang).
    pub async fn connect(url: &str) -> Result<Farm, FarmError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("diskc")
            .connect(url)
            .await
            .map_err(|e| FarmError::Unreachable { url: url.to_string(), reason: e.to_string() })?;
        Farm::declare(url, client).await
    }

    /// Connects to `url`, waiting for it to come up and reconnecting for ever after (for
    /// workers, which outlive a server restart).
    pub async fn connect_patiently(url: &str, name: &str) -> Result<Farm, FarmError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|e| FarmError::Unreachable { url: url.to_string(), reason: e.to_string() })?;
        loop {
            match Farm::declare(url, client.clone()).await {
                Ok(farm) => return Ok(farm),
                Err(err) => {
                    tracing::warn!("{err}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn declare(url: &str, client: async_nats::Client) -> Result<Farm, FarmError> {
        let js = jetstream::new(client.clone());
        let failed = |doing: &str| {
            let doing = doing.to_string();
            move |e: &dyn std::fmt::Display| FarmError::Nats {
                url: url.to_string(),
                doing: doing.clone(),
                reason: e.to_string(),
            }
        };
        let stream = js
            .get_or_create_stream(stream::Config {
                name: JOBS_STREAM.into(),
                subjects: vec![JOBS_SUBJECT.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("declaring the job stream")(&e))?;
        js.get_or_create_stream(stream::Config {
            name: DEAD_STREAM.into(),
            subjects: vec![DEAD_SUBJECTS.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| failed("declaring the dead-letter stream")(&e))?;
        let jobs = declare_bucket(&js, JOBS_BUCKET, Duration::ZERO)
            .await
            .map_err(|e| failed("declaring the job bucket")(&e))?;
        let workers = declare_bucket(&js, WORKERS_BUCKET, WORKER_TTL)
            .await
            .map_err(|e| failed("declaring the worker bucket")(&e))?;
        let contexts = match js.get_object_store(CONTEXTS_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: CONTEXTS_BUCKET.into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| failed("declaring the context store")(&e))?,
        };
        Ok(Farm { url: url.to_string(), client, js, jobs, workers, contexts, stream })
    }

    /// The workers' consumer, declared with this ack wait and delivery limit (the latest
    /// worker to start sets them for all).
    pub async fn consumer(
        &self,
        ack_wait: Duration,
        max_deliver: u32,
    ) -> Result<consumer::PullConsumer, FarmError> {
        self.stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: i64::from(max_deliver),
                ..Default::default()
            })
            .await
            .map_err(|e| self.error("declaring the workers' consumer", e))
    }

    pub fn error(&self, doing: &str, err: impl std::fmt::Display) -> FarmError {
        FarmError::Nats { url: self.url.clone(), doing: doing.to_string(), reason: err.to_string() }
    }

    /// The job's state and its revision, if the bucket has it.
    pub async fn job_state(&self, job: &str) -> Result<Option<(JobState, u64)>, FarmError> {
        let entry = self.jobs.entry(job).await.map_err(|e| self.error("reading a job's state", e))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let state = serde_json::from_slice(&entry.value)
            .map_err(|e| FarmError::Malformed { job: job.to_string(), reason: e.to_string() })?;
        Ok(Some((state, entry.revision)))
    }

    /// Writes the job's state.
    pub async fn put_state(&self, state: &JobState) -> Result<(), FarmError> {
        let bytes = Bytes::from(serde_json::to_vec(state).expect("a job state serializes"));
        self.jobs.put(&state.job, bytes).await.map_err(|e| self.error("writing a job's state", e))?;
        Ok(())
    }
}

/// A key-value bucket, declared as the stream JetStream's key-value layer reads (history 1,
/// rollups, direct gets). The client's own `create_key_value` first asks for account details
/// that nats-server 2.9 (Debian's) does not send.
async fn declare_bucket(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> Result<kv::Store, Box<dyn std::error::Error + Send + Sync>> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(bucket).await?)
}
