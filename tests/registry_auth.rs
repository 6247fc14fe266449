//! Authentication of the `docker://` source: HTTP basic against a real docker-registry
//! with an htpasswd file, the credentials coming from the config file `docker login`
//! writes; and the bearer-token flow (challenge, token from the realm with the
//! credentials, the token reused for every later request).

mod common;
mod registry_support;

use std::path::Path;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use diskc::digest::HashingReader;
use diskc::error::{Classify, ErrorKind};
use diskc::source::registry::{Registry, RegistryError, RegistryOptions};
use diskc::source::DEFAULT_PLATFORM;
use registry_support::{
    build_app_image, config_file, docker_login, docker_push, Behaviour, FrontProxy, TestRegistry,
    PROXY_PASSWORD as PASSWORD, PROXY_USER as USER,
};

fn client(reference: &str, config: &Path) -> Registry {
    let options = RegistryOptions { docker_config: Some(config.to_path_buf()), ..Default::default() };
    Registry::new(registry_support::registry_ref(reference), &options).unwrap()
}

/// Resolves `reference` and checks that every layer blob streams with its digest.
fn resolve_and_fetch(reg: &Registry) {
    let resolved = reg.resolve(DEFAULT_PLATFORM).unwrap();
    assert!(!resolved.layers.is_empty());
    for layer in &resolved.layers {
        let mut reader = HashingReader::new(reg.open_blob(layer).unwrap());
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        assert_eq!(reader.finish().0, layer.digest);
    }
}

fn write_config(dir: &Path, host: &str, user: &str, password: &str) -> std::path::PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(&path, format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    path
}

#[test]
fn basic_auth_uses_credentials_from_docker_login() {
    let image = build_app_image();
    let reg = TestRegistry::start_basic_auth(USER, PASSWORD);
    let docker_config = common::tempdir();
    docker_login(docker_config.path(), &reg.host(), USER, PASSWORD);
    docker_push(image, &reg.host(), "diskc/app:v1", Some(docker_config.path()));
    let reference = format!("docker://{}/diskc/app:v1", reg.host());

    resolve_and_fetch(&client(&reference, &config_file(docker_config.path())));

    let empty = common::tempdir();
    let wrong = write_config(empty.path(), &reg.host(), USER, "wrong");
    for config in [empty.path().join("absent.json"), wrong] {
        let err = client(&reference, &config).resolve(DEFAULT_PLATFORM).unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
        assert_eq!(err.error_kind(), ErrorKind::Environment);
        assert!(err.to_string().contains(&reg.host()), "{err}");
    }
}

#[test]
fn bearer_token_is_fetched_with_credentials_and_reused() {
    let image = build_app_image();
    let backend = TestRegistry::start();
    docker_push(image, &backend.host(), "diskc/app:v1", None);
    let proxy = FrontProxy::start(backend.port, Behaviour::RequireToken { repo: "diskc/app" });
    let host = format!("127.0.0.1:{}", proxy.port);
    let reference = format!("docker://{host}/diskc/app:v1");

    let dir = common::tempdir();
    let config = write_config(dir.path(), &host, USER, PASSWORD);
    resolve_and_fetch(&client(&reference, &config));
    assert_eq!(
        proxy.token_requests.load(Ordering::SeqCst),
        1,
        "one token serves the manifest, config and blobs"
    );

    let wrong = write_config(dir.path(), &host, USER, "wrong");
    let err = client(&reference, &wrong).resolve(DEFAULT_PLATFORM).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.error_kind(), ErrorKind::Environment);
    assert!(err.to_string().contains(&host), "{err}");
}
