//! The `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` source: an image in a registry that speaks
//! the OCI distribution API (v2), read with a small blocking HTTP client. The reference is
//! parsed by [`crate::source::reference`], the JSON documents by [`crate::source::spec`].
//!
//! [`Registry::resolve`] fetches the manifest (Docker schema 2 or OCI; a Docker manifest
//! list or OCI index is resolved to one platform first) and the config, and verifies both
//! against their digests; [`Registry::open_blob`] streams one layer blob, whose digest the
//! layer stage verifies as it reads.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: anonymous first,
//! then HTTP basic, or a bearer token from the realm the registry names (sent the
//! credentials, if any). Credentials come from the Docker client's config file, the
//! `auths` entries that `docker login` writes.
//!
//! Loopback registries (127.0.0.0/8, localhost, ::1) are spoken to over plain HTTP, as
//! Docker does for them; any other host over HTTPS unless the caller asks for insecure.
//!
//! The parsing here (manifest kinds, challenges, the config file) is separate from the
//! requests, and tested on bytes.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use ureq::http::{HeaderMap, Response};

use crate::digest::Digest;
use crate::error::{Classify, ErrorClass};
use crate::source::spec::{self, Descriptor, IndexOrManifest};
use crate::source::{LayerDescriptor, RegistryRef, RegistryTag, ResolvedImage};

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_MANIFEST_LIST: &str = spec::DOCKER_MANIFEST_LIST;
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = spec::OCI_INDEX;

/// The `Accept` header of a manifest request: every manifest kind this module reads.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The distribution spec lets registries refuse manifests above 4 MiB; accept that much.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Configs carry the build history; a long one is still far below this.
const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// A token answer is a small JSON object.
const MAX_TOKEN_BYTES: u64 = 1 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Until the response head arrives; blob bodies may then take as long as they need.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {host}: {source}")]
    Unreachable {
        host: String,
        #[source]
        source: ureq::Error,
    },
    #[error("registry {host} answered {status} to {what}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status { host: String, what: String, status: u16, message: String },
    #[error("{reference}: {what} not found")]
    NotFound { reference: String, what: String },
    #[error(
        "registry {host} refused access to {repository}{}; give credentials for {host} in {config} (docker login)",
        if .message.is_empty() { String::new() } else { format!(" ({})", .message) }
    )]
    Unauthorized { host: String, repository: String, message: String, config: String },
    #[error("cannot authenticate to registry {host}: {problem}")]
    Auth { host: String, problem: String },
    #[error("cannot read Docker credentials from {path}: {problem}")]
    Credentials { path: String, problem: String },
    #[error("{reference}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch { reference: String, what: String, expected: Digest, actual: Digest },
    #[error("{reference}: {what} is {actual} bytes, expected {expected}")]
    SizeMismatch { reference: String, what: String, expected: u64, actual: u64 },
    #[error("{reference}: {what} is larger than {limit} bytes")]
    TooLarge { reference: String, what: String, limit: u64 },
    #[error("{reference}: bad {what}: {problem}")]
    BadManifest { reference: String, what: String, problem: String },
    #[error("{reference}: unsupported manifest type {media_type}")]
    Unsupported { reference: String, media_type: String },
    #[error("{reference}: no image for platform {platform} (the index has: {available})")]
    NoPlatform { reference: String, platform: String, available: String },
}

impl Classify for RegistryError {
    fn class(&self) -> ErrorClass {
        use RegistryError::*;
        match self {
            Unreachable { .. } | Status { .. } | Unauthorized { .. } | Auth { .. } | Credentials { .. } => {
                ErrorClass::Environment
            }
            NotFound { .. }
            | DigestMismatch { .. }
            | SizeMismatch { .. }
            | TooLarge { .. }
            | BadManifest { .. }
            | Unsupported { .. }
            | NoPlatform { .. } => ErrorClass::BadInput,
        }
    }
}

/// For the layer stage, which opens blobs through `io::Result`: the kind carries the class
/// across (`ErrorClass::of_io` reads bad input from `InvalidData`), the message the rest.
impl From<RegistryError> for std::io::Error {
    fn from(e: RegistryError) -> Self {
        let kind = match e.class() {
            ErrorClass::BadInput => std::io::ErrorKind::InvalidData,
            ErrorClass::Usage | ErrorClass::Environment => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

// ---------------------------------------------------------------------------------------
// Manifests

/// Reads a manifest body into the documents of [`spec`], refusing what is not a schema 2
/// manifest of a kind this module asked for. The body's own `mediaType` decides; OCI
/// manifests may leave it out, and then the shape does.
fn parse_manifest(body: &[u8]) -> Result<IndexOrManifest, ManifestProblem> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| ManifestProblem::Bad(e.to_string()))?;
    let media_type = head.media_type.unwrap_or_default();
    if head.schema_version != Some(2) {
        let version = head.schema_version.map_or_else(|| "none".to_string(), |v| v.to_string());
        return Err(ManifestProblem::Unsupported(format!("{media_type} (schemaVersion {version})")));
    }
    let known = [MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST];
    if !media_type.is_empty() && !known.contains(&media_type.as_str()) {
        return Err(ManifestProblem::Unsupported(media_type));
    }
    spec::parse_index_or_manifest(body).map_err(|e| ManifestProblem::Bad(e.to_string()))
}

#[derive(Debug, PartialEq, Eq)]
enum ManifestProblem {
    Bad(String),
    Unsupported(String),
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

// ---------------------------------------------------------------------------------------
// Authentication

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses one `WWW-Authenticate` value: a scheme, then `key="value"` pairs (values may be
/// quoted, with backslash escapes, and contain commas).
fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let mut params: Vec<(String, String)> = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => val.push(chars.next()?),
                    c => val.push(c),
                }
            }
        } else {
            val.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
            val = val.trim().to_string();
        }
        params.push((key.to_ascii_lowercase(), val));
    }
    let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
    } else {
        None
    }
}

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntryJson>,
}

#[derive(Debug, Deserialize)]
struct AuthEntryJson {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The `auths` key of `host` in a Docker config file: keys are written as `host[:port]`,
/// sometimes with a scheme and a path (`https://index.docker.io/v1/`).
fn auth_key_host(key: &str) -> &str {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Credentials for `host` from a Docker config file's contents; `Ok(None)` when it has
/// none for that host.
fn credentials_from_config(json: &[u8], host: &str) -> Result<Option<Credentials>, String> {
    let config: DockerConfigJson = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    // `docker login` files Docker Hub under its old index address.
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let matches = |key: &str| {
        let key = auth_key_host(key);
        key.eq_ignore_ascii_case(host) || (host == "docker.io" && hub.contains(&key))
    };
    let Some((_, entry)) = config.auths.iter().find(|(k, _)| matches(k)) else {
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("the auth of {host} is not base64: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| format!("the auth of {host} is not UTF-8"))?;
        let (username, password) =
            text.split_once(':').ok_or_else(|| format!("the auth of {host} is not user:password"))?;
        return Ok(Some(Credentials { username: username.into(), password: password.into() }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials { username: u.clone(), password: p.clone() })),
        _ => Ok(None),
    }
}

/// The Docker client's config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Reads the credentials for `host`; a missing file means anonymous access.
fn load_credentials(path: &Path, host: &str) -> Result<Option<Credentials>, RegistryError> {
    let bad = |problem: String| RegistryError::Credentials { path: path.display().to_string(), problem };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    credentials_from_config(&bytes, host).map_err(bad)
}

#[derive(Debug, Deserialize)]
struct TokenJson {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

// ---------------------------------------------------------------------------------------
// The client

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Speak plain HTTP to a registry that is not on loopback (and to a token realm there).
    pub insecure: bool,
    /// The Docker config file to take credentials from; `None` means
    /// [`default_docker_config`].
    pub docker_config: Option<PathBuf>,
}

/// A client for one repository of one registry. It is `Sync`: layers may be fetched from
/// several threads, and they share the authorization obtained once.
pub struct Registry {
    agent: ureq::Agent,
    reference: RegistryRef,
    /// `docker://` and the reference, as errors name the image.
    name: String,
    /// `http://host[:port]` or `https://host[:port]`.
    base: String,
    insecure: bool,
    credentials: Option<Credentials>,
    /// Where the credentials would come from, for error messages.
    config_path: String,
    /// The `Authorization` header value that worked last.
    authorization: Mutex<Option<String>>,
}

/// A blob as it streams from the registry.
pub type BlobReader = ureq::BodyReader<'static>;

impl Registry {
    /// Prepares a client for `reference`'s repository. Reads the credentials file; makes
    /// no request.
    pub fn new(reference: RegistryRef, options: &RegistryOptions) -> Result<Registry, RegistryError> {
        let config_path = options.docker_config.clone().or_else(default_docker_config);
        let credentials = match &config_path {
            Some(path) => load_credentials(path, &reference.registry)?,
            None => None,
        };
        let scheme = if is_loopback_host(&reference.registry) || options.insecure { "http" } else { "https" };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .user_agent(concat!("diskc/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Registry {
            agent,
            base: format!("{scheme}://{}", api_host(&reference.registry)),
            name: format!("docker://{reference}"),
            reference,
            insecure: options.insecure,
            credentials,
            config_path: config_path
                .map_or_else(|| "~/.docker/config.json".into(), |p| p.display().to_string()),
            authorization: Mutex::new(None),
        })
    }

    pub fn reference(&self) -> &RegistryRef {
        &self.reference
    }

    /// Fetches and verifies the manifest (resolving an index to `platform`,
    /// `os/arch[/variant]`) and the config. `platform` only chooses within an index: a
    /// single-image manifest is taken as it is, and the result names the platform its config
    /// declares.
    pub fn resolve(&self, platform: &str) -> Result<ResolvedImage, RegistryError> {
        let (target, expected) = match &self.reference.reference {
            RegistryTag::Tag(t) => (t.clone(), None),
            RegistryTag::Digest(d) => (d.to_string(), Some(*d)),
        };
        let (mut digest, mut manifest) = self.fetch_manifest(&target, expected, None)?;
        if let IndexOrManifest::Index(index) = &manifest {
            let chosen = spec::select_platform(&index.manifests, platform).ok_or_else(|| {
                RegistryError::NoPlatform {
                    reference: self.name.clone(),
                    platform: platform.to_string(),
                    available: available_platforms(&index.manifests),
                }
            })?;
            let (d, m) = self.fetch_manifest(&chosen.digest.to_string(), Some(chosen.digest), chosen.size)?;
            if matches!(m, IndexOrManifest::Index(_)) {
                return Err(self.bad_manifest(&format!("manifest {d}"), "an index inside an index"));
            }
            (digest, manifest) = (d, m);
        }
        let IndexOrManifest::Manifest(image) = manifest else { unreachable!("indexes were resolved above") };
        let config_json = self.fetch_config(&image.config)?;
        let parsed = spec::parse_config(&config_json)
            .map_err(|problem| self.bad_manifest(&format!("config {}", image.config.digest), &problem))?;
        Ok(ResolvedImage {
            manifest_digest: Some(digest),
            config_digest: image.config.digest,
            config_json,
            layers: image
                .layers
                .into_iter()
                .map(|l| LayerDescriptor { digest: l.digest, media_type: l.media_type, size: l.size })
                .collect(),
            platform: parsed.platform,
        })
    }

    /// Streams blob `desc.digest`. The bytes are not verified here: the layer stage hashes
    /// them as it reads.
    pub fn open_blob(&self, desc: &LayerDescriptor) -> Result<BlobReader, RegistryError> {
        let what = format!("blob {}", desc.digest);
        let response = self.get(&format!("/v2/{}/blobs/{}", self.reference.repository, desc.digest), None)?;
        let response = self.expect_ok(response, &what)?;
        Ok(response.into_body().into_reader())
    }

    fn bad_manifest(&self, what: &str, problem: &str) -> RegistryError {
        RegistryError::BadManifest {
            reference: self.name.clone(),
            what: what.into(),
            problem: problem.into(),
        }
    }

    /// GETs a manifest by tag or digest and checks it against `expected` (the digest asked
    /// for) or else against the digest the registry announces.
    fn fetch_manifest(
        &self,
        target: &str,
        expected: Option<Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, IndexOrManifest), RegistryError> {
        let what = format!("manifest {target}");
        let path = format!("/v2/{}/manifests/{target}", self.reference.repository);
        let response = self.expect_ok(self.get(&path, Some(MANIFEST_ACCEPT))?, &what)?;
        let announced =
            header(response.headers(), "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let body = self.read_limited(response, &what, MAX_MANIFEST_BYTES)?;
        let actual = Digest::of(&body);
        if let Some(expected) = expected.or(announced) {
            self.check_digest(&what, expected, actual)?;
        }
        if let Some(size) = expected_size {
            self.check_size(&what, size, body.len() as u64)?;
        }
        let manifest = parse_manifest(&body).map_err(|p| match p {
            ManifestProblem::Bad(problem) => self.bad_manifest(&what, &problem),
            ManifestProblem::Unsupported(media_type) => {
                RegistryError::Unsupported { reference: self.name.clone(), media_type }
            }
        })?;
        Ok((actual, manifest))
    }

    fn fetch_config(&self, config: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let what = format!("config {}", config.digest);
        let response =
            self.get(&format!("/v2/{}/blobs/{}", self.reference.repository, config.digest), None)?;
        let response = self.expect_ok(response, &what)?;
        let body = self.read_limited(response, &what, MAX_CONFIG_BYTES)?;
        if let Some(size) = config.size {
            self.check_size(&what, size, body.len() as u64)?;
        }
        self.check_digest(&what, config.digest, Digest::of(&body))?;
        Ok(body)
    }

    fn check_digest(&self, what: &str, expected: Digest, actual: Digest) -> Result<(), RegistryError> {
        if expected == actual {
            return Ok(());
        }
        Err(RegistryError::DigestMismatch {
            reference: self.name.clone(),
            what: what.into(),
            expected,
            actual,
        })
    }

    fn check_size(&self, what: &str, expected: u64, actual: u64) -> Result<(), RegistryError> {
        if expected == actual {
            return Ok(());
        }
        Err(RegistryError::SizeMismatch { reference: self.name.clone(), what: what.into(), expected, actual })
    }

    fn read_limited(
        &self,
        response: Response<ureq::Body>,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut body = response.into_body();
        body.with_config().limit(limit).read_to_vec().map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                RegistryError::TooLarge { reference: self.name.clone(), what: what.into(), limit }
            }
            source => RegistryError::Unreachable { host: self.reference.registry.clone(), source },
        })
    }

    /// Maps a non-200 answer to an error about `what`.
    fn expect_ok(
        &self,
        response: Response<ureq::Body>,
        what: &str,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let message = error_message(response);
        Err(match status {
            404 => RegistryError::NotFound { reference: self.name.clone(), what: what.into() },
            401 | 403 => RegistryError::Unauthorized {
                host: self.reference.registry.clone(),
                repository: self.reference.repository.clone(),
                message,
                config: self.config_path.clone(),
            },
            _ => RegistryError::Status {
                host: self.reference.registry.clone(),
                what: what.into(),
                status,
                message,
            },
        })
    }

    /// One GET with the authorization that worked last; on a 401, answers the challenge
    /// once and retries.
    fn get(&self, path: &str, accept: Option<&str>) -> Result<Response<ureq::Body>, RegistryError> {
        let url = format!("{}{path}", self.base);
        let cached = self.authorization.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let response = self.send(&url, accept, cached.as_deref())?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        let challenges: Vec<Challenge> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .collect();
        let Some(authorization) = self.answer(&challenges)? else {
            return Ok(response);
        };
        let retried = self.send(&url, accept, Some(&authorization))?;
        if retried.status().as_u16() != 401 {
            *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(authorization);
        }
        Ok(retried)
    }

    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let mut request = self.agent.get(url);
        if let Some(a) = accept {
            request = request.header("Accept", a);
        }
        if let Some(a) = authorization {
            request = request.header("Authorization", a);
        }
        request
            .call()
            .map_err(|source| RegistryError::Unreachable { host: self.reference.registry.clone(), source })
    }

    /// The `Authorization` value answering the registry's challenges, preferring a bearer
    /// token; `None` when there is nothing to answer with (the 401 then stands).
    fn answer(&self, challenges: &[Challenge]) -> Result<Option<String>, RegistryError> {
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, scope } => Some((realm, service, scope)),
            Challenge::Basic => None,
        });
        if let Some((realm, service, scope)) = bearer {
            return self.fetch_token(realm, service.as_deref(), scope.as_deref()).map(Some);
        }
        if challenges.contains(&Challenge::Basic) {
            return Ok(self.credentials.as_ref().map(Credentials::basic_header));
        }
        Ok(None)
    }

    /// Asks the token realm for a pull token for this repository, sending the credentials
    /// when there are some (anonymous tokens are common on public registries).
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        let auth_err =
            |problem: String| RegistryError::Auth { host: self.reference.registry.clone(), problem };
        let realm_is_plain = realm.starts_with("http://");
        if !realm.starts_with("https://") && !realm_is_plain {
            return Err(auth_err(format!("token realm {realm:?} is not an http(s) URL")));
        }
        if realm_is_plain && !self.insecure && !realm_host_is_loopback(realm) {
            return Err(auth_err(format!(
                "token realm {realm} is plain HTTP on a host that is not loopback"
            )));
        }
        let default_scope = format!("repository:{}:pull", self.reference.repository);
        let mut request = self.agent.get(realm).query("scope", scope.unwrap_or(&default_scope));
        if let Some(service) = service {
            request = request.query("service", service);
        }
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", &c.basic_header());
        }
        let response = request.call().map_err(|e| auth_err(format!("token realm {realm}: {e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(RegistryError::Unauthorized {
                host: self.reference.registry.clone(),
                repository: self.reference.repository.clone(),
                message: format!("token realm answered {status}"),
                config: self.config_path.clone(),
            });
        }
        let body = response
            .into_body()
            .with_config()
            .limit(MAX_TOKEN_BYTES)
            .read_to_vec()
            .map_err(|e| auth_err(format!("token realm {realm}: {e}")))?;
        let token: TokenJson = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("token realm {realm} answered: {e}")))?;
        let token = token
            .token
            .filter(|t| !t.is_empty())
            .or(token.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| auth_err(format!("token realm {realm} gave no token")))?;
        Ok(format!("Bearer {token}"))
    }
}

fn realm_host_is_loopback(realm: &str) -> bool {
    let after = realm.split_once("://").map_or(realm, |(_, r)| r);
    let host = after.split(['/', '?']).next().unwrap_or("");
    is_loopback_host(host)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first error message of a distribution-spec error body (`{"errors":[{"message"}]}`),
/// or nothing.
fn error_message(response: Response<ureq::Body>) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorJson>,
    }
    #[derive(Deserialize)]
    struct ErrorJson {
        #[serde(default)]
        message: String,
    }
    let Ok(body) = response.into_body().with_config().limit(64 << 10).read_to_vec() else {
        return String::new();
    };
    serde_json::from_slice::<Errors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| e.message)
        .unwrap_or_default()
}

fn available_platforms(manifests: &[Descriptor]) -> String {
    let names: Vec<String> = manifests.iter().filter_map(|d| d.platform.as_ref()).map(|p| p.name()).collect();
    if names.is_empty() {
        "no platforms".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_manifests_by_media_type_and_shape() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_DOCKER_MANIFEST}",
               "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":10}},
               "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":20}}]}}"#,
            digest('c'),
            digest('1')
        );
        let Ok(IndexOrManifest::Manifest(m)) = parse_manifest(image.as_bytes()) else { panic!() };
        assert_eq!(m.config.size, Some(10));
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].digest.to_string(), digest('1'));

        // An OCI index without mediaType, told apart by its shape.
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
                {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
                {{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{}","size":6,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            digest('a'),
            digest('b')
        );
        let Ok(IndexOrManifest::Index(i)) = parse_manifest(index.as_bytes()) else { panic!() };
        assert_eq!(available_platforms(&i.manifests), "linux/arm64/v8, linux/amd64");
    }

    #[test]
    fn rejects_schema1_and_garbage_manifests() {
        let v1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(parse_manifest(v1), Err(ManifestProblem::Unsupported(_))));
        assert!(matches!(parse_manifest(b"{"), Err(ManifestProblem::Bad(_))));
        let bad_digest = br#"{"schemaVersion":2,"config":{"digest":"md5:00","size":1},"layers":[]}"#;
        assert!(matches!(parse_manifest(bad_digest), Err(ManifestProblem::Bad(_))));
        let odd = br#"{"schemaVersion":2,"mediaType":"application/x-other"}"#;
        assert_eq!(
            parse_manifest(odd).err(),
            Some(ManifestProblem::Unsupported("application/x-other".into()))
        );
    }

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
    fn parses_challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t , service="s\"q""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("s\"q".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn reads_credentials_from_docker_config() {
        let config = br#"{"auths":{
            "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "other:1":{"username":"u","password":"p"},
            "empty:1":{}}}"#;
        let c = credentials_from_config(config, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pa:ss"));
        assert_eq!(c.basic_header(), "Basic dXNlcjpwYTpzcw==");
        assert_eq!(credentials_from_config(config, "docker.io").unwrap().unwrap().username, "hub");
        assert_eq!(credentials_from_config(config, "other:1").unwrap().unwrap().password, "p");
        assert_eq!(credentials_from_config(config, "empty:1").unwrap(), None);
        assert_eq!(credentials_from_config(config, "127.0.0.1:5001").unwrap(), None);
        assert!(credentials_from_config(br#"{"auths":{"h":{"auth":"!!"}}}"#, "h").is_err());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn registry_is_shared_across_layer_threads() {
        fn shareable<T: Send + Sync>() {}
        fn stream<T: Send + 'static>() {}
        shareable::<Registry>();
        stream::<BlobReader>();
    }

    #[test]
    fn realm_loopback_check() {
        assert!(realm_host_is_loopback("http://127.0.0.1:4000/token"));
        assert!(realm_host_is_loopback("http://localhost/token?x=1"));
        assert!(!realm_host_is_loopback("http://auth.example/token"));
    }
}
