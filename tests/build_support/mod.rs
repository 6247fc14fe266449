//! Helpers for the `diskc build` tests: run the binary, then look at the image it made
//! with Docker's own client (`image inspect`, `run`), which is the oracle here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{diskc, ensure_base_images, repo_root, run_ok, DOCKER};

pub fn fixture(case: &str) -> PathBuf {
    repo_root().join("fixtures/build").join(case)
}

/// Runs `diskc build ARGS...` and returns its output, whatever the exit status.
pub fn diskc_build(args: &[&str]) -> Output {
    ensure_base_images(&["busybox"]);
    diskc().arg("build").args(args).output().expect("cannot run diskc")
}

/// Runs `diskc --json build ARGS...`, which must succeed; returns the image id it printed
/// and its stderr (the progress).
pub fn build_ok(args: &[&str]) -> (String, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = diskc_build(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "diskc build {args:?} failed ({}):\n{stderr}", out.status);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let id = json["image_id"].as_str().expect("image_id in the JSON").to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "not an image id: {id}");
    (id, stderr)
}

/// `docker image inspect`'s object for `image`.
pub fn inspect(image: &str) -> serde_json::Value {
    let out = run_ok(Command::new(DOCKER).args(["image", "inspect", image]));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

/// Runs a shell script as root in a throwaway container of `image`; returns its stdout.
pub fn sh_in(image: &str, script: &str) -> String {
    let out = run_ok(Command::new(DOCKER).args([
        "run",
        "--rm",
        "--user",
        "0",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        script,
    ]));
    String::from_utf8(out.stdout).unwrap()
}

/// The exit code and stderr of a build that must fail.
pub fn build_fails(args: &[&str]) -> (i32, String) {
    let out = diskc_build(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "diskc build {args:?} succeeded but should fail:\n{stderr}");
    (out.status.code().expect("exit code"), stderr)
}

/// A copy of a fixture directory (symlinks kept) that a test may change.
pub fn copy_fixture(case: &str, into: &Path) -> PathBuf {
    let dest = into.join(case);
    run_ok(Command::new("cp").arg("-a").arg(fixture(case)).arg(&dest));
    dest
}

/// The last line of diskc's stderr: the one-line error message.
pub fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("diskc: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}
