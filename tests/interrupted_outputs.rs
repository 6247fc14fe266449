//! Outputs and interruptions (issue 11): a `diskc mkfs` stopped by SIGTERM or SIGINT removes
//! its temporary file before it exits; one killed with SIGKILL leaves it, and the next run in
//! that directory sweeps it.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::diskc;

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".diskc-mkfs-"))
        .collect()
}

/// A `diskc mkfs - -o DIR/out.ext4` whose tar stream has begun (one 8 MiB member, partly
/// sent) and never ends: it sits in the middle of writing its temporary file.
fn mkfs_waiting_for_input(dir: &Path) -> (Child, std::process::ChildStdin) {
    let mut child = diskc()
        .args(["mkfs", "-", "-o"])
        .arg(dir.join("out.ext4"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_path("big").unwrap();
    header.set_size(8 << 20);
    header.set_mode(0o644);
    header.set_cksum();
    stdin.write_all(header.as_bytes()).unwrap();
    stdin.write_all(&vec![7u8; 1 << 20]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while temp_files(dir).is_empty() {
        assert!(Instant::now() < deadline, "mkfs made no temporary file");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, stdin)
}

#[test]
fn mkfs_stopped_by_a_signal_removes_its_temporary_file() {
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let dir = common::tempdir();
        let (mut child, _stdin) = mkfs_waiting_for_input(dir.path());
        // SAFETY: signals a child process this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal}");
        assert_eq!(temp_files(dir.path()), Vec::<String>::new(), "signal {signal}");
        assert!(!dir.path().join("out.ext4").exists());
    }
}

#[test]
fn what_a_killed_mkfs_left_is_swept_by_the_next_run() {
    let dir = common::tempdir();
    let (mut child, _stdin) = mkfs_waiting_for_input(dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(temp_files(dir.path()).len(), 1, "SIGKILL leaves the temporary file");
    let source = common::tempdir();
    std::fs::write(source.path().join("f"), b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_diskc"))
        .args(["mkfs"])
        .arg(source.path())
        .arg("-o")
        .arg(dir.path().join("next.ext4"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}
