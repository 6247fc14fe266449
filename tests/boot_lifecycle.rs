//! A boot that cleans up and boots side by side: killing `diskc boot` (SIGTERM, SIGKILL)
//! ends QEMU at once and leaves no temporary files (after a SIGKILL, the next boot removes
//! them); four boots of one stored image run at once, each with its own copy-on-write
//! layer, and the store does not change.

mod boot_support;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use boot_support::*;

/// The busybox base image, in the test store only (its OUTDIR is gone).
fn stored_image() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        ensure_base_images(&["busybox"]);
        Bootable::convert(BUSYBOX_IMAGE, Outdir::Temporary).id.clone()
    })
}

/// The pids of the processes whose environment holds `TMPDIR=tmp`: the boot's QEMU (and
/// its file servers) inherit it from `diskc boot`, and nothing else on the machine has it.
fn processes_with_tmpdir(tmp: &Path) -> Vec<u32> {
    let needle = format!("TMPDIR={}", tmp.display()).into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_slice()))
        })
        .collect()
}

/// Starts `diskc boot` of the stored image with its temporary files in `tmp`, and waits for
/// the guest program's first line.
fn start_boot(tmp: &Path) -> Child {
    let mut child = boot_command(stored_image(), &["--", "sh", "-c", "echo started; sleep 600"])
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert!(!processes_with_tmpdir(tmp).is_empty(), "no QEMU found for the boot");
    child
}

/// Waits for every process of the boot to be gone: at once, as a rule (they die with
/// `diskc boot`), but tearing down a TCG guest on a loaded machine takes a while.
fn assert_qemu_gone(tmp: &Path) {
    let start = Instant::now();
    while !processes_with_tmpdir(tmp).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "QEMU still runs: {:?}",
            processes_with_tmpdir(tmp)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn sigterm_stops_the_vm_and_removes_the_temporary_files() {
    let tmp = tempdir();
    let mut child = start_boot(tmp.path());
    // SAFETY: plain kill of our own child, not yet waited for.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
    assert_qemu_gone(tmp.path());
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[test]
fn sigkill_ends_qemu_and_the_next_boot_removes_what_was_left() {
    let tmp = tempdir();
    let mut child = start_boot(tmp.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_qemu_gone(tmp.path());
    // The killed boot's exported image is still there...
    assert_eq!(entries(tmp.path()).len(), 1, "{:?}", entries(tmp.path()));
    // ...until the next boot.
    let out = boot_command(stored_image(), &["--", "true"]).env("TMPDIR", tmp.path()).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[test]
fn four_boots_of_one_image_at_once_each_write_their_own_marker() {
    let id = stored_image();
    let dir = tempdir();
    let export = |name: &str| {
        let path = dir.path().join(name);
        run_ok(diskc().args(["export", id, "-o"]).arg(&path));
        std::fs::read(&path).unwrap()
    };
    let before = export("before.ext4");
    // Each boot fails if another's marker shows up in its root while it runs.
    let script = "test -e /marker && echo seen: $(cat /marker); echo $N > /marker; sleep 2; cat /marker";
    let boots: Vec<_> = (1..=4)
        .map(|n| {
            let env = format!("N={n}");
            let args: Vec<String> =
                vec!["-e".into(), env, "--".into(), "sh".into(), "-c".into(), script.into()];
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                boot(stored_image(), &args)
            })
        })
        .collect();
    for (n, handle) in (1..=4).zip(boots) {
        let out = handle.join().unwrap();
        assert_exit(&out, 0);
        assert_eq!(program_lines(&out), [n.to_string()]);
    }
    // Nothing the guests wrote reached the stored image.
    assert!(export("after.ext4") == before, "the stored rootfs changed");
}
