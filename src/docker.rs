//! The connection to the Docker daemon, shared by the build stage and the `docker-daemon:`
//! source.
//!
//! The daemon is found the way the Docker client finds it (`DOCKER_HOST`, else the local
//! socket), and the API version is negotiated down to what the daemon speaks: bollard
//! defaults to a newer API than Debian's Engine 20.10 (1.41) accepts. Connecting is lazy in
//! bollard, so `connect` asks the daemon for its version right away: a daemon that is down
//! is reported here, once, with how to start one, rather than as a transport error deep
//! inside a later call.

use bollard::Docker;

/// Where the daemon is when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How to start a daemon, appended to every "cannot reach" message.
const START_HINT: &str =
    "start one with `sudo dockerd &` or `sudo systemctl start docker`, or point DOCKER_HOST at a running daemon";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon at {host} ({source}); {START_HINT}")]
    Unreachable {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl crate::error::Classify for DockerError {
    fn error_kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Environment
    }
}

/// The daemon address in use: `DOCKER_HOST`, or the local socket.
pub fn daemon_host() -> String {
    std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| DEFAULT_HOST.to_string())
}

/// Connects to the daemon and negotiates the API version. Fails when the daemon does not
/// answer.
pub async fn connect() -> Result<Docker, DockerError> {
    let host = daemon_host();
    // A socket that is not there fails already here: that too means no daemon.
    let docker = Docker::connect_with_host(&host)
        .map_err(|source| DockerError::Unreachable { host: host.clone(), source })?;
    docker.negotiate_version().await.map_err(|source| DockerError::Unreachable { host, source })
}
