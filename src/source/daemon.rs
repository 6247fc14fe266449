//! The `docker-daemon:NAME[:TAG]` source: an image held by the local Docker Engine.
//!
//! Two calls: [`resolve_daemon`] inspects the image (its id is the config digest, its
//! RootFS lists the layers' diff_ids), and [`export_stream`] hands over the Engine's
//! `docker save` archive as a blocking [`Read`]. The archive is passed on as it arrives,
//! through a small bounded channel, so the consumer parses each layer while later ones are
//! still on the wire; it is never held whole, in memory or on our disk. (Engine 20.10
//! re-creates every layer tar on its own disk before it sends the first byte, 1.5 s of
//! the 1.7 s export of a 128 MB image here; that part is the Engine's.)
//!
//! bollard is async; the rest of diskc is blocking. Both calls run their async part on the
//! caller's runtime (a [`Handle`]; the library never starts one) and must be called from
//! outside it, as blocking code is (in an async caller, from `spawn_blocking`). The export
//! runs as a task on that runtime for as long as the stream is read.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::digest::Digest;
use crate::docker::{self, DockerError};
use crate::error::{Classify, ErrorKind};
use crate::manifest::ImageConfig;

/// Chunks in flight between the Engine and the reader: hyper yields chunks of at most a few
/// tens of KiB, so this bounds the buffered part of the archive to a few MiB while keeping
/// the Engine busy when the consumer stalls briefly.
const CHANNEL_CHUNKS: usize = 64;

/// How long the Engine may take before the first byte of the export. Engine 20.10 writes
/// every layer tar to its own disk before it sends anything (28 s for a 1.7 GB image
/// here), so bollard's default of two minutes would cut off large images.
const EXPORT_HEAD_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Daemon(#[from] DockerError),
    #[error("image {name} does not exist in the Docker daemon")]
    NotFound { name: String },
    #[error("the Docker daemon failed on image {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("the Docker daemon describes image {name} badly: {problem}")]
    BadInspect { name: String, problem: String },
    #[error("the export of image {name} stopped before it started: the runtime is shutting down")]
    Stopped { name: String },
}

impl Classify for DaemonError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            DaemonError::Daemon(e) => e.error_kind(),
            DaemonError::NotFound { .. } | DaemonError::BadInspect { .. } => ErrorKind::BadInput,
            DaemonError::Api { .. } | DaemonError::Stopped { .. } => ErrorKind::Environment,
        }
    }
}

/// An image as the daemon describes it, before anything is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonImage {
    /// The name it was asked for.
    pub name: String,
    /// The image id, which is the digest of its config blob. Exporting by this id exports
    /// exactly the inspected image, even if the name is re-tagged meanwhile.
    pub id: Digest,
    /// `NAME@sha256:...` of the manifests this image was pushed or pulled as; empty for an
    /// image that was built or imported locally.
    pub repo_digests: Vec<String>,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
    /// `os/arch[/variant]`.
    pub platform: String,
    pub config: ImageConfig,
    /// Where the Engine keeps the image's layers: its storage driver and what the driver
    /// reports (overlay2: `LowerDir`, `UpperDir`...).
    pub graph_driver: Option<(String, BTreeMap<String, String>)>,
}

fn api_error(name: &str, source: BollardError) -> DaemonError {
    match source {
        BollardError::DockerResponseServerError { status_code: 404, .. } => {
            DaemonError::NotFound { name: name.to_string() }
        }
        source => DaemonError::Api { name: name.to_string(), source },
    }
}

/// Inspects image `name` (`NAME[:TAG]`, `NAME@DIGEST` or an image id).
pub fn resolve_daemon(rt: &Handle, name: &str) -> Result<DaemonImage, DaemonError> {
    rt.block_on(async {
        let docker = docker::connect().await?;
        let inspect = docker.inspect_image(name).await.map_err(|e| api_error(name, e))?;
        daemon_image(name, inspect)
    })
}

/// Turns the daemon's answer into a [`DaemonImage`], checking what later stages rely on.
fn daemon_image(name: &str, inspect: bollard::models::ImageInspect) -> Result<DaemonImage, DaemonError> {
    let bad = |problem: String| DaemonError::BadInspect { name: name.to_string(), problem };
    let id_text = inspect.id.unwrap_or_default();
    let id = id_text.parse::<Digest>().map_err(|e| bad(e.to_string()))?;
    let layers = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
    let diff_ids = layers
        .iter()
        .map(|l| l.parse::<Digest>().map_err(|e| bad(format!("layer {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let os = inspect.os.filter(|s| !s.is_empty()).ok_or_else(|| bad("no os".into()))?;
    let arch = inspect.architecture.filter(|s| !s.is_empty()).ok_or_else(|| bad("no architecture".into()))?;
    let platform = match inspect.variant.filter(|v| !v.is_empty()) {
        Some(variant) => format!("{os}/{arch}/{variant}"),
        None => format!("{os}/{arch}"),
    };
    let config = inspect.config.map(image_config).unwrap_or_default();
    let graph_driver = inspect.graph_driver.map(|g| (g.name, g.data.into_iter().collect()));
    Ok(DaemonImage {
        name: name.to_string(),
        id,
        repo_digests: inspect.repo_digests.unwrap_or_default(),
        diff_ids,
        platform,
        config,
        graph_driver,
    })
}

fn image_config(c: bollard::models::ImageConfig) -> ImageConfig {
    let mut exposed_ports = c.exposed_ports.unwrap_or_default();
    // The API hands ports over as a JSON object whose order is not meaningful.
    exposed_ports.sort();
    ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        labels: c.labels.unwrap_or_default().into_iter().collect(),
        exposed_ports,
        stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
    }
}

/// The Engine's `docker save` archive of image `name`, as it streams (a docker-archive on
/// Engine < 25, an OCI layout inside the tar on later ones). A missing image or a daemon
/// that is down is reported here, before the first byte is read.
///
/// `name` is `NAME:TAG`, `NAME@DIGEST` or an image id, as [`crate::source::SourceRef`]
/// normalises it: given a bare repository name, the Engine would export every tag of it.
pub fn export_stream(rt: &Handle, name: &str) -> Result<ExportStream, DaemonError> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let (started_tx, started_rx) = oneshot::channel::<Result<(), DaemonError>>();
    rt.spawn(pump_export(name.to_string(), started_tx, tx));
    match started_rx.blocking_recv() {
        Ok(Ok(())) => Ok(ExportStream { rx, current: Bytes::new() }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DaemonError::Stopped { name: name.to_string() }),
    }
}

/// Runs as a task on the caller's runtime: waits for the Engine's first chunk (which is where a missing
/// image shows up), reports the start, then forwards chunks until the archive ends or the
/// reader is dropped.
async fn pump_export(
    name: String,
    started: oneshot::Sender<Result<(), DaemonError>>,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let docker: Docker = match docker::connect().await {
        Ok(d) => d.with_timeout(EXPORT_HEAD_TIMEOUT),
        Err(e) => {
            let _ = started.send(Err(e.into()));
            return;
        }
    };
    let mut stream = Box::pin(docker.export_image(&name));
    let first = match stream.next().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => {
            let _ = started.send(Err(api_error(&name, e)));
            return;
        }
        None => {
            let _ =
                started.send(Err(DaemonError::BadInspect { name, problem: "the export is empty".into() }));
            return;
        }
    };
    if started.send(Ok(())).is_err() {
        return;
    }
    let mut next = Some(Ok(first));
    while let Some(item) = next {
        let item =
            item.map_err(|e| io::Error::other(format!("export of image {name} from the Docker daemon: {e}")));
        let failed = item.is_err();
        // The bounded channel is the backpressure that keeps the Engine from running ahead
        // of the consumer.
        if tx.send(item).await.is_err() || failed {
            return;
        }
        next = stream.next().await;
    }
}

/// The export as a blocking reader. Dropping it stops the export.
pub struct ExportStream {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ExportStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                // The sender is dropped only after the last chunk or after an error it sent.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_without_id_is_bad_input() {
        let err = daemon_image("x", bollard::models::ImageInspect::default()).unwrap_err();
        assert_eq!(err.error_kind(), ErrorKind::BadInput);
        assert!(err.to_string().contains("image x"), "{err}");
    }
}
