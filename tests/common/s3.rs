//! A real S3 server for the tests: s3s-fs (installed by scripts/setup.sh) on a free loopback
//! port, with one bucket, stopped when dropped.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "diskc";

/// An s3s-fs server on a free loopback port, stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    _root: tempfile::TempDir,
}

pub fn s3s_fs() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let path = cargo_home.join("bin/s3s-fs");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = super::tempdir();
        fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "diskc-test", "--secret-key", "diskc-test-secret"])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, port, _root: root }
    }

    /// A diskc command configured for this server, with `store` as the local store.
    pub fn diskc(&self, store: &Path) -> Command {
        let mut cmd = super::diskc();
        cmd.env("DISKC_STORE", store);
        self.configure(&mut cmd);
        cmd
    }

    /// Points `cmd` at this server (the AWS_* variables object_store reads).
    pub fn configure(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ACCESS_KEY_ID", "diskc-test")
            .env("AWS_SECRET_ACCESS_KEY", "diskc-test-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
    }

    /// The directory s3s-fs serves: BUCKET/KEY is an object's file.
    pub fn root(&self) -> &Path {
        self._root.path()
    }

    pub fn url(&self) -> String {
        self.url_at("team")
    }

    pub fn url_at(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
