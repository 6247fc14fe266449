//! The manifest kinds a registry may serve and which of them diskc reads: Docker schema 2
//! and OCI image manifests, and the Docker manifest lists and OCI indexes that point at
//! one manifest per platform. A registry answers with whatever it holds, so the body is
//! checked here before [`crate::source::spec`] reads it; schema 1 and unknown kinds are
//! refused by name rather than misread.

use serde::Deserialize;

use crate::source::spec::{self, Descriptor, IndexOrManifest};

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_MANIFEST_LIST: &str = spec::DOCKER_MANIFEST_LIST;
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = spec::OCI_INDEX;

/// The `Accept` header of a manifest request: every manifest kind this module reads.
pub(super) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The distribution spec lets registries refuse manifests above 4 MiB; accept that much.
pub(super) const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Why a manifest body was not read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ManifestProblem {
    /// Not valid JSON, or not the shape its kind has.
    Bad(String),
    /// A kind this module does not read, named by its media type (and schema version).
    Unsupported(String),
}

/// Reads a manifest body into the documents of [`spec`], refusing what is not a schema 2
/// manifest of a kind this module asked for. The body's own `mediaType` decides; OCI
/// manifests may leave it out, and then the shape does.
pub(super) fn parse_manifest(body: &[u8]) -> Result<IndexOrManifest, ManifestProblem> {
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

/// The platforms an index offers, for the error that none of them is the one asked for.
pub(super) fn available_platforms(manifests: &[Descriptor]) -> String {
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
}
