//! The JSON documents of an image, as the OCI image spec and Docker's formats define them:
//! index, manifest, image config, and a `docker save` archive's `manifest.json`. Only the
//! fields diskc uses are read; unknown fields are ignored and JSON `null` reads as empty,
//! since Docker writes `null` for empty lists.
//!
//! These are our own serde types rather than the `oci-spec` crate's, which were tried per
//! document and fit none of them without refusing input diskc reads today:
//! - index and manifest: `oci-spec` requires `size` and `mediaType` on every descriptor and
//!   refuses `"manifests": null` and `"layers": null`; its digests are strings of their own
//!   type, while every stage here keys on [`Digest`].
//! - image config: it requires `architecture` and `os` (Docker leaves empty ones out) and a
//!   non-null `rootfs.diff_ids`, and it collects `ExposedPorts` through a hash map, in an
//!   order that changes from run to run, while the ports are written into the output
//!   manifest and the image record, which must be the same bytes on every run.
//! - a `docker save` archive's `manifest.json` is Docker's format, which `oci-spec` has no
//!   type for.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::digest::Digest;
use crate::manifest::ImageConfig;

/// `application/vnd.oci.image.index.v1+json`; Docker's manifest list is the same shape.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The annotation that names a manifest in an OCI layout's `index.json` (image-spec
/// annotations.md: "org.opencontainers.image.ref.name").
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The platform this host runs, and so the default when an index offers several.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{}", self.os, self.architecture, v),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Whether this is the `os/arch[/variant]` asked for; no variant asked matches any.
    pub fn matches(&self, wanted: &str) -> bool {
        platform_matches(&self.name(), wanted)
    }
}

/// Whether an image built for `have` is the `wanted` one (both `os/arch[/variant]`); no
/// variant asked matches any.
pub fn platform_matches(have: &str, wanted: &str) -> bool {
    let (mut have, mut wanted) = (have.split('/'), wanted.split('/'));
    have.next() == wanted.next()
        && have.next() == wanted.next()
        && wanted.next().is_none_or(|variant| have.next() == Some(variant))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default, deserialize_with = "null_default")]
    pub annotations: BTreeMap<String, String>,
}

/// The first of an index's manifests built for `platform` (`os/arch[/variant]`).
pub fn select_platform<'d>(manifests: &'d [Descriptor], platform: &str) -> Option<&'d Descriptor> {
    manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.matches(platform)))
}

/// An image index (or Docker manifest list), and an OCI layout's `index.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(deserialize_with = "null_default")]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI, or Docker schema 2).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(deserialize_with = "null_default")]
    pub layers: Vec<Descriptor>,
}

/// Either document, told apart by what it holds.
pub enum IndexOrManifest {
    Index(Index),
    Manifest(Manifest),
}

pub fn parse_index_or_manifest(bytes: &[u8]) -> serde_json::Result<IndexOrManifest> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    Ok(if probe.manifests.is_some() {
        IndexOrManifest::Index(serde_json::from_slice(bytes)?)
    } else {
        IndexOrManifest::Manifest(serde_json::from_slice(bytes)?)
    })
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveImage {
    /// Path of the config inside the archive.
    pub config: String,
    #[serde(default, deserialize_with = "null_default")]
    pub repo_tags: Vec<String>,
    /// Paths of the layer tars, bottom first.
    #[serde(deserialize_with = "null_default")]
    pub layers: Vec<String>,
}

/// Reads a `docker save` archive's `manifest.json`: one entry per image.
pub fn parse_archive_manifest(bytes: &[u8]) -> serde_json::Result<Vec<ArchiveImage>> {
    serde_json::from_slice(bytes)
}

/// What diskc takes from an image config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedConfig {
    pub config: ImageConfig,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
    /// `os/arch[/variant]`.
    pub platform: String,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    config: RawRunConfig,
    rootfs: RawRootfs,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default, deserialize_with = "null_default")]
    entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    env: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    working_dir: String,
    #[serde(default, deserialize_with = "null_default")]
    user: String,
    #[serde(default, deserialize_with = "null_default")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(deserialize_with = "null_default")]
    diff_ids: Vec<Digest>,
}

/// Reads an image config blob. The spec's `rootfs.type` "MUST be set to `layers`".
pub fn parse_config(bytes: &[u8]) -> Result<ParsedConfig, String> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| format!("invalid image config: {e}"))?;
    if raw.rootfs.kind != "layers" {
        return Err(format!("image config rootfs.type is {:?}, not \"layers\"", raw.rootfs.kind));
    }
    let platform = Platform { architecture: raw.architecture, os: raw.os, variant: raw.variant }.name();
    let c = raw.config;
    Ok(ParsedConfig {
        config: ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env,
            working_dir: c.working_dir,
            user: c.user,
            labels: c.labels,
            exposed_ports: c.exposed_ports.into_keys().collect(),
            stop_signal: c.stop_signal,
        },
        diff_ids: raw.rootfs.diff_ids,
        platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_with_nulls_parses() {
        let d = Digest::of(b"layer");
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"],"Cmd":null,"Entrypoint":["/bin/sh","-c"],
            "WorkingDir":"/w","User":"1000:1000","Labels":null,"ExposedPorts":{{"80/tcp":{{}}}}}},
            "rootfs":{{"type":"layers","diff_ids":["{d}"]}},"history":[]}}"#
        );
        let p = parse_config(json.as_bytes()).unwrap();
        assert_eq!(p.platform, "linux/amd64");
        assert_eq!(p.diff_ids, vec![d]);
        assert_eq!(p.config.argv(), ["/bin/sh", "-c"]);
        assert_eq!(p.config.exposed_ports, ["80/tcp"]);
        assert_eq!(p.config.working_dir, "/w");
        assert!(parse_config(br#"{"rootfs":{"type":"other","diff_ids":[]}}"#).is_err());
        assert!(parse_config(b"{").is_err());
    }

    #[test]
    fn platforms_match_with_optional_variant() {
        let p = Platform { architecture: "arm".into(), os: "linux".into(), variant: Some("v7".into()) };
        assert!(p.matches("linux/arm") && p.matches("linux/arm/v7"));
        assert!(!p.matches("linux/arm/v6") && !p.matches("linux/amd64") && !p.matches("linux"));
        assert_eq!(p.name(), "linux/arm/v7");
        assert!(
            platform_matches("linux/amd64", "linux/amd64") && platform_matches("linux/arm/v7", "linux/arm")
        );
        assert!(
            !platform_matches("linux/amd64", "linux/arm64") && !platform_matches("linux/arm", "linux/arm/v7")
        );
        assert!(!platform_matches("/", "linux/amd64"));
    }
}
