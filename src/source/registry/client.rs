//! HTTP for the registry client: one blocking `ureq` agent with its timeouts, the choice
//! between plain HTTP and HTTPS for a host, retries of answers that say "later", bounded
//! reads of small bodies, and the message of a distribution-spec error body. It knows
//! nothing of images or credentials; what an answer means is decided by its callers
//! ([`super::Registry`] and the authenticator).

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How many times one request is sent at most when the registry says "later" (429, 5xx)
/// or the connection breaks; then its last answer stands.
pub(super) const ATTEMPTS: u32 = 5;
/// The pause before the second attempt; it doubles with each attempt after.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// No pause is longer, whatever the registry's `Retry-After` asks: a pull that cannot go on
/// should say so rather than hang.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The HTTP side of one registry: where it is served and the agent that speaks to it.
pub(super) struct HttpClient {
    agent: ureq::Agent,
    /// `host[:port]` as the reference names it, for error messages.
    host: String,
    /// `host[:port]` as requests address it.
    api_host: String,
    /// Plain HTTP: a loopback host, or an insecure one that did not speak TLS.
    plain: AtomicBool,
    /// Whether plain HTTP may be tried when HTTPS fails (`--tls-verify=false`).
    insecure: bool,
}

impl HttpClient {
    /// A client for `registry` (`host[:port]`): plain HTTP when the host is loopback, as
    /// Docker does; HTTPS otherwise. With `insecure`, the registry's certificate is not
    /// verified, and plain HTTP is used if it does not speak TLS (Docker's
    /// "insecure-registries", skopeo's `--tls-verify=false`).
    pub(super) fn new(registry: &str, insecure: bool) -> HttpClient {
        HttpClient {
            agent: new_agent(insecure),
            host: registry.to_string(),
            api_host: api_host(registry).to_string(),
            plain: AtomicBool::new(is_loopback_host(registry)),
            insecure,
        }
    }

    /// One GET of `path` (`/v2/…`) on the registry, retried while the registry says
    /// "later"; only a failed exchange is an error.
    pub(super) fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<HttpResponse, RegistryError> {
        let send = |scheme: &str| {
            with_retries(|| {
                let mut request = self.agent.get(format!("{scheme}://{}{path}", self.api_host));
                if let Some(accept) = accept {
                    request = request.header("Accept", accept);
                }
                if let Some(authorization) = authorization {
                    request = request.header("Authorization", authorization);
                }
                request.call()
            })
        };
        let plain = self.plain.load(Ordering::Relaxed);
        let result = match send(if plain { "http" } else { "https" }) {
            // An insecure registry that does not speak TLS: plain HTTP from now on.
            Err(_) if self.insecure && !plain => {
                send("http").inspect(|_| self.plain.store(true, Ordering::Relaxed))
            }
            result => result,
        };
        result.map_err(|source| match source {
            source if !self.insecure && !plain && tls_refused(&source) => {
                RegistryError::Tls { host: self.host.clone(), source }
            }
            source => RegistryError::Unreachable { host: self.host.clone(), source },
        })
    }

    /// One GET of a full URL elsewhere, such as the token realm a registry names, retried
    /// like [`Self::get`]; the caller words the error, since the registry itself was
    /// reachable.
    pub(super) fn get_url(
        &self,
        url: &str,
        query: &[(&str, &str)],
        authorization: Option<&str>,
    ) -> Result<HttpResponse, ureq::Error> {
        with_retries(|| {
            let mut request = self.agent.get(url);
            for (name, value) in query {
                request = request.query(*name, *value);
            }
            if let Some(authorization) = authorization {
                request = request.header("Authorization", authorization);
            }
            request.call()
        })
    }

    /// One POST of a form to a full URL (the OAuth2 token exchange), retried like
    /// [`Self::get`].
    pub(super) fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<HttpResponse, ureq::Error> {
        with_retries(|| self.agent.post(url).send_form(form.iter().copied()))
    }
}

/// Sends a request until it gets an answer that is not "later", at most [`ATTEMPTS`] times,
/// pausing as the answer's `Retry-After` says or else exponentially longer, with jitter so
/// that the layer threads of one pull do not come back all at once.
fn with_retries(send: impl Fn() -> Result<HttpResponse, ureq::Error>) -> Result<HttpResponse, ureq::Error> {
    let mut attempt = 1;
    loop {
        let result = send();
        let asked = match &result {
            Ok(response) if retryable_status(response.status().as_u16()) => retry_after(response.headers()),
            Err(e) if transient(e) => None,
            _ => return result,
        };
        if attempt >= ATTEMPTS {
            return result;
        }
        let pause = asked.unwrap_or_else(|| backoff(attempt)).min(MAX_BACKOFF);
        tracing::info!(
            "registry answered {}; attempt {} of {ATTEMPTS} in {pause:.1?}",
            describe(&result),
            attempt + 1
        );
        std::thread::sleep(pause);
        attempt += 1;
    }
}

/// 429 Too Many Requests and the 5xx answers that mean "not now" (not 501 or 505, which
/// will not change).
fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// A connection that broke may work the next time; a refused one (nothing listens) or a
/// failed TLS handshake will not, and a timeout has waited long enough already (retrying
/// it would multiply the wait).
fn transient(error: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(error, ureq::Error::Io(e) if matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof))
}

/// Whether the TLS layer refused the exchange: a certificate it does not trust, or a server
/// that does not speak TLS (rustls reports both as invalid data).
fn tls_refused(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => true,
        ureq::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from registries and is taken as
/// absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header(headers, "retry-after")?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The pause before attempt `attempt + 1`: `FIRST_BACKOFF · 2^(attempt-1)`, the second half
/// of it random.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_BACKOFF);
    let half = full / 2;
    // std's hasher keys are random per process: enough jitter without a generator.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    half + half.mul_f64((random % 1024) as f64 / 1024.0)
}

fn describe(result: &Result<HttpResponse, ureq::Error>) -> String {
    match result {
        Ok(response) => format!("status {}", response.status().as_u16()),
        Err(e) => e.to_string(),
    }
}

fn new_agent(insecure: bool) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(ureq::tls::TlsConfig::builder().disable_verification(insecure).build())
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

    #[test]
    fn backoff_doubles_with_jitter_and_is_bounded() {
        for attempt in 1..=4 {
            let full = FIRST_BACKOFF * (1 << (attempt - 1));
            let pause = backoff(attempt);
            assert!(pause >= full / 2 && pause <= full, "attempt {attempt}: {pause:?}");
        }
        assert!(backoff(40) <= MAX_BACKOFF);
        let pauses: std::collections::BTreeSet<Duration> = (0..20).map(|_| backoff(3)).collect();
        assert!(pauses.len() > 1, "no jitter: {pauses:?}");
        assert!(retryable_status(429) && retryable_status(503) && !retryable_status(501));
        assert!(!retryable_status(404) && !retryable_status(401));
    }
}
