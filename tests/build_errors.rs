//! Each way a build commonly fails gives one clear line and a nonzero exit code: 2 for a
//! problem with the input, 3 for a problem with the environment.

mod build_support;
mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use build_support::{build_fails, error_line};

/// A context holding only a Dockerfile with `text`.
fn context_with(dir: &Path, text: &str) -> PathBuf {
    let context = dir.join("ctx");
    fs::create_dir(&context).unwrap();
    fs::write(context.join("Dockerfile"), text).unwrap();
    context
}

#[test]
fn dockerfile_syntax_error_names_its_line() {
    let dir = common::tempdir();
    let context = context_with(dir.path(), "FROM diskc-test/busybox:latest\nRUN true\nFOO bar\n");
    let (code, stderr) = build_fails(&[context.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("syntax error at line 3"), "{line}");
    assert!(line.contains("unknown instruction: FOO"), "{line}");
    assert!(line.contains(&context.join("Dockerfile").display().to_string()), "{line}");
}

#[test]
fn failing_run_gives_its_exit_code_and_last_output() {
    let dir = common::tempdir();
    let context = context_with(
        dir.path(),
        "FROM diskc-test/busybox:latest\nRUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo output-$i; done; exit 7\n",
    );
    let (code, stderr) = build_fails(&[context.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("failed with exit code 7"), "{line}");
    assert!(line.contains("RUN for i in"), "the step is named: {line}");
    assert!(line.contains("output-12") && line.contains("output-3"), "the last lines are shown: {line}");
    assert!(!line.contains("output-2 "), "only the last lines: {line}");
    assert!(stderr.contains("output-1\n"), "the progress shows all the output:\n{stderr}");
}

#[test]
fn failing_run_with_the_classic_builder() {
    let dir = common::tempdir();
    let context =
        context_with(dir.path(), "FROM diskc-test/busybox:latest\nRUN echo classic-says-no; exit 5\n");
    let (code, stderr) = build_fails(&[context.to_str().unwrap(), "--builder", "classic"]);
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("exit code 5") && line.contains("classic-says-no"), "{line}");
}

#[test]
fn unknown_base_image_is_not_pulled() {
    let dir = common::tempdir();
    let context = context_with(dir.path(), "FROM diskc-test/no-such-base:1\nRUN true\n");
    for builder in ["buildkit", "classic"] {
        let (code, stderr) = build_fails(&[context.to_str().unwrap(), "--builder", builder]);
        assert_eq!(code, 2, "{builder}: {stderr}");
        let line = error_line(&stderr);
        assert!(line.contains("diskc-test/no-such-base:1"), "{builder}: {line}");
        assert!(line.contains("not present locally"), "{builder}: {line}");
    }
}

#[test]
fn unreachable_daemon_says_how_to_start_one() {
    let dir = common::tempdir();
    let context = context_with(dir.path(), "FROM diskc-test/busybox:latest\n");
    let socket = dir.path().join("no-daemon.sock");
    let out = common::diskc()
        .args(["build", context.to_str().unwrap()])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("cannot reach the Docker daemon"), "{line}");
    assert!(line.contains(&socket.display().to_string()), "{line}");
    assert!(line.contains("sudo dockerd &") && line.contains("systemctl start docker"), "{line}");
}

/// A stand-in for an Engine older than BuildKit (18.06, API 1.38): it answers every request
/// with its version, which is all diskc asks before refusing to build with BuildKit. Real
/// daemons that old are not installable here.
fn old_daemon() -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let body = r#"{"Version":"18.06.3-ce","ApiVersion":"1.38","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}"#;
        let mut requests = Vec::new();
        listener.set_nonblocking(false).unwrap();
        // diskc makes two requests (negotiation, then the version it checks), then stops.
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            requests.push(request_line.trim().to_owned());
            let mut header = String::new();
            while reader.read_line(&mut header).unwrap() > 2 {
                header.clear();
            }
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.38\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        requests
    });
    (format!("tcp://{address}"), handle)
}

#[test]
fn daemon_without_buildkit_is_named_and_classic_is_suggested() {
    let dir = common::tempdir();
    let context = context_with(dir.path(), "FROM diskc-test/busybox:latest\n");
    let (host, server) = old_daemon();
    let out = common::diskc()
        .args(["build", context.to_str().unwrap()])
        .env("DOCKER_HOST", &host)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("has no BuildKit"), "{line}");
    assert!(line.contains("18.06.3-ce") && line.contains("1.38"), "{line}");
    assert!(line.contains("--builder classic"), "{line}");
    let requests = server.join().unwrap();
    assert!(
        requests.iter().all(|r| r.starts_with("GET ") && r.contains("/version")),
        "only version checks: {requests:?}"
    );
}

#[test]
fn bad_context_and_missing_dockerfile() {
    let dir = common::tempdir();
    let missing = dir.path().join("nowhere");
    let (code, stderr) = build_fails(&[missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(error_line(&stderr).contains("not a directory"), "{stderr}");

    let (code, stderr) = build_fails(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("Dockerfile") && line.contains("No such file"), "{line}");
}

#[test]
fn malformed_label_or_tag_is_a_usage_error() {
    let (code, stderr) = build_fails(&[".", "--label", "no-equals-sign"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(error_line(&stderr).contains("expected KEY=VALUE"), "{stderr}");
    let (code, stderr) = build_fails(&[".", "-t", "Upper/Case"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(error_line(&stderr).contains("must be lowercase"), "{stderr}");
}
