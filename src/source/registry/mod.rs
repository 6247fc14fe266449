//! The `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` source: an image in a registry that speaks
//! the OCI distribution API (v2), read with a small blocking HTTP client. The reference is
//! parsed by [`crate::source::reference`], the JSON documents by `source::spec`.
//!
//! [`Registry::resolve`] fetches the manifest (Docker schema 2 or OCI; a Docker manifest
//! list or OCI index is resolved to one platform first) and the config, and verifies both
//! against their digests; [`Registry::open_blob`] streams one layer blob, whose digest the
//! layer stage verifies as it reads.
//!
//! The parts, each parsed apart from its requests and tested on bytes:
//! - `client`: HTTP. Loopback registries (127.0.0.0/8, localhost, ::1) are spoken to over
//!   plain HTTP, as Docker does for them; any other host over HTTPS unless the caller asks
//!   for insecure. Timeouts, retries with backoff on 429/5xx and broken connections,
//!   bounded reads, error bodies.
//! - `auth`: the registry's `WWW-Authenticate` challenge: anonymous first, then HTTP basic,
//!   or a bearer token from the realm the registry names.
//! - `credentials`: the Docker client's config file (`auths`, `identitytoken`, `credHelpers`,
//!   `credsStore`) through the `docker_credential` crate, or credentials given outright.
//! - `manifest`: which manifest kinds are read, and which are refused by name.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};
use crate::source::spec::{self, Descriptor, IndexOrManifest, Manifest};
use crate::source::{LayerDescriptor, RegistryRef, RegistryTag, ResolvedImage};

mod auth;
mod client;
mod credentials;
mod manifest;

use auth::Authenticator;
use client::{HttpClient, HttpResponse};
use manifest::{available_platforms, parse_manifest, ManifestProblem, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};

pub use client::is_loopback_host;
pub use credentials::{default_docker_config, parse_creds, Credentials};
pub use manifest::{MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};

/// Configs carry the build history; a long one is still far below this.
const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// Why an image could not be read from a registry; each names the registry or the image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {host}: {source}")]
    Unreachable {
        host: String,
        #[source]
        source: ureq::Error,
    },
    #[error(
        "cannot reach registry {host} over TLS: {source}; for a registry without TLS or with a \
         certificate no one vouches for (a test registry), give --tls-verify=false"
    )]
    Tls {
        host: String,
        #[source]
        source: ureq::Error,
    },
    #[error("registry {host} answered {status} to {what}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status { host: String, what: String, status: u16, message: String },
    #[error("{reference}: {what} not found")]
    NotFound { reference: String, what: String },
    #[error(
        "registry {host} refused access to {repository}{}; credentials for {host} come from {config} (docker login), --authfile FILE or --creds USER:PASS",
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
    fn error_kind(&self) -> ErrorKind {
        use RegistryError::*;
        match self {
            Unreachable { .. }
            | Tls { .. }
            | Status { .. }
            | Unauthorized { .. }
            | Auth { .. }
            | Credentials { .. } => ErrorKind::Environment,
            NotFound { .. }
            | DigestMismatch { .. }
            | SizeMismatch { .. }
            | TooLarge { .. }
            | BadManifest { .. }
            | Unsupported { .. }
            | NoPlatform { .. } => ErrorKind::BadInput,
        }
    }
}

/// For the layer stage, which opens blobs through `io::Result`: the kind carries the class
/// across (`ErrorKind::of_io` reads bad input from `InvalidData`), the message the rest.
impl From<RegistryError> for std::io::Error {
    fn from(e: RegistryError) -> Self {
        let kind = match e.error_kind() {
            ErrorKind::BadInput => std::io::ErrorKind::InvalidData,
            ErrorKind::Usage | ErrorKind::Environment => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `--tls-verify=false`: do not verify the registry's certificate, speak plain HTTP to
    /// it if it does not speak TLS, and allow a plain-HTTP token realm.
    pub insecure: bool,
    /// The Docker config file to take credentials from (`--authfile`); `None` means
    /// [`default_docker_config`].
    pub docker_config: Option<PathBuf>,
    /// Credentials given outright (`--creds`): the config file is not read.
    pub credentials: Option<Credentials>,
}

/// A client for one repository of one registry. It is `Sync`: layers may be fetched from
/// several threads, and they share the authorization obtained once.
pub struct Registry {
    client: HttpClient,
    auth: Authenticator,
    reference: RegistryRef,
    /// `docker://` and the reference, as errors name the image.
    name: String,
}

/// A blob as it streams from the registry.
pub type BlobReader = ureq::BodyReader<'static>;

impl Registry {
    /// Prepares a client for `reference`'s repository. Reads the credentials file; makes
    /// no request.
    pub fn new(reference: RegistryRef, options: &RegistryOptions) -> Result<Registry, RegistryError> {
        Ok(Registry {
            client: HttpClient::new(&reference.registry, options.insecure),
            auth: Authenticator::new(&reference, options)?,
            name: format!("docker://{reference}"),
            reference,
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
        let (manifest_digest, image) = self.fetch_image_manifest(platform)?;
        let config_json = self.fetch_config(&image.config)?;
        let parsed = spec::parse_config(&config_json)
            .map_err(|problem| self.bad_manifest(&format!("config {}", image.config.digest), &problem))?;
        Ok(ResolvedImage {
            manifest_digest: Some(manifest_digest),
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
        let response = self.get(&self.blob_path(desc.digest), None)?;
        let response = self.expect_ok(response, &what)?;
        Ok(response.into_body().into_reader())
    }

    /// The image manifest the reference names: the one it points at, or, when that is an
    /// index, the index's manifest for `platform`.
    fn fetch_image_manifest(&self, platform: &str) -> Result<(Digest, Manifest), RegistryError> {
        let (target, expected) = match &self.reference.reference {
            RegistryTag::Tag(t) => (t.clone(), None),
            RegistryTag::Digest(d) => (d.to_string(), Some(*d)),
        };
        let index = match self.fetch_manifest(&target, expected, None)? {
            (digest, IndexOrManifest::Manifest(image)) => return Ok((digest, image)),
            (_, IndexOrManifest::Index(index)) => index,
        };
        let chosen =
            spec::select_platform(&index.manifests, platform).ok_or_else(|| RegistryError::NoPlatform {
                reference: self.name.clone(),
                platform: platform.to_string(),
                available: available_platforms(&index.manifests),
            })?;
        match self.fetch_manifest(&chosen.digest.to_string(), Some(chosen.digest), chosen.size)? {
            (digest, IndexOrManifest::Manifest(image)) => Ok((digest, image)),
            (digest, IndexOrManifest::Index(_)) => {
                Err(self.bad_manifest(&format!("manifest {digest}"), "an index inside an index"))
            }
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
        let announced = client::header(response.headers(), "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
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
        let response = self.get(&self.blob_path(config.digest), None)?;
        let response = self.expect_ok(response, &what)?;
        let body = self.read_limited(response, &what, MAX_CONFIG_BYTES)?;
        if let Some(size) = config.size {
            self.check_size(&what, size, body.len() as u64)?;
        }
        self.check_digest(&what, config.digest, Digest::of(&body))?;
        Ok(body)
    }

    fn blob_path(&self, digest: Digest) -> String {
        format!("/v2/{}/blobs/{digest}", self.reference.repository)
    }

    /// One GET on this repository's registry, authorized as its challenge asks.
    fn get(&self, path: &str, accept: Option<&str>) -> Result<HttpResponse, RegistryError> {
        self.auth.get(&self.client, path, accept)
    }

    /// Maps a non-200 answer to an error about `what`.
    fn expect_ok(&self, response: HttpResponse, what: &str) -> Result<HttpResponse, RegistryError> {
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let message = client::error_message(response);
        Err(match status {
            404 => RegistryError::NotFound { reference: self.name.clone(), what: what.into() },
            401 | 403 => self.auth.refused(message),
            _ => RegistryError::Status {
                host: self.reference.registry.clone(),
                what: what.into(),
                status,
                message,
            },
        })
    }

    fn read_limited(&self, response: HttpResponse, what: &str, limit: u64) -> Result<Vec<u8>, RegistryError> {
        client::read_limited(response, limit).map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                RegistryError::TooLarge { reference: self.name.clone(), what: what.into(), limit }
            }
            source => RegistryError::Unreachable { host: self.reference.registry.clone(), source },
        })
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

    fn bad_manifest(&self, what: &str, problem: &str) -> RegistryError {
        RegistryError::BadManifest {
            reference: self.name.clone(),
            what: what.into(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_shared_across_layer_threads() {
        fn shareable<T: Send + Sync>() {}
        fn stream<T: Send + 'static>() {}
        shareable::<Registry>();
        stream::<BlobReader>();
    }
}
