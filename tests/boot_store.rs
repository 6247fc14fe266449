//! `diskc boot ID|NAME`: boots an image from the store (no OUTDIR left), by its id and by an
//! id prefix, and refuses an image that has no boot part or is not there.

mod boot_support;
mod common;

use std::process::Output;

use boot_support::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `diskc boot` with its temporary files in `tmp`, so the test can see them go.
fn boot_with_tmpdir(target: &str, tmp: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = diskc();
    cmd.env("TMPDIR", tmp).args(["boot", target, "--timeout", BOOT_TIMEOUT_S]).args(args);
    cmd.output().unwrap()
}

#[test]
fn boots_a_stored_image_by_id_and_by_id_prefix() {
    ensure_base_images(&["busybox"]);
    let image = Bootable::convert(BUSYBOX_IMAGE, Outdir::Temporary);
    let id = image.id.clone();
    // Only the store is left to boot from.
    drop(image);
    let tmp = tempdir();

    let out = boot_with_tmpdir(&id, tmp.path(), &["--", "sh", "-c", "echo from the store; exit 5"]);
    assert_exit(&out, 5);
    assert_eq!(program_lines(&out), ["from the store"]);

    let hex = id.strip_prefix("sha256:").unwrap_or(&id);
    let out =
        boot_with_tmpdir(&hex[..12], tmp.path(), &["--read-only", "--", "sh", "-c", "touch /x || echo ro"]);
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out).last().map(String::as_str), Some("ro"), "{}", stderr(&out));

    // The exported rootfs, kernel and initrd went with the boot.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "files left in TMPDIR: {left:?}");
}

#[test]
fn an_image_without_boot_part_is_refused() {
    ensure_base_images(&["busybox"]);
    // No kernel given and none in the image: a rootfs only.
    let mut convert = diskc();
    convert.env_remove("DISKC_KERNEL").env_remove("DISKC_MODULES").args([
        "--json",
        "convert",
        &format!("docker-daemon:{BUSYBOX_IMAGE}"),
    ]);
    let result: serde_json::Value = serde_json::from_slice(&run_ok(&mut convert).stdout).unwrap();
    assert!(result["boot"].is_null(), "{result}");
    let id = result["id"].as_str().unwrap();

    let out = boot(id, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has no boot part: convert it with a kernel"), "{}", stderr(&out));
}

#[test]
fn an_unknown_image_is_bad_input() {
    let out = boot("no-such-image-or-dir", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("neither a directory nor an image in the store"), "{}", stderr(&out));
}

#[test]
fn a_store_deep_in_a_long_path_boots() {
    // The shared disk server's sockets live in the store: past the 108 bytes a socket
    // address holds, they must still bind and connect.
    ensure_base_images(&["busybox"]);
    let dir = tempdir();
    let store = dir.path().join("d".repeat(70)).join("e".repeat(70)).join("store");
    let mut convert = diskc_with_kernel();
    convert.env("DISKC_STORE", &store).args(["--json", "convert", &format!("docker-daemon:{BUSYBOX_IMAGE}")]);
    let result: serde_json::Value = serde_json::from_slice(&run_ok(&mut convert).stdout).unwrap();
    let id = result["id"].as_str().unwrap();
    let out = boot_command(id, &["--", "echo", "deep"]).env("DISKC_STORE", &store).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out), ["deep"], "{}", stderr(&out));
}
