//! A real registry for the registry tests: Debian's docker-registry started through
//! scripts/start-registry.sh on a free loopback port with its own storage, stopped when
//! the value is dropped; and pushes into it with the Debian Docker client.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

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
