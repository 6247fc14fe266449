//! `diskc farm status`: the queue's depth, the workers alive (from their heartbeats), the jobs
//! they hold and for how long, and the jobs given up.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::queue::CONSUMER;
use super::{Farm, FarmError};

/// A worker's heartbeat, in the workers' bucket under its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub name: String,
    pub concurrency: usize,
    /// The remote store it pushes to.
    pub store: String,
    pub jobs: Vec<HeldJob>,
    /// Seconds since the epoch.
    pub last_seen: u64,
}

/// A job a worker is running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldJob {
    pub job: String,
    pub kind: String,
    pub input: String,
    /// Seconds since the epoch.
    pub started: u64,
}

/// What the farm is doing.
#[derive(Clone, Debug, Serialize)]
pub struct FarmStatus {
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs delivered to a worker and not yet acknowledged.
    pub running: u64,
    /// Jobs in the dead-letter stream.
    pub dead_letters: u64,
    pub workers: Vec<WorkerStatus>,
}

pub async fn status(farm: &Farm) -> Result<FarmStatus, FarmError> {
    let consumer = farm.stream.consumer_info(CONSUMER).await.ok();
    let (queued, running) = match consumer {
        Some(info) => (info.num_pending, info.num_ack_pending as u64),
        // No worker has ever started: everything in the stream waits.
        None => {
            let mut stream = farm.stream.clone();
            let info = stream.info().await.map_err(|e| farm.error("reading the job stream", e))?;
            (info.state.messages, 0)
        }
    };
    let dead_letters = match farm.js.get_stream(super::queue::DEAD_STREAM).await {
        Ok(mut dead) => dead.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    };
    let mut workers = Vec::new();
    let mut keys = farm.workers.keys().await.map_err(|e| farm.error("listing the workers", e))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| farm.error("listing the workers", e))?;
        if let Ok(Some(bytes)) = farm.workers.get(&key).await {
            if let Ok(worker) = serde_json::from_slice::<WorkerStatus>(&bytes) {
                workers.push(worker);
            }
        }
    }
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FarmStatus { queued, running, dead_letters, workers })
}
