//! The OCI and Docker JSON documents diskc reads from untrusted sources (an index or
//! manifest, an image config, a `docker save` archive's `manifest.json`): every parser gets
//! every input. An error is fine; a panic is a bug. What parses must also be usable: platform
//! names, platform selection and the config's command line.

use diskc::source::spec::{parse_archive_manifest, parse_config, parse_index_or_manifest, select_platform};
use diskc::source::spec::{IndexOrManifest, Platform, DEFAULT_PLATFORM};

pub fn check(data: &[u8]) {
    match parse_index_or_manifest(data) {
        Ok(IndexOrManifest::Index(index)) => {
            for m in &index.manifests {
                if let Some(p) = &m.platform {
                    platform_names_itself(p);
                }
            }
            let _ = select_platform(&index.manifests, DEFAULT_PLATFORM);
        }
        Ok(IndexOrManifest::Manifest(manifest)) => {
            let _ = (manifest.config.digest.to_string(), manifest.layers.len());
        }
        Err(_) => {}
    }
    if let Ok(config) = parse_config(data) {
        let _ = config.config.argv();
        assert!(config.platform.split('/').count() >= 2, "platform {:?}", config.platform);
    }
    if let Ok(images) = parse_archive_manifest(data) {
        for image in images {
            let _ = (image.config, image.repo_tags, image.layers);
        }
    }
}

/// A platform is matched by the name it prints, when no part holds the separator.
fn platform_names_itself(p: &Platform) {
    let parts = [Some(&p.os), Some(&p.architecture), p.variant.as_ref()];
    if parts.iter().flatten().all(|s| !s.contains('/')) && !p.os.is_empty() && !p.architecture.is_empty() {
        assert!(p.matches(&p.name()), "{p:?} does not match its name {}", p.name());
    }
}
