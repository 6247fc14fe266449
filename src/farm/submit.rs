//! Submitting a job and waiting for its result, with single flight: the first submission of a
//! key creates its entry in the job bucket (an atomic create) and queues the job; a submission
//! that finds the entry queued, running or done is coalesced onto it and only waits. A job
//! given up (dead) is queued again by the next submission of its key.

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;

use super::queue::{progress_subject, JOBS_SUBJECT};
use super::{Farm, FarmError, Job, JobEvent, JobState, State};
use crate::error::ErrorKind;

/// A submission's job id, and whether it joined a job already known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub job: String,
    pub coalesced: bool,
}

/// Queues `job`, unless its key is already known.
pub async fn submit(farm: &Farm, job: &Job) -> Result<Submitted, FarmError> {
    let key = job.key();
    let queued =
        || Bytes::from(serde_json::to_vec(&JobState::queued(job, &key)).expect("a state serializes"));
    // A few rounds: another submitter may win each race, and then this one is coalesced.
    for _ in 0..5 {
        match farm.job_state(&key).await? {
            Some((state, _)) if state.state != State::Dead => {
                return Ok(Submitted { job: key, coalesced: true })
            }
            Some((_, revision)) => {
                if farm.jobs.update(&key, queued(), revision).await.is_err() {
                    continue;
                }
            }
            None => match farm.jobs.create(&key, queued()).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(farm.error("recording a job", e)),
            },
        }
        let payload = Bytes::from(serde_json::to_vec(job).expect("a job serializes"));
        let published = match farm.js.publish(JOBS_SUBJECT, payload).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(reason) = published {
            // Not queued: leave no entry that would make the next submission wait for ever.
            let _ = farm.jobs.delete(&key).await;
            return Err(farm.error("queueing a job", reason));
        }
        return Ok(Submitted { job: key, coalesced: false });
    }
    Err(farm.error("queueing a job", "the job's entry kept changing under this submission"))
}

/// Subscribes to a job's events; subscribe before submitting, so none is missed.
pub async fn events(farm: &Farm, job: &str) -> Result<async_nats::Subscriber, FarmError> {
    farm.client
        .subscribe(progress_subject(job))
        .await
        .map_err(|e| farm.error("subscribing to a job's events", e))
}

/// Waits until the job is done, failed or given up, passing its events to `on_event`;
/// returns its final state.
pub async fn wait(
    farm: &Farm,
    job: &str,
    mut events: Option<async_nats::Subscriber>,
    on_event: &mut dyn FnMut(JobEvent),
) -> Result<JobState, FarmError> {
    let mut watch = farm.jobs.watch(job).await.map_err(|e| farm.error("watching a job", e))?;
    // Read after the watch starts: a change between the two is seen by the watch.
    match farm.job_state(job).await? {
        None => return Err(FarmError::NoSuchJob(job.to_string())),
        Some((state, _)) if state.state.is_final() => return Ok(state),
        Some(_) => {}
    }
    loop {
        tokio::select! {
            entry = watch.next() => {
                let entry = entry
                    .ok_or_else(|| farm.error("watching a job", "the server ended the watch"))?
                    .map_err(|e| farm.error("watching a job", e))?;
                if entry.operation != kv::Operation::Put {
                    return Err(FarmError::NoSuchJob(job.to_string()));
                }
                let state: JobState = serde_json::from_slice(&entry.value)
                    .map_err(|e| FarmError::Malformed { job: job.to_string(), reason: e.to_string() })?;
                if state.state.is_final() {
                    return Ok(state);
                }
            }
            Some(message) = next_event(&mut events) => {
                if let Ok(event) = serde_json::from_slice::<JobEvent>(&message.payload) {
                    on_event(event);
                }
            }
        }
    }
}

async fn next_event(events: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// A final state as the result a local run would give: the image id, or the same error.
pub fn outcome(state: JobState) -> Result<JobState, FarmError> {
    match state.state {
        State::Done => Ok(state),
        State::Failed => Err(FarmError::JobFailed {
            message: state.error.unwrap_or_else(|| "the job failed".into()),
            kind: match state.exit_code {
                Some(1) => ErrorKind::Usage,
                Some(2) => ErrorKind::BadInput,
                _ => ErrorKind::Environment,
            },
        }),
        State::Dead => Err(FarmError::GaveUp {
            job: state.job,
            attempts: state.attempts,
            reason: state.error.unwrap_or_default(),
        }),
        State::Queued | State::Running => Err(FarmError::Malformed {
            job: state.job,
            reason: "waited for a job that is not finished".into(),
        }),
    }
}
