//! Credentials found where the Docker client keeps them: `$DOCKER_CONFIG/config.json`,
//! with no path given to the registry client. Its own test binary, because it sets the
//! process environment.

mod common;
mod registry_support;

use diskc::digest::Digest;
use diskc::error::{Classify, ErrorKind};
use diskc::source::registry::{Registry, RegistryOptions};
use diskc::source::DEFAULT_PLATFORM;
use registry_support::{build_app_image, docker_login, docker_push, TestRegistry};

#[test]
fn credentials_come_from_docker_config_env() {
    let image = build_app_image();
    let reg = TestRegistry::start_basic_auth("envuser", "envpass");
    let reference = registry_support::registry_ref(&format!("docker://{}/diskc/app:v1", reg.host()));

    let logged_in = common::tempdir();
    docker_login(logged_in.path(), &reg.host(), "envuser", "envpass");
    docker_push(image, &reg.host(), "diskc/app:v1", Some(logged_in.path()));

    let not_logged_in = common::tempdir();
    std::env::set_var("DOCKER_CONFIG", not_logged_in.path());
    let err = Registry::new(reference.clone(), &RegistryOptions::default())
        .unwrap()
        .resolve(DEFAULT_PLATFORM)
        .unwrap_err();
    assert_eq!(err.error_kind(), ErrorKind::Environment, "{err}");
    assert!(
        err.to_string().contains(&not_logged_in.path().join("config.json").display().to_string()),
        "{err}"
    );

    std::env::set_var("DOCKER_CONFIG", logged_in.path());
    let resolved =
        Registry::new(reference, &RegistryOptions::default()).unwrap().resolve(DEFAULT_PLATFORM).unwrap();
    assert_eq!(Digest::of(&resolved.config_json), resolved.config_digest);
}
