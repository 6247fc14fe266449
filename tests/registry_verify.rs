//! The `docker://` source checks what the registry serves: a manifest whose bytes do not
//! match the digest the registry announces for it, or a config whose bytes do not match
//! the manifest's descriptor, is bad input naming the blob. (Served through the tampering
//! proxy of registry_support in front of a real docker-registry.)

mod common;
mod registry_support;

use diskc::error::{Classify, ErrorKind};
use diskc::source::registry::{Registry, RegistryError, RegistryOptions};
use diskc::source::DEFAULT_PLATFORM;
use registry_support::{build_app_image, docker_inspect, docker_push, Behaviour, FrontProxy, TestRegistry};

fn resolve(host: &str) -> Result<diskc::source::ResolvedImage, RegistryError> {
    let options = RegistryOptions {
        docker_config: Some("/nonexistent/diskc/config.json".into()),
        ..Default::default()
    };
    let reference = registry_support::registry_ref(&format!("docker://{host}/diskc/app:v1"));
    Registry::new(reference, &options).unwrap().resolve(DEFAULT_PLATFORM)
}

#[test]
fn altered_manifest_or_config_is_rejected() {
    let image = build_app_image();
    let backend = TestRegistry::start();
    let pushed = docker_push(image, &backend.host(), "diskc/app:v1", None);
    let config_digest = docker_inspect(image, "{{.Id}}");

    // Through an honest proxy it resolves: the proxy itself changes nothing.
    let honest = FrontProxy::start(backend.port, Behaviour::Tamper { manifests: false, blob: None });
    assert_eq!(resolve(&honest.host()).unwrap().config_digest.to_string(), config_digest);

    let manifest = FrontProxy::start(backend.port, Behaviour::Tamper { manifests: true, blob: None });
    let err = resolve(&manifest.host()).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(err.error_kind(), ErrorKind::BadInput);
    assert!(err.to_string().contains("manifest v1") && err.to_string().contains(&pushed), "{err}");

    let config = FrontProxy::start(
        backend.port,
        Behaviour::Tamper { manifests: false, blob: Some(config_digest.clone()) },
    );
    let err = resolve(&config.host()).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(err.error_kind(), ErrorKind::BadInput);
    assert!(err.to_string().contains(&format!("config {config_digest}")), "{err}");
}
