//! `diskc convert` against real registries the way docker, skopeo and crane users reach them:
//! `--platform` enforced on every transport, credentials from `--creds`, `--authfile`,
//! credential helpers (`credHelpers`, `credsStore`) and identity tokens, `--tls-verify=false`
//! for a plain-HTTP registry beyond loopback, and retries with backoff when a registry says
//! "later" or drops the connection.

mod common;
mod registry_support;

use std::path::Path;
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Instant;

use registry_support::{
    build_app_image, docker_login, docker_push, Behaviour, FrontProxy, TestRegistry, PROXY_IDENTITY_TOKEN,
};

const USER: &str = "ci";
const PASSWORD: &str = "pa:ss-word";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `diskc convert SOURCE ARGS… --store STORE -q`, with a Docker config dir of its own
/// (`docker_config`) so that the machine's logins play no part, and `path_prefix` before
/// PATH (where a test's credential helper lives).
fn convert(
    source: &str,
    args: &[&str],
    store: &Path,
    docker_config: &Path,
    path_prefix: Option<&Path>,
) -> Output {
    let mut command = common::diskc();
    command.args(["convert", source]).args(args).arg("--store").arg(store).arg("-q");
    command.env("DOCKER_CONFIG", docker_config);
    if let Some(dir) = path_prefix {
        command.env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap()));
    }
    command.output().unwrap()
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", stderr(out));
}

#[test]
fn platform_is_enforced_on_every_transport() {
    common::ensure_base_images(&["busybox"]);
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let layout = dir.path().join("layout");
    common::images::skopeo_copy(
        &format!("docker-daemon:{}", common::BUSYBOX_IMAGE),
        &format!("oci:{}:app", layout.display()),
        "gzip",
    );
    let reg = TestRegistry::start();
    docker_push(common::BUSYBOX_IMAGE, &reg.host(), "diskc/busybox:v1", None);
    let sources = [
        format!("oci:{}:app", layout.display()),
        format!("docker-daemon:{}", common::BUSYBOX_IMAGE),
        format!("docker://{}/diskc/busybox:v1", reg.host()),
    ];
    for source in &sources {
        let outdir = dir.path().join("out");
        let out = common::diskc()
            .args(["convert", source, "--platform", "linux/arm64/v8", "--no-store", "-o"])
            .arg(&outdir)
            .output()
            .unwrap();
        assert_exit(&out, 2, source);
        let message = stderr(&out);
        assert!(message.contains("linux/arm64/v8") && message.contains("linux/amd64"), "{source}: {message}");
        assert_eq!(message.trim().lines().count(), 1, "{message}");
        assert!(!outdir.exists(), "{source}: a refused conversion left {}", outdir.display());

        let out = convert(source, &["--platform", "linux/amd64"], &store, dir.path(), None);
        assert_exit(&out, 0, source);
    }

    for malformed in ["linux", "Linux/amd64", "linux/amd64/v1/x", "linux//amd64", ""] {
        let out = convert(&sources[0], &["--platform", malformed], &store, dir.path(), None);
        assert_exit(&out, 1, malformed);
        assert!(stderr(&out).contains("os/arch[/variant]"), "{}", stderr(&out));
    }
    let out = common::diskc().args(["build", "--platform", "amd64", "."]).output().unwrap();
    assert_exit(&out, 1, "build --platform amd64");
}

/// A `docker-credential-NAME` helper in `bin`: answers `get` for `host` with `user` and
/// `secret` (or says it knows nothing, as Docker's helpers do), and notes the server it was
/// asked about in `bin/asked`.
fn credential_helper(bin: &Path, name: &str, host: &str, answer: Option<(&str, &str)>) {
    let reply = match answer {
        Some((user, secret)) => format!(
            "printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$server\""
        ),
        None => "echo 'credentials not found in native keychain'; exit 1".to_string(),
    };
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> '{}/asked'\n\
         [ \"$server\" = '{host}' ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n{reply}\n",
        bin.display()
    );
    let path = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credentials_come_as_docker_finds_them_or_from_the_command_line() {
    let image = build_app_image();
    let reg = TestRegistry::start_basic_auth(USER, PASSWORD);
    let host = reg.host();
    let logged_in = common::tempdir();
    docker_login(logged_in.path(), &host, USER, PASSWORD);
    docker_push(image, &host, "diskc/app:v1", Some(logged_in.path()));
    let source = format!("docker://{host}/diskc/app:v1");
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let nobody = common::tempdir();

    let out = convert(&source, &[], &store, nobody.path(), None);
    assert_exit(&out, 3, "no credentials");
    assert!(stderr(&out).contains(&host) && stderr(&out).contains("--creds"), "{}", stderr(&out));

    let creds = format!("{USER}:{PASSWORD}");
    assert_exit(&convert(&source, &["--creds", &creds], &store, nobody.path(), None), 0, "--creds");
    let wrong = format!("{USER}:wrong");
    assert_exit(&convert(&source, &["--creds", &wrong], &store, nobody.path(), None), 3, "wrong --creds");
    let out = convert(&source, &["--creds", "nocolon"], &store, nobody.path(), None);
    assert_exit(&out, 1, "--creds without a colon");

    let authfile = logged_in.path().join("config.json");
    let out = convert(&source, &["--authfile", authfile.to_str().unwrap()], &store, nobody.path(), None);
    assert_exit(&out, 0, "--authfile");
    let out = convert(&source, &["--authfile", "/nonexistent/auth.json"], &store, nobody.path(), None);
    assert_exit(&out, 2, "--authfile missing");
    assert!(stderr(&out).contains("/nonexistent/auth.json"), "{}", stderr(&out));

    // credHelpers, then credsStore: the helper is run with the registry's host.
    let bin = common::tempdir();
    credential_helper(bin.path(), "diskctest", &host, Some((USER, PASSWORD)));
    credential_helper(bin.path(), "empty", &host, None);
    for config in [
        format!(r#"{{"credHelpers":{{"{host}":"diskctest"}}}}"#),
        r#"{"credsStore":"diskctest"}"#.to_string(),
    ] {
        let docker_config = common::tempdir();
        std::fs::write(docker_config.path().join("config.json"), &config).unwrap();
        let _ = std::fs::remove_file(bin.path().join("asked"));
        let out = convert(&source, &[], &store, docker_config.path(), Some(bin.path()));
        assert_exit(&out, 0, &config);
        assert_eq!(std::fs::read_to_string(bin.path().join("asked")).unwrap().trim(), host, "{config}");
    }
    // A helper that knows nothing of the host: anonymous, and the registry refuses.
    let docker_config = common::tempdir();
    std::fs::write(docker_config.path().join("config.json"), r#"{"credsStore":"empty"}"#).unwrap();
    let out = convert(&source, &[], &store, docker_config.path(), Some(bin.path()));
    assert_exit(&out, 3, "helper without credentials");
    // A helper that is not there is an error naming the problem, not anonymous access.
    std::fs::write(docker_config.path().join("config.json"), r#"{"credsStore":"absent"}"#).unwrap();
    let out = convert(&source, &[], &store, docker_config.path(), Some(bin.path()));
    assert_exit(&out, 3, "missing helper");
    assert!(stderr(&out).contains("credential helper"), "{}", stderr(&out));
}

#[test]
fn an_identity_token_is_exchanged_at_the_token_realm() {
    let image = build_app_image();
    let backend = TestRegistry::start();
    docker_push(image, &backend.host(), "diskc/app:v1", None);
    let proxy = FrontProxy::start(backend.port, Behaviour::RequireToken { repo: "diskc/app" });
    let source = format!("docker://{}/diskc/app:v1", proxy.host());
    let dir = common::tempdir();
    let store = dir.path().join("store");

    let docker_config = common::tempdir();
    let config = docker_config.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"{}":{{"identitytoken":"{PROXY_IDENTITY_TOKEN}"}}}}}}"#, proxy.host()),
    )
    .unwrap();
    assert_exit(&convert(&source, &[], &store, docker_config.path(), None), 0, "identity token");
    assert_eq!(proxy.token_requests.load(Ordering::SeqCst), 1, "one token for the whole pull");

    std::fs::write(&config, format!(r#"{{"auths":{{"{}":{{"identitytoken":"stale"}}}}}}"#, proxy.host()))
        .unwrap();
    assert_exit(&convert(&source, &[], &store, docker_config.path(), None), 3, "stale identity token");
}

#[test]
fn tls_verify_false_reaches_a_plain_http_registry_beyond_loopback() {
    let image = build_app_image();
    let reg = TestRegistry::start_on_all_interfaces();
    docker_push(image, &reg.host(), "diskc/app:v1", None);
    let address = registry_support::non_loopback_address();
    let source = format!("docker://{address}:{}/diskc/app:v1", reg.port);
    refused_until_tls_verify_false(&source, &address.to_string(), "HTTPS to a plain-HTTP registry");
}

/// `source` is refused (exit 3, naming `address` and the flag) until `--tls-verify=false`.
fn refused_until_tls_verify_false(source: &str, address: &str, context: &str) {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let out = convert(source, &[], &store, dir.path(), None);
    assert_exit(&out, 3, context);
    assert!(
        stderr(&out).contains(address) && stderr(&out).contains("--tls-verify=false"),
        "{}",
        stderr(&out)
    );
    assert_exit(&convert(source, &["--tls-verify=false"], &store, dir.path(), None), 0, "--tls-verify=false");
}

#[test]
fn tls_verify_false_accepts_a_certificate_no_one_vouches_for() {
    let image = build_app_image();
    let plain = TestRegistry::start();
    docker_push(image, &plain.host(), "diskc/app:v1", None);
    let address = registry_support::non_loopback_address();
    let tls = TestRegistry::start_tls_serving(&plain, address);
    let source = format!("docker://{address}:{}/diskc/app:v1", tls.port);
    refused_until_tls_verify_false(&source, &address.to_string(), "a self-signed certificate");
}

/// Pushes the app image to a fresh registry behind a proxy that `behaviour`s; returns the
/// registry (keep it alive), the proxy and the source naming the image through it.
fn behind(behaviour: Behaviour) -> (TestRegistry, FrontProxy, String) {
    let backend = TestRegistry::start();
    docker_push(build_app_image(), &backend.host(), "diskc/app:v1", None);
    let proxy = FrontProxy::start(backend.port, behaviour);
    let source = format!("docker://{}/diskc/app:v1", proxy.host());
    (backend, proxy, source)
}

#[test]
fn answers_that_say_later_are_tried_again_with_backoff() {
    let dir = common::tempdir();
    for (failures, status) in [(3, 503), (2, 0), (1, 500)] {
        let (_reg, proxy, source) = behind(Behaviour::FailFirst { failures, status, retry_after: None });
        let store = dir.path().join(format!("store-{status}"));
        assert_exit(&convert(&source, &[], &store, dir.path(), None), 0, &format!("{failures} × {status}"));
        assert!(proxy.requests.load(Ordering::SeqCst) > failures);
    }

    // Retry-After is honoured.
    let (_reg, _proxy, source) =
        behind(Behaviour::FailFirst { failures: 1, status: 429, retry_after: Some(2) });
    let started = Instant::now();
    assert_exit(&convert(&source, &[], &dir.path().join("store-429"), dir.path(), None), 0, "429");
    assert!(started.elapsed().as_secs_f64() >= 2.0, "Retry-After: 2 not waited for: {:?}", started.elapsed());

    // Bounded: a registry that never recovers is tried five times, then the error stands.
    let (_reg, proxy, source) =
        behind(Behaviour::FailFirst { failures: usize::MAX, status: 503, retry_after: None });
    let out = convert(&source, &[], &dir.path().join("store-down"), dir.path(), None);
    assert_exit(&out, 3, "always 503");
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 5);

    // Not every error is "later": a 404 is answered at once.
    let (_reg, proxy, _) = behind(Behaviour::FailFirst { failures: 0, status: 503, retry_after: None });
    let missing = format!("docker://{}/diskc/app:missing", proxy.host());
    assert_exit(&convert(&missing, &[], &dir.path().join("store-404"), dir.path(), None), 2, "unknown tag");
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 1);
}
