//! A real registry for the registry tests: Debian's docker-registry started through
//! scripts/start-registry.sh on a free loopback port with its own storage, stopped when
//! the value is dropped; and pushes into it with the Debian Docker client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;

use crate::common::{repo_root, run_ok, tempdir, DOCKER};

/// An IPv4 address of this machine that is not loopback: the one a packet to a
/// documentation address would leave from (no packet is sent), else docker0's.
pub fn non_loopback_address() -> std::net::Ipv4Addr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    for probe in ["192.0.2.1:9", "172.17.0.2:9"] {
        if socket.connect(probe).is_ok() {
            if let std::net::IpAddr::V4(a) = socket.local_addr().unwrap().ip() {
                if !a.is_loopback() && !a.is_unspecified() {
                    return a;
                }
            }
        }
    }
    panic!("this machine has no IPv4 address besides loopback (not even Docker's docker0)");
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct TestRegistry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pid: i32,
}

impl TestRegistry {
    /// A registry without authentication.
    pub fn start() -> TestRegistry {
        Self::start_with(tempdir(), &[], false)
    }

    /// A registry without authentication that listens on every interface, so that it can be
    /// reached at an address that is not loopback.
    pub fn start_on_all_interfaces() -> TestRegistry {
        Self::start_with(tempdir(), &[], true)
    }

    /// A registry with HTTP basic authentication: one user, from an htpasswd file made
    /// with apache2-utils' htpasswd (bcrypt, which is what the registry accepts). The file
    /// lives in the registry's directory: the registry reads it on the first request.
    pub fn start_basic_auth(user: &str, password: &str) -> TestRegistry {
        let dir = tempdir();
        let htpasswd = dir.path().join("htpasswd");
        run_ok(Command::new("htpasswd").args(["-Bbc"]).arg(&htpasswd).args([user, password]));
        Self::start_with(
            dir,
            &[
                ("REGISTRY_AUTH", "htpasswd"),
                ("REGISTRY_AUTH_HTPASSWD_REALM", "diskc-test"),
                ("REGISTRY_AUTH_HTPASSWD_PATH", htpasswd.to_str().unwrap()),
            ],
            false,
        )
    }

    /// A registry serving `other`'s images over HTTPS on every interface, with a
    /// self-signed certificate (made by openssl) for `address`, which no client trusts.
    pub fn start_tls_serving(other: &TestRegistry, address: std::net::Ipv4Addr) -> TestRegistry {
        let dir = tempdir();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=diskc-test",
                ])
                .arg("-addext")
                .arg(format!("subjectAltName=IP:{address}"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let storage = other.dir.path().join("storage");
        Self::start_with(
            dir,
            &[
                ("REGISTRY_HTTP_TLS_CERTIFICATE", cert.to_str().unwrap()),
                ("REGISTRY_HTTP_TLS_KEY", key.to_str().unwrap()),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", storage.to_str().unwrap()),
            ],
            true,
        )
    }

    fn start_with(dir: tempfile::TempDir, env: &[(&str, &str)], all_interfaces: bool) -> TestRegistry {
        // Another process may take the port between free_port and the bind; retry then.
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new(repo_root().join("scripts/start-registry.sh"));
            command.arg(port.to_string()).arg(dir.path()).envs(env.iter().copied());
            if all_interfaces {
                // The registry's own override of `http.addr` in the script's config.
                command.env("REGISTRY_HTTP_ADDR", format!("0.0.0.0:{port}"));
            }
            let status = command.status().expect("scripts/start-registry.sh");
            if status.success() {
                let pid =
                    std::fs::read_to_string(dir.path().join("registry.pid")).unwrap().trim().parse().unwrap();
                return TestRegistry { port, dir, pid };
            }
        }
        panic!("docker-registry did not start; see {}", dir.path().join("registry.log").display());
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the registry this value started; no memory is
        // involved.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}

/// Pushes local image `image` to `host` as `repo:tag` with the Docker client (optionally
/// with a client config dir, for a registry that needs `docker login`), then removes the
/// extra local tag again. Returns the manifest digest the push reports.
pub fn docker_push(image: &str, host: &str, repo_tag: &str, config: Option<&Path>) -> String {
    let remote = format!("{host}/{repo_tag}");
    run_ok(Command::new(DOCKER).args(["tag", image, &remote]));
    let mut push = Command::new(DOCKER);
    if let Some(dir) = config {
        push.arg("--config").arg(dir);
    }
    let out = push.args(["push", &remote]).output().expect("docker push");
    run_ok(Command::new(DOCKER).args(["rmi", &remote]));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "docker push {remote} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "latest: digest: sha256:... size: 527"
    let digest = stdout
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in the output of docker push: {stdout}"));
    digest.to_string()
}

/// `docker --config DIR login` to `host`: writes DIR/config.json with the `auths` entry a
/// Docker client keeps, which is where diskc reads credentials from.
pub fn docker_login(config: &Path, host: &str, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(DOCKER)
        .arg("--config")
        .arg(config)
        .args(["login", host, "-u", user, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker login");
    child.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login {host}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The Docker client config dir made by [`docker_login`], as a path to its config file.
pub fn config_file(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// `docker image inspect -f FORMAT image`.
pub fn docker_inspect(image: &str, format: &str) -> String {
    let out = run_ok(Command::new(DOCKER).args(["image", "inspect", "-f", format, image]));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The image the registry tests push: busybox plus one layer and a command, built with
/// BuildKit once per test binary.
pub const APP_IMAGE: &str = "diskc-test/remote-app:latest";

pub fn build_app_image() -> &'static str {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        crate::common::ensure_base_images(&["busybox"]);
        let context = tempdir();
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM diskc-test/busybox:latest\n\
             RUN mkdir -p /srv && echo 'hello from diskc' > /srv/hello && chmod 4755 /srv/hello\n\
             ENV GREETING=hello\n\
             CMD [\"/bin/cat\", \"/srv/hello\"]\n",
        )
        .unwrap();
        run_ok(
            Command::new(DOCKER)
                .env("DOCKER_BUILDKIT", "1")
                .args(["build", "-q", "-t", APP_IMAGE])
                .arg(context.path()),
        );
    });
    APP_IMAGE
}

/// The credentials [`FrontProxy`] issues tokens for (a colon in the password, as basic auth
/// allows).
pub const PROXY_USER: &str = "diskc";
pub const PROXY_PASSWORD: &str = "s3cret:with-colon";
/// The identity (OAuth2 refresh) token [`FrontProxy`]'s realm exchanges for an access token.
pub const PROXY_IDENTITY_TOKEN: &str = "diskc-refresh-token";
const TOKEN: &str = "diskc-test-token";
const SERVICE: &str = "diskc-test";

/// What [`FrontProxy`] does in front of the real registry.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Demand a bearer token on /v2/: answer 401 with a `Bearer` challenge naming the
    /// proxy's own /token realm, which issues the token only to [`PROXY_USER`] with
    /// [`PROXY_PASSWORD`] and only for pull access to `repo`.
    RequireToken { repo: &'static str },
    /// Serve what the registry serves, but alter manifests (valid JSON, other bytes) and
    /// flip a byte of the blob with digest `blob`.
    Tamper { manifests: bool, blob: Option<String> },
    /// Answer the first `failures` requests with `status` (and `Retry-After` when given),
    /// or, with status 0, by closing the connection unanswered; then forward.
    FailFirst { failures: usize, status: u16, retry_after: Option<u64> },
}

/// The one fake in the registry tests, and it says so. The bearer flow needs a token
/// server, which Debian does not package for docker-registry, and a registry that serves
/// bytes not matching their digests cannot be made from a correct one. So this small HTTP
/// server stands in front of a real docker-registry and forwards to it, adding only what
/// [`Behaviour`] says.
pub struct FrontProxy {
    pub port: u16,
    pub token_requests: Arc<AtomicUsize>,
    /// Every request the proxy took, answered or not.
    pub requests: Arc<AtomicUsize>,
}

impl FrontProxy {
    pub fn start(backend: u16, behaviour: Behaviour) -> FrontProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_requests = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (counter, all) = (token_requests.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                let behaviour = behaviour.clone();
                let seen = all.fetch_add(1, Ordering::SeqCst);
                if let Behaviour::FailFirst { failures, status: 0, .. } = behaviour {
                    if seen < failures {
                        // A reset: the connection closes with the request unanswered.
                        drop(stream);
                        continue;
                    }
                }
                std::thread::spawn(move || serve(stream, port, backend, &behaviour, &counter, seen));
            }
        });
        FrontProxy { port, token_requests, requests }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
    // The client may hang up early (it has what it needs); that is not the proxy's failure.
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
}

fn serve(
    mut stream: TcpStream,
    port: u16,
    backend: u16,
    behaviour: &Behaviour,
    token_requests: &AtomicUsize,
    seen: usize,
) {
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
    let length: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let form: Vec<(String, String)> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();

    if let Behaviour::FailFirst { failures, status, retry_after } = behaviour {
        if seen < *failures {
            let headers: Vec<(&str, String)> =
                retry_after.iter().map(|s| ("Retry-After", s.to_string())).collect();
            return respond(&mut stream, *status, &headers, b"{}");
        }
    }

    if let Behaviour::RequireToken { repo } = behaviour {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{PROXY_USER}:{PROXY_PASSWORD}"))
        );
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
                let body = format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#);
                return respond(&mut stream, 200, &[], body.as_bytes());
            }
            return respond(&mut stream, 401, &[], b"{}");
        }
        // OAuth2's refresh-token grant, as the Docker client sends an identity token.
        if request_line.starts_with("POST /token ") {
            token_requests.fetch_add(1, Ordering::SeqCst);
            let has = |k: &str, v: &str| form.iter().any(|(fk, fv)| fk == k && fv == v);
            if has("grant_type", "refresh_token")
                && has("refresh_token", PROXY_IDENTITY_TOKEN)
                && has("scope", &format!("repository:{repo}:pull"))
                && has("service", SERVICE)
            {
                let body = format!(r#"{{"access_token":"{TOKEN}","expires_in":300}}"#);
                return respond(&mut stream, 200, &[], body.as_bytes());
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
    if let Behaviour::Tamper { manifests, blob } = behaviour {
        if *manifests && target.contains("/manifests/") {
            // Still valid JSON, and the registry's Docker-Content-Digest still announced.
            body.insert(0, b' ');
        }
        if blob.as_ref().is_some_and(|d| target.ends_with(&format!("/blobs/{d}"))) && !body.is_empty() {
            let last = body.len() - 1;
            body[last] ^= 0x20;
        }
    }
    respond(&mut stream, status, &forwarded, &body);
}

/// The registry part of a `docker://` SOURCE.
pub fn registry_ref(source: &str) -> diskc::source::RegistryRef {
    match source.parse::<diskc::source::SourceRef>().unwrap() {
        diskc::source::SourceRef::Registry(r) => r,
        other => panic!("{source} is not a registry source: {other:?}"),
    }
}
