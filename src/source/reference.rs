//! The SOURCE argument: an image named the way skopeo names transports.
//!
//! ```text
//! docker-daemon:NAME[:TAG]          docker-daemon:NAME@sha256:…    docker-daemon:sha256:<id>
//! oci:DIR[:REF]                     oci-archive:FILE[:REF]         docker-archive:FILE[:REF]
//! docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]
//! ```
//!
//! As in skopeo, a path ends at its first `:`; what follows is the reference. For
//! `docker://`, the first component is a registry host when it holds a `.` or a `:` or is
//! `localhost`; otherwise the registry is Docker Hub and single names get `library/`.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRef {
    /// An image in the local Docker Engine: `NAME:TAG`, `NAME@DIGEST` or an image id.
    DockerDaemon { name: String },
    /// An OCI image layout directory; `reference` picks a manifest by its
    /// `org.opencontainers.image.ref.name` annotation.
    Oci { dir: PathBuf, reference: Option<String> },
    /// A tar of an OCI image layout.
    OciArchive { file: PathBuf, reference: Option<String> },
    /// A `docker save` archive; `reference` picks an image by one of its `RepoTags`.
    DockerArchive { file: PathBuf, reference: Option<String> },
    /// An image in a registry, through the OCI distribution API.
    Registry(RegistryRef),
}

/// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host` or `host:port`; `docker.io` for Docker Hub.
    pub registry: String,
    /// e.g. `library/busybox`.
    pub repository: String,
    pub reference: RegistryTag,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryTag {
    Tag(String),
    Digest(Digest),
}

impl RegistryRef {
    /// Whether to speak plain HTTP: only to loopback registries.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        host == "localhost" || host == "127.0.0.1" || host == "[::1]" || host.starts_with("127.")
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            RegistryTag::Tag(t) => write!(f, "{}/{}:{}", self.registry, self.repository, t),
            RegistryTag::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.repository, d),
        }
    }
}

/// A SOURCE that does not parse; a usage error.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image source {input:?}: {reason}")]
pub struct InvalidSource {
    pub input: String,
    pub reason: String,
}

impl crate::error::Classify for InvalidSource {
    fn error_kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Usage
    }
}

const TRANSPORTS: &str = "docker-daemon:, oci:, oci-archive:, docker-archive:, docker://";

impl std::str::FromStr for SourceRef {
    type Err = InvalidSource;

    fn from_str(input: &str) -> Result<Self, InvalidSource> {
        let fail = |reason: &str| InvalidSource { input: input.to_string(), reason: reason.to_string() };
        if let Some(rest) = input.strip_prefix("docker://") {
            return parse_registry(rest).map(SourceRef::Registry).map_err(|r| fail(&r));
        }
        let (transport, rest) = input
            .split_once(':')
            .ok_or_else(|| fail(&format!("expected TRANSPORT:NAME, one of {TRANSPORTS}")))?;
        match transport {
            "docker-daemon" => {
                let name = parse_daemon_name(rest).map_err(|r| fail(&r))?;
                Ok(SourceRef::DockerDaemon { name })
            }
            "oci" | "oci-archive" | "docker-archive" => {
                let (path, reference) = match rest.split_once(':') {
                    Some((p, r)) => (p, Some(r.to_string())),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err(fail("the path is empty"));
                }
                if reference.as_deref() == Some("") {
                    return Err(fail("the reference after ':' is empty"));
                }
                let path = PathBuf::from(path);
                Ok(match transport {
                    "oci" => SourceRef::Oci { dir: path, reference },
                    "oci-archive" => SourceRef::OciArchive { file: path, reference },
                    _ => SourceRef::DockerArchive { file: path, reference },
                })
            }
            other => Err(fail(&format!("unknown transport {other:?}, expected one of {TRANSPORTS}"))),
        }
    }
}

/// Docker's reference grammar, as far as it matters here: a path component.
fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let bytes = c.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(t: &str) -> bool {
    // [\w][\w.-]{0,127}
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !t.is_empty()
        && t.len() <= 128
        && ok(t.as_bytes()[0])
        && t.bytes().all(|b| ok(b) || b == b'.' || b == b'-')
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    let host_ok = !host.is_empty()
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// Splits `REPO[:TAG|@DIGEST]`, checking each part.
fn split_repo(rest: &str) -> Result<(String, Option<RegistryTag>), String> {
    let (repo, reference) = if let Some((repo, digest)) = rest.split_once('@') {
        let d: Digest = digest.parse().map_err(|e| format!("{e}"))?;
        (repo, Some(RegistryTag::Digest(d)))
    } else {
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(format!("invalid tag {tag:?}"));
                }
                (&rest[..last_slash + i], Some(RegistryTag::Tag(tag.to_string())))
            }
            None => (rest, None),
        }
    };
    if let Some(bad) = repo.split('/').find(|c| !valid_component(c)) {
        return Err(format!(
            "invalid repository name component {bad:?} (lowercase letters, digits, separators)"
        ));
    }
    Ok((repo.to_string(), reference))
}

fn parse_registry(rest: &str) -> Result<RegistryRef, String> {
    if rest.is_empty() {
        return Err("the image name is empty".into());
    }
    let (first, remainder) = match rest.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (rest, None),
    };
    let is_host = remainder.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
    let (registry, path) = if is_host {
        if !valid_host(first) {
            return Err(format!("invalid registry host {first:?}"));
        }
        (first.to_string(), remainder.unwrap_or_default())
    } else {
        ("docker.io".to_string(), rest)
    };
    let (mut repository, reference) = split_repo(path)?;
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    Ok(RegistryRef {
        registry,
        repository,
        reference: reference.unwrap_or(RegistryTag::Tag("latest".into())),
    })
}

/// `NAME[:TAG]`, `NAME@DIGEST` or an image id (`sha256:<hex>` or a hex prefix); a name
/// without tag gets `:latest`, as the Engine would.
fn parse_daemon_name(rest: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Err("the image name is empty".into());
    }
    if rest.parse::<Digest>().is_ok() {
        return Ok(rest.to_string());
    }
    let (first, remainder) = match rest.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (rest, None),
    };
    let has_host =
        remainder.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host && !valid_host(first) {
        return Err(format!("invalid registry host {first:?}"));
    }
    let path = if has_host { remainder.unwrap_or_default() } else { rest };
    let (_, reference) = split_repo(path)?;
    Ok(match reference {
        Some(_) => rest.to_string(),
        None => format!("{rest}:latest"),
    })
}

/// The tag a name without one means, as in docker.
pub const DEFAULT_TAG: &str = "latest";

/// An image name as docker reads it: `hello` means `hello:latest`. A name that already has a
/// tag (a `:` after its last `/`, so a registry port is not taken for one) or a digest stays
/// as it is. The store, `tag`, `convert -t`, `build -t`, `rm`, `inspect` and `boot` all read
/// names through this, so `hello` and `hello:latest` are one name everywhere.
pub fn with_default_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.is_empty() || last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:{DEFAULT_TAG}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_a_tag_means_latest() {
        assert_eq!(with_default_tag("hello"), "hello:latest");
        assert_eq!(with_default_tag("hello:1"), "hello:1");
        assert_eq!(with_default_tag("localhost:5000/team/app"), "localhost:5000/team/app:latest");
        assert_eq!(with_default_tag("localhost:5000/app:v2"), "localhost:5000/app:v2");
        assert_eq!(with_default_tag("app@sha256:abc"), "app@sha256:abc");
    }

    fn parse(s: &str) -> Result<SourceRef, InvalidSource> {
        s.parse()
    }

    #[test]
    fn local_transports_split_at_the_first_colon() {
        assert_eq!(
            parse("oci:/tmp/lay:v1").unwrap(),
            SourceRef::Oci { dir: "/tmp/lay".into(), reference: Some("v1".into()) }
        );
        assert_eq!(
            parse("oci-archive:a.tar").unwrap(),
            SourceRef::OciArchive { file: "a.tar".into(), reference: None }
        );
        assert_eq!(
            parse("docker-archive:x.tar:app:1").unwrap(),
            SourceRef::DockerArchive { file: "x.tar".into(), reference: Some("app:1".into()) }
        );
        assert!(parse("oci:").is_err());
        assert!(parse("oci:dir:").is_err());
    }

    #[test]
    fn daemon_names_get_latest() {
        let d = |n: &str| SourceRef::DockerDaemon { name: n.into() };
        assert_eq!(parse("docker-daemon:app").unwrap(), d("app:latest"));
        assert_eq!(parse("docker-daemon:diskc-test/busybox:latest").unwrap(), d("diskc-test/busybox:latest"));
        assert_eq!(parse("docker-daemon:localhost:5000/a/b").unwrap(), d("localhost:5000/a/b:latest"));
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse(&format!("docker-daemon:{id}")).unwrap(), d(&id));
        assert_eq!(parse(&format!("docker-daemon:app@{id}")).unwrap(), d(&format!("app@{id}")));
        assert!(parse("docker-daemon:App").is_err());
        assert!(parse("docker-daemon:").is_err());
    }

    #[test]
    fn registry_references() {
        let r = |s: &str| match parse(s).unwrap() {
            SourceRef::Registry(r) => r,
            other => panic!("{other:?}"),
        };
        let a = r("docker://127.0.0.1:5000/diskc/app:v2");
        assert_eq!((a.registry.as_str(), a.repository.as_str()), ("127.0.0.1:5000", "diskc/app"));
        assert_eq!(a.reference, RegistryTag::Tag("v2".into()));
        assert!(a.is_loopback());
        let b = r("docker://busybox");
        assert_eq!(b.to_string(), "docker.io/library/busybox:latest");
        assert!(!b.is_loopback());
        let d = Digest::of(b"m");
        let c = r(&format!("docker://localhost/x/y@{d}"));
        assert_eq!(c.reference, RegistryTag::Digest(d));
        assert!(c.is_loopback());
        assert!(parse("docker://").is_err());
        assert!(parse("docker://host:99999/a").is_err());
        assert!(parse("docker://h.io/a:b:c").is_err());
        assert!(parse("docker://h.io/a@sha256:12").is_err());
    }

    #[test]
    fn unknown_transport_is_a_usage_error() {
        use crate::error::Classify;
        let e = parse("dir:/x").unwrap_err();
        assert_eq!(e.error_kind(), crate::error::ErrorKind::Usage);
        assert!(e.to_string().contains("unknown transport"), "{e}");
        assert!(parse("plainname").is_err());
    }
}
