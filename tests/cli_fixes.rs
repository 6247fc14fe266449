//! The CLI's rough edges, each pinned against the real binary: closed pipes, exit codes and
//! messages that name the fix, read-only commands that must not create a store, limits that
//! say the rule, colour only on a terminal, and the note when an image gets no kernel.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A store holding one small image named `app:v1`; returns its id.
fn store_with_image(store: &Path) -> String {
    let rootfs = store.with_extension("rootfs");
    fs::write(&rootfs, vec![7u8; 300_000]).unwrap();
    let out = common::run_ok(common::diskc().args(["store-put", "--store"]).arg(store).arg(&rootfs));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    common::run_ok(common::diskc().args(["tag", "--store"]).arg(store).args([&id, "app:v1"]));
    id
}

/// Runs `diskc ARGS` with stdout into a pipe whose reader has already gone (the reader is
/// `true`, and diskc starts after it exited); returns diskc's exit status and its stderr.
fn into_closed_pipe(args: &str) -> (String, String) {
    let script = format!(
        "(sleep 0.3; exec {} {args} 2>\"$ERR\") | true; echo ${{PIPESTATUS[0]}}",
        env!("CARGO_BIN_EXE_diskc")
    );
    let dir = common::tempdir();
    let err = dir.path().join("stderr");
    let out = common::run_ok(Command::new("bash").arg("-c").arg(script).env("ERR", &err));
    (String::from_utf8(out.stdout).unwrap().trim().to_string(), fs::read_to_string(&err).unwrap())
}

#[test]
fn ls_into_a_closed_pipe_ends_quietly_with_exit_0() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    store_with_image(&store);
    for args in
        [format!("ls --store {}", store.display()), format!("inspect --store {} app:v1", store.display())]
    {
        let (status, stderr) = into_closed_pipe(&args);
        assert_eq!(status, "0", "diskc {args}: {stderr}");
        assert!(!stderr.contains("panicked"), "diskc {args}: {stderr}");
    }
}

#[test]
fn inspect_piped_into_head_ends_quietly() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let id = store_with_image(&store);
    let script = format!(
        "{} inspect --store {} app:v1 {id} app:v1 | head -1; echo status=${{PIPESTATUS[0]}}",
        env!("CARGO_BIN_EXE_diskc"),
        store.display()
    );
    let out = common::run_ok(Command::new("bash").arg("-c").arg(script));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(stdout.starts_with(&format!("id:          {id}\n")), "{stdout}");
    assert!(stdout.ends_with("status=0\n"), "{stdout}\n{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn mkfs_of_a_missing_source_is_bad_input_naming_the_path() {
    let dir = common::tempdir();
    let missing = dir.path().join("missing");
    let out = common::diskc().arg("mkfs").arg(&missing).arg("-o").arg(dir.path().join("x")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("{} does not exist", missing.display())), "{}", stderr(&out));
}

#[test]
fn export_to_a_directory_or_stdout_is_a_usage_error_naming_the_fix() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    store_with_image(&store);
    let out = common::diskc()
        .args(["export", "--store"])
        .arg(&store)
        .args(["app:v1", "-o"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a directory") && stderr(&out).contains("rootfs.ext4"),
        "{}",
        stderr(&out)
    );
    let out =
        common::diskc().args(["export", "--store"]).arg(&store).args(["app:v1", "-o", "-"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("give a file path"), "{}", stderr(&out));
}

#[test]
fn a_store_that_is_a_file_is_a_usage_error_naming_the_fix() {
    let dir = common::tempdir();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    for command in ["ls", "gc", "verify"] {
        let out = common::diskc().args([command, "--store"]).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not a directory: give --store"), "{command}: {}", stderr(&out));
    }
}

#[test]
fn read_only_commands_never_create_a_store() {
    let dir = common::tempdir();
    let typo = dir.path().join("typo");
    let commands: [&[&str]; 6] = [
        &["ls"],
        &["inspect", "app"],
        &["gc"],
        &["verify"],
        &["export", "app", "-o", "/dev/null/x"],
        &["rm", "app"],
    ];
    for args in commands {
        let out = common::diskc().args(args).arg("--store").arg(&typo).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no store at"), "{args:?}: {}", stderr(&out));
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // The default store, absent: an empty listing, and still nothing created.
    let home = dir.path().join("home");
    let out = common::run_ok(
        common::diskc().env_remove("DISKC_STORE").env("XDG_CACHE_HOME", &home).args(["ls", "-q"]),
    );
    assert!(out.stdout.is_empty());
    assert!(!home.exists());
}

#[test]
fn mkfs_size_too_small_says_the_minimum() {
    let dir = common::tempdir();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let out = common::diskc()
        .arg("mkfs")
        .arg(&src)
        .arg("-o")
        .arg(dir.path().join("x"))
        .args(["--size", "100"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("--size 100: too small") && message.contains("1310720 bytes"), "{message}");
    assert!(!message.contains("0 bytes is too small"), "{message}");
}

#[test]
fn boot_memory_below_64_mib_says_the_rule() {
    let out = common::diskc().args(["boot", "x", "--memory", "16"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("at least 64 MiB"), "{}", stderr(&out));
}

#[test]
fn boot_timeout_0_means_no_limit_in_help() {
    let out = common::run_ok(common::diskc().args(["boot", "--help"]));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("0 or none: no limit"), "{help}");
}

#[test]
fn verbose_logs_carry_no_colour_into_a_pipe_and_honour_no_color() {
    let dir = common::tempdir();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let out =
        common::run_ok(common::diskc().arg("-v").arg("mkfs").arg(&src).arg("-o").arg(dir.path().join("a")));
    assert!(stderr(&out).contains("INFO"), "no log line to check: {}", stderr(&out));
    assert!(!stderr(&out).contains('\x1b'), "{:?}", stderr(&out));
    // On a terminal (script gives one) there is colour, unless NO_COLOR is set.
    let on_tty = |no_color: bool| {
        let line = format!(
            "{} -v mkfs {} -o {}",
            env!("CARGO_BIN_EXE_diskc"),
            src.display(),
            dir.path().join("b").display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]).env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        String::from_utf8_lossy(&common::run_ok(&mut cmd).stdout).into_owned()
    };
    assert!(on_tty(false).contains('\x1b'), "no colour on a terminal");
    let plain = on_tty(true);
    assert!(plain.contains("INFO") && !plain.contains('\x1b'), "{plain:?}");
}

#[test]
fn convert_without_a_kernel_says_once_the_image_will_not_boot() {
    common::ensure_base_images(&["busybox"]);
    let dir = common::tempdir();
    let out = common::run_ok(
        common::diskc()
            .env_remove("DISKC_KERNEL")
            .env_remove("DISKC_MODULES")
            .args(["convert", "--store"])
            .arg(dir.path().join("store"))
            .arg(format!("docker-daemon:{}", common::BUSYBOX_IMAGE)),
    );
    let message = stderr(&out);
    assert_eq!(message.matches("will not be bootable").count(), 1, "{message}");
    assert!(message.contains("--kernel") && message.contains("scripts/fetch-kernel.sh"), "{message}");
}
