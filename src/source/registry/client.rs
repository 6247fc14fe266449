//! HTTP for the registry client: one blocking `ureq` agent with its timeouts, the choice
//! between plain HTTP and HTTPS for a host, bounded reads of small bodies, and the message
//! of a distribution-spec error body. It knows nothing of images or credentials; what an
//! answer means is decided by its callers ([`super::Registry`] and the authenticator).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;
use ureq::http::{HeaderMap, Response};

use super::RegistryError;

/// A response whose status has not been judged yet: every status is an answer here.
pub(super) type HttpResponse = Response<ureq::Body>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Until the response head arrives; blob bodies may then take as long as they need.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// An error body is read for its message only; anything longer is not one.
const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;

/// The HTTP side of one registry: where it is served and the agent that speaks to it.
pub(super) struct HttpClient {
    agent: ureq::Agent,
    /// `host[:port]` as the reference names it, for error messages.
    host: String,
    /// `http://host[:port]` or `https://host[:port]`.
    base: String,
}

impl HttpClient {
    /// A client for `registry` (`host[:port]`): plain HTTP when the host is loopback, as
    /// Docker does, or when the caller asks for `insecure`; HTTPS otherwise.
    pub(super) fn new(registry: &str, insecure: bool) -> HttpClient {
        let scheme = if is_loopback_host(registry) || insecure { "http" } else { "https" };
        HttpClient {
            agent: new_agent(),
            host: registry.to_string(),
            base: format!("{scheme}://{}", api_host(registry)),
        }
    }

    /// One GET of `path` (`/v2/…`) on the registry; only a failed exchange is an error.
    pub(super) fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<HttpResponse, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        request.call().map_err(|source| RegistryError::Unreachable { host: self.host.clone(), source })
    }

    /// One GET of a full URL elsewhere, such as the token realm a registry names; the caller
    /// words the error, since the registry itself was reachable.
    pub(super) fn get_url(
        &self,
        url: &str,
        query: &[(&str, &str)],
        authorization: Option<&str>,
    ) -> Result<HttpResponse, ureq::Error> {
        let mut request = self.agent.get(url);
        for (name, value) in query {
            request = request.query(*name, *value);
        }
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        request.call()
    }
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .user_agent(concat!("diskc/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// The whole body, refused with `ureq::Error::BodyExceedsLimit` beyond `limit` bytes: a
/// registry's answer is never trusted to be as small as it should be.
pub(super) fn read_limited(response: HttpResponse, limit: u64) -> Result<Vec<u8>, ureq::Error> {
    let mut body = response.into_body();
    body.with_config().limit(limit).read_to_vec()
}

pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first error message of a distribution-spec error body (`{"errors":[{"message"}]}`),
/// or nothing.
pub(super) fn error_message(response: HttpResponse) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorJson>,
    }
    #[derive(Deserialize)]
    struct ErrorJson {
        #[serde(default)]
        message: String,
    }
    let Ok(body) = read_limited(response, MAX_ERROR_BODY_BYTES) else {
        return String::new();
    };
    serde_json::from_slice::<Errors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| e.message)
        .unwrap_or_default()
}

/// 127.0.0.0/8, `localhost` or `::1` (`host[:port]`, IPv6 in brackets): registries Docker
/// itself talks to without TLS.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.split(':').next().unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || name.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback())
}

/// Docker Hub is named `docker.io` in references and served from another host.
fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1:5000", "127.3.4.5", "localhost", "LOCALHOST:80", "[::1]:5000", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["128.0.0.1", "127.example.com", "registry.example:5000", "[::2]:1", "docker.io"] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
