//! `diskc worker`: takes jobs from the queue one at a time per free slot, runs each through
//! the library's entry points with a local store as its cache, pushes the image to the
//! remote store and only then records the result and acknowledges the job.
//!
//! - While a job runs, the worker tells JetStream it is still working on it (an in-progress
//!   ack every third of the ack wait), so a slow build is not handed to another worker; a
//!   worker that dies stops doing so, and the job is redelivered once the ack wait passes.
//! - A failure for the input (`BadInput`, `Usage`) is the job's result: recorded with the
//!   message and exit code a local run gives, acknowledged, not retried. A failure of the
//!   environment goes back to the queue after a growing delay, until the last delivery
//!   allowed, which puts the job in the dead-letter subject with its reason.
//! - Stopping (SIGTERM) drains: no new job is taken, the ones held are finished.
//! - The server going away is waited out: the client reconnects, and fetching resumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};

use super::context;
use super::queue::{dead_subject, progress_subject};
use super::status::{HeldJob, WorkerStatus};
use super::{Farm, Job, JobEvent, JobState, State, Task};
use crate::build::{BuildPlan, Builder};
use crate::error::{Error, ErrorKind};
use crate::pipeline::{self, ConvertPlan, OutputPlan};
use crate::store::{Remote, Store};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The worker's name in status and results.
    pub name: String,
    /// The remote store results go to (`s3://…` or `file:///…`).
    pub remote: String,
    /// The local store that caches conversions.
    pub cache: PathBuf,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a job may go without an in-progress ack before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one job before it is given up.
    pub max_deliver: u32,
}

/// One line of the worker's log, per job event: `started`, then one of `done`, `failed`,
/// `retry`, `dead`; or `answered` when a redelivered job's result was already there.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub event: &'static str,
    pub job: String,
    pub kind: String,
    pub input: String,
    pub worker: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

type Log = Arc<dyn Fn(&LogLine) + Send + Sync>;

struct Worker {
    farm: Farm,
    config: WorkerConfig,
    rt: Handle,
    remote: Arc<Remote>,
    held: Mutex<BTreeMap<String, HeldJob>>,
    log: Log,
}

/// Runs a worker against the server at `url` until `stop` turns true, then drains.
pub async fn run(
    url: &str,
    config: WorkerConfig,
    rt: Handle,
    mut stop: watch::Receiver<bool>,
    log: Log,
) -> Result<(), Error> {
    let remote = Arc::new(Remote::open(&config.remote, &rt)?);
    Store::open(&config.cache)?;
    let farm = Farm::connect_patiently(url, &config.name).await?;
    let mut consumer = declare_consumer(&farm, &config).await;
    let concurrency = config.concurrency.max(1);
    let worker = Arc::new(Worker { farm, config, rt, remote, held: Mutex::new(BTreeMap::new()), log });
    let heartbeat = tokio::spawn(heartbeat(worker.clone()));
    let slots = Arc::new(Semaphore::new(concurrency));
    loop {
        if *stop.borrow() {
            break;
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore stays open"),
            _ = stop.changed() => break,
        };
        let fetched = async {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            batch.next().await.transpose().map_err(|e| e.to_string())
        };
        match fetched.await {
            Ok(Some(message)) if *stop.borrow() => {
                // Fetched as the drain began: hand it straight back to the queue.
                let _ = message.ack_with(AckKind::Nak(None)).await;
                break;
            }
            Ok(Some(message)) => {
                let worker = worker.clone();
                tokio::spawn(async move {
                    worker.handle(message).await;
                    drop(slot);
                });
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!("fetching a job from {}: {err}; trying again", worker.farm.url);
                tokio::time::sleep(Duration::from_secs(1)).await;
                // The server may have come back without the consumer.
                if let Ok(again) =
                    worker.farm.consumer(worker.config.ack_wait, worker.config.max_deliver).await
                {
                    consumer = again;
                }
            }
        }
    }
    // Drain: every slot back means every job held is finished.
    let _all = slots.acquire_many(concurrency as u32).await.expect("the semaphore stays open");
    heartbeat.abort();
    let _ = worker.farm.workers.delete(&worker.config.name).await;
    Ok(())
}

async fn declare_consumer(farm: &Farm, config: &WorkerConfig) -> jetstream::consumer::PullConsumer {
    loop {
        match farm.consumer(config.ack_wait, config.max_deliver).await {
            Ok(consumer) => return consumer,
            Err(err) => {
                tracing::warn!("{err}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Says every few seconds that the worker is alive, and which jobs it holds.
async fn heartbeat(worker: Arc<Worker>) {
    loop {
        let status = WorkerStatus {
            name: worker.config.name.clone(),
            concurrency: worker.config.concurrency,
            store: worker.config.remote.clone(),
            jobs: worker.held.lock().expect("held jobs").values().cloned().collect(),
            last_seen: super::now(),
        };
        let bytes = Bytes::from(serde_json::to_vec(&status).expect("a worker status serializes"));
        if let Err(err) = worker.farm.workers.put(&worker.config.name, bytes).await {
            tracing::debug!("heartbeat: {err}");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// How a job ended on this worker.
enum Outcome {
    Done(String),
    Failed { message: String, kind: ErrorKind },
}

impl Worker {
    async fn handle(&self, message: jetstream::Message) {
        let delivered = message.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let job: Job = match serde_json::from_slice(&message.payload) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!("a job that does not parse is dropped: {err}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let key = job.key();
        let line = |event, attempt| LogLine {
            event,
            job: key.clone(),
            kind: job.kind().to_string(),
            input: job.input.clone(),
            worker: self.config.name.clone(),
            attempt,
            id: None,
            error: None,
            exit_code: None,
            seconds: None,
        };
        let mut state = match self.farm.job_state(&key).await {
            Ok(Some((state, _))) => state,
            _ => JobState::queued(&job, &key),
        };
        // The attempts made are counted in the job's state as well as by the server: a
        // delivery whose count reads low (seen here: a redelivery that said 1 again) must
        // not make a job retry for ever when the server will not deliver it again.
        let attempt = match state.state {
            State::Queued | State::Running => delivered.max(state.attempts + 1),
            _ => delivered,
        };
        // An earlier delivery finished but its ack was lost: the result stands.
        if state.state == State::Done {
            let _ = message.double_ack().await;
            (self.log)(&LogLine { id: state.id.clone(), ..line("answered", attempt) });
            return;
        }
        state.state = State::Running;
        state.worker = Some(self.config.name.clone());
        state.attempts = attempt;
        state.updated = super::now();
        if let Err(err) = self.farm.put_state(&state).await {
            tracing::warn!("{err}");
        }
        self.publish(&key, &JobEvent::Taken { worker: self.config.name.clone(), attempt }).await;
        self.held.lock().expect("held jobs").insert(
            key.clone(),
            HeldJob {
                job: key.clone(),
                kind: job.kind().into(),
                input: job.input.clone(),
                started: super::now(),
            },
        );
        (self.log)(&line("started", attempt));
        let started = Instant::now();

        let message = Arc::new(message);
        let keepalive = {
            let message = message.clone();
            let every = self.config.ack_wait / 3;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            })
        };
        let outcome = self.run_job(&job, &key).await;
        keepalive.abort();
        self.held.lock().expect("held jobs").remove(&key);
        let seconds = Some((started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0);
        state.updated = super::now();
        // Each outcome is logged before its state is published: whoever sees the state (a
        // submitter, a test reading the log) finds the line there.
        match outcome {
            Outcome::Done(id) => {
                state.state = State::Done;
                state.id = Some(id.clone());
                state.store = Some(self.config.remote.clone());
                state.error = None;
                state.exit_code = None;
                (self.log)(&LogLine { id: Some(id), seconds, ..line("done", attempt) });
                self.finish(&state, &message, AckKind::Ack).await;
            }
            Outcome::Failed { message: error, kind } if kind != ErrorKind::Environment => {
                state.state = State::Failed;
                state.error = Some(error.clone());
                state.exit_code = Some(kind.exit_code());
                let exit_code = state.exit_code;
                (self.log)(&LogLine { error: Some(error), exit_code, seconds, ..line("failed", attempt) });
                self.finish(&state, &message, AckKind::Ack).await;
            }
            Outcome::Failed { message: error, kind } if attempt >= self.config.max_deliver => {
                state.state = State::Dead;
                state.error = Some(error.clone());
                state.exit_code = Some(kind.exit_code());
                let letter =
                    serde_json::json!({ "job": job, "key": key, "reason": error, "attempts": attempt });
                let published =
                    match self.farm.js.publish(dead_subject(&key), letter.to_string().into()).await {
                        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                if let Err(err) = published {
                    tracing::warn!("dead-letter for {key}: {err}");
                }
                (self.log)(&LogLine { error: Some(error.clone()), seconds, ..line("dead", attempt) });
                self.finish(&state, &message, AckKind::Term).await;
            }
            Outcome::Failed { message: error, .. } => {
                let delay = Duration::from_secs(1 << attempt.min(5));
                state.state = State::Queued;
                state.error = Some(error.clone());
                (self.log)(&LogLine { error: Some(error.clone()), seconds, ..line("retry", attempt) });
                if let Err(err) = self.farm.put_state(&state).await {
                    tracing::warn!("{err}");
                }
                let retrying = JobEvent::Retrying { error: error.clone(), after_seconds: delay.as_secs() };
                self.publish(&key, &retrying).await;
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// Records the final state, then acknowledges: a result is never lost to an ack that
    /// went first.
    async fn finish(&self, state: &JobState, message: &jetstream::Message, ack: AckKind) {
        if let Err(err) = self.farm.put_state(state).await {
            tracing::warn!("{err}");
        }
        if let Err(err) = message.double_ack_with(ack).await {
            tracing::warn!("acknowledging job {}: {err}", state.job);
        }
    }

    async fn publish(&self, key: &str, event: &JobEvent) {
        let bytes = Bytes::from(serde_json::to_vec(event).expect("an event serializes"));
        let _ = self.farm.client.publish(progress_subject(key), bytes).await;
    }

    /// Runs the job and pushes its image; what went wrong, as a local run would say it.
    async fn run_job(&self, job: &Job, key: &str) -> Outcome {
        let failed = |err: Error| Outcome::Failed { message: err.to_string(), kind: err.kind() };
        let work = match tempfile::Builder::new().prefix("diskc-job-").tempdir() {
            Ok(dir) => dir,
            Err(err) => return failed(err.into()),
        };
        let tar = work.path().join("context.tar");
        if let Task::Build { context, .. } = &job.task {
            if let Err(err) = context::download(&self.farm, context, &tar).await {
                return failed(err.into());
            }
        }
        let (events, mut to_send) = mpsc::unbounded_channel::<JobEvent>();
        let forward = {
            let client = self.farm.client.clone();
            let subject = progress_subject(key);
            tokio::spawn(async move {
                while let Some(event) = to_send.recv().await {
                    let bytes = Bytes::from(serde_json::to_vec(&event).expect("an event serializes"));
                    let _ = client.publish(subject.clone(), bytes).await;
                }
            })
        };
        let (job, rt, remote, cache) =
            (job.clone(), self.rt.clone(), self.remote.clone(), self.config.cache.clone());
        let context_dir = work.path().join("context");
        let ran = tokio::task::spawn_blocking(move || {
            let result = run_blocking(&job, &rt, &remote, &cache, &tar, &context_dir, &events);
            // The worker's scratch path means nothing to the submitter: name its context.
            result.map_err(|err| {
                (err.to_string().replace(&context_dir.display().to_string(), &job.input), err.kind())
            })
        })
        .await;
        let _ = forward.await;
        drop(work);
        match ran {
            Ok(Ok(id)) => Outcome::Done(id),
            Ok(Err((message, kind))) => Outcome::Failed { message, kind },
            Err(join) => Outcome::Failed {
                message: format!("the job's thread failed: {join}"),
                kind: ErrorKind::Environment,
            },
        }
    }
}

/// The blocking part of a job: unpack, build or convert into the local store, push.
fn run_blocking(
    job: &Job,
    rt: &Handle,
    remote: &Remote,
    cache: &std::path::Path,
    tar: &std::path::Path,
    context_dir: &std::path::Path,
    events: &mpsc::UnboundedSender<JobEvent>,
) -> Result<String, Error> {
    let output = OutputPlan {
        store: Some(cache.to_path_buf().into()),
        rootfs: job.rootfs(),
        kernel: job.host_kernel(),
        ..Default::default()
    };
    let mut progress = |p| {
        let _ = events.send(JobEvent::Progress(p));
    };
    let converted = match &job.task {
        Task::Build { dockerfile, build_args, labels, target, platform, no_cache, builder, .. } => {
            std::fs::create_dir(context_dir)?;
            context::unpack(tar, context_dir)?;
            let plan = BuildPlan {
                context: context_dir.to_path_buf(),
                dockerfile: Some(context_dir.join(dockerfile)),
                tags: Vec::new(),
                build_args: build_args.clone(),
                labels: labels.clone(),
                target: target.clone(),
                platform: platform.clone(),
                no_cache: *no_cache,
                builder: if builder == "classic" { Builder::Classic } else { Builder::BuildKit },
            };
            pipeline::build(&plan, &output, rt, &mut progress)?.converted
        }
        Task::Convert { source, platform, .. } => {
            let plan = ConvertPlan {
                source: source.parse()?,
                input: source.clone(),
                platform: (!platform.is_empty()).then(|| platform.clone()),
                registry: Default::default(),
                output,
            };
            pipeline::convert(&plan, rt, &mut progress)?
        }
    };
    let id = converted.manifest.id.expect("a conversion into a store has an id");
    let _ = events.send(JobEvent::Pushing { store: remote.url().to_string() });
    let store = Store::open(cache)?;
    store.push(&id, remote, &|_| {})?;
    Ok(id)
}
