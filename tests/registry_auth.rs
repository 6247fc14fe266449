//! Authentication of the `docker://` source: HTTP basic against a real docker-registry
//! with an htpasswd file, the credentials coming from the config file `docker login`
//! writes; and the bearer-token flow (challenge, token from the realm with the
//! credentials, the token reused for every later request).

mod common;
mod registry_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use diskc::digest::HashingReader;
use diskc::error::{Classify, ErrorClass};
use diskc::source::registry::{Platform, Reference, Registry, RegistryError, RegistryOptions};
use registry_support::{build_app_image, config_file, docker_login, docker_push, TestRegistry};

const USER: &str = "diskc";
const PASSWORD: &str = "s3cret:with-colon";

fn client(reference: &str, config: &Path) -> Registry {
    let options = RegistryOptions { insecure: false, docker_config: Some(config.to_path_buf()) };
    Registry::new(reference.parse::<Reference>().unwrap(), &options).unwrap()
}

/// Resolves `reference` and checks that every layer blob streams with its digest.
fn resolve_and_fetch(reg: &Registry) {
    let resolved = reg.resolve(&Platform::host()).unwrap();
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
        let err = client(&reference, &config).resolve(&Platform::host()).unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Environment);
        assert!(err.to_string().contains(&reg.host()), "{err}");
    }
}

const TOKEN: &str = "diskc-test-token";
const SERVICE: &str = "diskc-test";

/// The bearer flow needs a token server, which Debian does not package for the registry.
/// This is the one fake in the registry tests, and it says so: a small HTTP server that
/// demands a bearer token on /v2/ (answering 401 with a `Bearer` challenge naming its own
/// /token realm), issues the token at /token only to the right basic credentials and for
/// the right scope, and forwards authorized /v2/ requests to a real docker-registry.
struct TokenProxy {
    port: u16,
    token_requests: Arc<AtomicUsize>,
}

impl TokenProxy {
    fn start(backend: u16, repo: &'static str) -> TokenProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_requests = Arc::new(AtomicUsize::new(0));
        let counter = token_requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || serve(stream, port, backend, repo, &counter));
            }
        });
        TokenProxy { port, token_requests }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
}

fn serve(mut stream: TcpStream, port: u16, backend: u16, repo: &str, token_requests: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));

    if let Some(query) = target.strip_prefix("/token?") {
        token_requests.fetch_add(1, Ordering::SeqCst);
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let has = |k: &str, v: &str| params.iter().any(|(pk, pv)| pk == k && pv == v);
        let scope_ok = has("scope", &format!("repository:{repo}:pull")) && has("service", SERVICE);
        if header("authorization").as_deref() == Some(basic.as_str()) && scope_ok {
            return respond(
                &mut stream,
                200,
                &[],
                format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).as_bytes(),
            );
        }
        return respond(&mut stream, 401, &[], b"{}");
    }
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        let challenge = format!(
            r#"Bearer realm="http://127.0.0.1:{port}/token",service="{SERVICE}",scope="repository:{repo}:pull""#
        );
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        return respond(&mut stream, 401, &[("WWW-Authenticate", challenge)], body);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(format!("http://127.0.0.1:{backend}{target}"));
    if let Some(accept) = header("accept") {
        request = request.header("Accept", accept);
    }
    let response = request.call().unwrap();
    let status = response.status().as_u16();
    let mut forwarded = Vec::new();
    for name in ["content-type", "docker-content-digest"] {
        if let Some(v) = response.headers().get(name) {
            forwarded.push((name, v.to_str().unwrap().to_string()));
        }
    }
    let mut body = Vec::new();
    response.into_body().into_reader().read_to_end(&mut body).unwrap();
    respond(&mut stream, status, &forwarded, &body);
}

#[test]
fn bearer_token_is_fetched_with_credentials_and_reused() {
    let image = build_app_image();
    let backend = TestRegistry::start();
    docker_push(image, &backend.host(), "diskc/app:v1", None);
    let proxy = TokenProxy::start(backend.port, "diskc/app");
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
    let err = client(&reference, &wrong).resolve(&Platform::host()).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Environment);
    assert!(err.to_string().contains(&host), "{err}");
}
