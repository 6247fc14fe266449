//! The connection to the Docker daemon that runs the build.
//!
//! bollard speaks a newer API than Engine 20.10 (API 1.41), so the version is negotiated
//! first; that first request is also where an absent daemon shows, so its failure is
//! reported with how to start one. BuildKit builds over the Engine API exist from API 1.39
//! (Engine 18.09) on Linux daemons; an older or a Windows daemon is told apart here rather
//! than by a confusing failure halfway through the build.

use std::time::Duration;

use bollard::Docker;

use super::{BuildError, Builder};
use crate::docker::{self, daemon_host, DockerError};

/// The oldest API version whose `/build` accepts `version=2` (BuildKit).
const BUILDKIT_MIN_API: (u32, u32) = (1, 39);

/// The daemon sends the response headers of `/build` only once it has the whole context,
/// so the request timeout has to cover the upload of a large context.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Connects, negotiates the API version, and checks that the daemon can run `builder`.
pub async fn connect(builder: Builder) -> Result<Docker, BuildError> {
    let host = daemon_host();
    let docker = docker::connect().await?.with_timeout(REQUEST_TIMEOUT);
    let version =
        docker.version().await.map_err(|source| DockerError::Unreachable { host: host.clone(), source })?;
    if builder == Builder::BuildKit {
        let api = version.api_version.clone().unwrap_or_default();
        let windows = version.os.as_deref() == Some("windows");
        if windows || parse_api(&api).is_none_or(|v| v < BUILDKIT_MIN_API) {
            return Err(BuildError::NoBuildKit {
                host,
                engine: version.version.unwrap_or_else(|| String::from("unknown")),
                api,
                os: version.os.unwrap_or_default(),
            });
        }
    }
    Ok(docker)
}

fn parse_api(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_compare_numerically() {
        assert!(parse_api("1.41").unwrap() >= BUILDKIT_MIN_API);
        assert!(parse_api("1.9").unwrap() < BUILDKIT_MIN_API);
        assert!(parse_api("1.100").unwrap() >= BUILDKIT_MIN_API);
        assert_eq!(parse_api("garbage"), None);
    }
}
