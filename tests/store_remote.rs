//! Push and pull against a real S3 server (s3s-fs, installed by scripts/setup.sh, started
//! here on a loopback port): the same id and a byte-identical export after a round trip,
//! a variant pull moving about its new bytes only, a second pull moving nothing, and push or
//! pull killed with SIGKILL at random points leaving both stores valid.

mod common;

use common::sample::{sample_bytes as bytes, sparse_file};

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

const MIB: u64 = 1 << 20;
const BUCKET: &str = "diskc";

/// An s3s-fs server on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

fn s3s_fs() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let path = cargo_home.join("bin/s3s-fs");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

impl S3Server {
    fn start() -> S3Server {
        let root = common::tempdir();
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
    fn diskc(&self, store: &Path) -> Command {
        let mut cmd = common::diskc();
        cmd.env("DISKC_STORE", store)
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ACCESS_KEY_ID", "diskc-test")
            .env("AWS_SECRET_ACCESS_KEY", "diskc-test-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
        cmd
    }

    fn url(&self) -> String {
        self.url_at("team")
    }

    fn url_at(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_ok(cmd: &mut Command) -> Value {
    let out = common::run_ok(cmd);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn put(s3: &S3Server, store: &Path, image: &Path) -> String {
    json_ok(s3.diskc(store).args(["store-put", "--json"]).arg(image))["id"].as_str().unwrap().to_string()
}

/// (id, transferred_bytes) of a push or pull.
fn transfer(s3: &S3Server, store: &Path, verb: &str, image: &str) -> (String, u64) {
    transfer_at(s3, store, verb, image, &s3.url())
}

fn transfer_at(s3: &S3Server, store: &Path, verb: &str, image: &str, url: &str) -> (String, u64) {
    let out = json_ok(s3.diskc(store).args([verb, "--json", image, url]));
    (out["id"].as_str().unwrap().to_string(), out["transferred_bytes"].as_u64().unwrap())
}

fn exported(s3: &S3Server, store: &Path, image: &str, out: &Path) -> Vec<u8> {
    common::run_ok(s3.diskc(store).args(["export", image, "-o"]).arg(out));
    fs::read(out).unwrap()
}

fn assert_verify_clean(s3: &S3Server, store: &Path, context: &str) {
    let out = s3.diskc(store).arg("verify").output().unwrap();
    assert!(
        out.status.success(),
        "{context}: verify of {} exited {}:\n{}{}",
        store.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A base image and a variant adding 4 MiB of new data to it.
fn family(dir: &Path) -> (PathBuf, PathBuf, u64) {
    let base_data = bytes(51, 24 * MIB as usize);
    let added = bytes(52, 4 * MIB as usize);
    let base = dir.join("base.img");
    let variant = dir.join("variant.img");
    sparse_file(&base, 64 * MIB, &[(0, &base_data)]);
    sparse_file(&variant, 64 * MIB, &[(0, &base_data[..]), (32 * MIB, &added[..])]);
    (base, variant, added.len() as u64)
}

#[test]
fn push_then_pull_gives_the_same_image_and_a_variant_pull_moves_only_its_new_bytes() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let (base, variant, added) = family(dir.path());
    let here = dir.path().join("here");
    let there = dir.path().join("there");
    let base_id = put(&s3, &here, &base);
    common::run_ok(s3.diskc(&here).args(["tag", &base_id, "team/base:1"]));

    let (pushed, sent) = transfer(&s3, &here, "push", "team/base:1");
    assert_eq!(pushed, base_id);
    assert!(sent > 10 * MIB, "the push sent only {sent} bytes");
    let again = transfer(&s3, &here, "push", "team/base:1").1;
    assert_eq!(again, 65, "a second push sends only the name (an id and a newline)");

    let (pulled, received) = transfer(&s3, &there, "pull", "team/base:1");
    assert_eq!(pulled, base_id);
    assert!(received > 10 * MIB, "{received}");
    assert_eq!(exported(&s3, &there, "team/base:1", &dir.path().join("a.img")), fs::read(&base).unwrap());
    assert_verify_clean(&s3, &there, "after the first pull");
    assert_eq!(transfer(&s3, &there, "pull", &base_id), (base_id.clone(), 0), "a second pull moved bytes");

    let variant_id = put(&s3, &here, &variant);
    transfer(&s3, &here, "push", &variant_id);
    let (pulled, moved) = transfer(&s3, &there, "pull", &variant_id);
    assert_eq!(pulled, variant_id);
    let budget = added + added / 10 + 2 * MIB;
    assert!(moved <= budget, "the variant pull moved {moved} bytes for {added} new (budget {budget})");
    assert_eq!(exported(&s3, &there, &variant_id, &dir.path().join("v.img")), fs::read(&variant).unwrap());
    assert_eq!(transfer(&s3, &there, "pull", &variant_id).1, 0, "a second variant pull moved bytes");
    assert_verify_clean(&s3, &there, "after the variant pull");
}

/// xorshift; the seed is printed in every failure message.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn push_and_pull_killed_at_random_points_leave_both_stores_valid() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let (base, _, _) = family(dir.path());
    let here = dir.path().join("here");
    let id = put(&s3, &here, &base);
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let spawn = |store: &Path, verb: &str, url: &str| {
        s3.diskc(store)
            .args([verb, "--json", &id, url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let timed = |store: &Path, verb: &str, url: &str| {
        let started = Instant::now();
        assert!(spawn(store, verb, url).wait().unwrap().success());
        started.elapsed()
    };
    // How long each takes here: a push to a prefix of its own, a pull into a store of its own.
    let push_full = timed(&here, "push", &s3.url());
    let pull_full = timed(&dir.path().join("probe"), "pull", &s3.url());

    for verb in ["push", "pull"] {
        let mut kills = 0;
        for attempt in 0..6 {
            // A push goes to a fresh prefix (the remote lacks everything); a pull into a
            // fresh store (the local store lacks everything).
            let (store, url, full) = match verb {
                "push" => (here.clone(), s3.url_at(&format!("push{attempt}")), push_full),
                _ => (dir.path().join(format!("pull{attempt}")), s3.url(), pull_full),
            };
            let delay = Duration::from_micros(rng.below(full.as_micros() as u64));
            let context =
                format!("seed {seed}, {verb} attempt {attempt}, killed after {delay:?} of {full:?}");
            let mut child = spawn(&store, verb, &url);
            std::thread::sleep(delay);
            child.kill().unwrap();
            if child.wait().unwrap().signal() == Some(libc::SIGKILL) {
                kills += 1;
            }
            assert_verify_clean(&s3, &store, &context);
            assert_eq!(transfer_at(&s3, &store, verb, &id, &url).0, id, "{context}: the re-run");
            assert_verify_clean(&s3, &store, &context);
            // The remote is valid: a fresh store pulls the image whole from it.
            let fresh = dir.path().join(format!("fresh-{verb}{attempt}"));
            transfer_at(&s3, &fresh, "pull", &id, &url);
            let out = dir.path().join("out.img");
            assert!(
                exported(&s3, &fresh, &id, &out) == fs::read(&base).unwrap(),
                "{context}: export differs"
            );
            assert_verify_clean(&s3, &fresh, &context);
        }
        assert!(kills >= 1, "seed {seed}: no {verb} was killed mid-way");
    }
}
