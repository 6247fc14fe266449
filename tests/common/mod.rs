//! Support shared by the integration tests: the real parts they drive (Docker, e2fsprogs)
//! and the base images they build from. A missing part is a failure, never a skip.
#![allow(dead_code)]

pub mod images;
pub mod s3;
pub mod sample;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

/// Debian's Docker client: the first `docker` on PATH may lack BuildKit support.
pub const DOCKER: &str = "/usr/bin/docker";
pub const BUSYBOX_IMAGE: &str = "diskc-test/busybox:latest";
pub const DEBIAN_IMAGE: &str = "diskc-test/debian:bookworm";

/// The runtime a test owns for the library's async parts, as `main` owns one for the CLI.
pub fn rt() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("a tokio runtime")).handle()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The diskc binary built for this test run, with a store of the test run's own (under the
/// target dir) rather than the user's.
pub fn diskc() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskc"));
    cmd.env("DISKC_STORE", repo_root().join("target/test-tmp/store"));
    cmd
}

/// A small xorshift generator: the kill tests pick their moments from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Runs `verify` (a diskc command naming `store`) and asserts the store is clean. A process
/// killed before it created the store leaves no store at all: nothing half-written, so
/// nothing to verify (`verify` refuses a store that does not exist).
pub fn assert_store_verifies(mut verify: Command, store: &Path, context: &str) {
    if !store.exists() {
        return;
    }
    let out = verify.output().unwrap();
    assert!(
        out.status.success(),
        "{context}: verify of {} exited {}:\n{}{}",
        store.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command and returns its output, panicking with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes the base images once per test binary (see scripts/make-base-images.sh).
pub fn ensure_base_images(which: &[&str]) {
    static BUSYBOX: Once = Once::new();
    static DEBIAN: Once = Once::new();
    for name in which {
        let once = match *name {
            "busybox" => &BUSYBOX,
            "debian" => &DEBIAN,
            other => panic!("unknown base image {other}"),
        };
        once.call_once(|| {
            run_ok(Command::new(repo_root().join("scripts/make-base-images.sh")).arg(name));
        });
    }
}

/// `e2fsck -fn` must find the image clean.
pub fn assert_fsck_clean(image: &Path) {
    let out =
        Command::new("e2fsck").args(["-fn"]).arg(image).output().expect("e2fsck (e2fsprogs) is required");
    assert!(
        out.status.success(),
        "e2fsck -fn {} exited {}:\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh temporary directory under the target dir (large files stay off /tmp's tmpfs).
/// A spool (an unlinked file in `dir`) for reading layers in tests.
#[allow(dead_code)]
pub fn spool_file(dir: &Path) -> diskc::layer::SpoolFile {
    diskc::layer::SpoolFile::temp_in(dir).unwrap()
}

/// One slot of a fresh spool in `dir`.
#[allow(dead_code)]
pub fn spool(dir: &Path, slot: u32) -> diskc::layer::SpoolWriter {
    spool_file(dir).slot(slot).unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    let base = repo_root().join("target/test-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}
