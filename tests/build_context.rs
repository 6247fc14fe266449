//! What `diskc build` sends as the context: `.dockerignore` honoured, symlinks and modes
//! kept, a Dockerfile from outside the context. The image copies the whole context, so
//! looking into it shows what the daemon received.

mod build_support;
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use build_support::{build_ok, copy_fixture, fixture, sh_in};

#[test]
fn dockerignore_symlinks_and_modes() {
    let dir = common::tempdir();
    let context = copy_fixture("context", dir.path());
    // Modes set here, not by git (which keeps only the executable bit, under the umask).
    fs::set_permissions(context.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(context.join("data/plain.txt"), fs::Permissions::from_mode(0o604)).unwrap();
    let tag = "diskc-test/build-context";
    build_ok(&[context.to_str().unwrap(), "-t", tag]);
    let out = sh_in(
        tag,
        "cd /ctx; stat -c '%n %a' run.sh data/plain.txt; readlink link; ./link; \
         ls -a . logs | tr '\\n' ' '",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..4], ["run.sh 750", "data/plain.txt 604", "run.sh", "run"], "{out}");
    let listing = lines[4];
    assert!(!listing.contains("top.secret"), "an ignored file was sent: {listing}");
    assert!(!listing.contains("a.log"), "a file in an ignored directory was sent: {listing}");
    assert!(listing.contains("keep.log"), "a `!` exception was not sent: {listing}");
    assert!(listing.contains("Dockerfile") && listing.contains(".dockerignore"), "{listing}");
}

#[test]
fn the_dockerfile_is_sent_even_when_ignored() {
    let dir = common::tempdir();
    let context = dir.path().join("ctx");
    fs::create_dir(&context).unwrap();
    fs::write(context.join("Dockerfile"), "FROM diskc-test/busybox:latest\nCOPY keep.txt /keep.txt\n")
        .unwrap();
    fs::write(context.join(".dockerignore"), "*\n!keep.txt\n").unwrap();
    fs::write(context.join("keep.txt"), "kept\n").unwrap();
    let tag = "diskc-test/build-ignored-dockerfile";
    build_ok(&[context.to_str().unwrap(), "-t", tag]);
    assert_eq!(sh_in(tag, "cat /keep.txt"), "kept\n");
}

#[test]
fn a_dockerfile_outside_the_context() {
    let dockerfile = fixture("outside-dockerfile").join("Dockerfile");
    let tag = "diskc-test/build-outside";
    build_ok(&[
        fixture("context").to_str().unwrap(),
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        tag,
        "-t",
        "diskc-test/build-outside:second",
    ]);
    assert_eq!(sh_in(tag, "cat /from-outside.txt"), "plain\n");
    assert_eq!(sh_in("diskc-test/build-outside:second", "cat /from-outside.txt"), "plain\n");
}

/// A file many times the size of one streamed chunk arrives intact.
#[test]
fn a_large_file_arrives_intact() {
    use sha2::{Digest, Sha256};
    let dir = common::tempdir();
    let context = dir.path().join("ctx");
    fs::create_dir(&context).unwrap();
    let mut data = Vec::with_capacity(5 << 20);
    let mut x: u32 = 1;
    while data.len() < (5 << 20) + 12_345 {
        // xorshift: incompressible, reproducible bytes.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(context.join("big.bin"), &data).unwrap();
    fs::write(context.join("Dockerfile"), "FROM diskc-test/busybox:latest\nCOPY big.bin /big.bin\n").unwrap();
    let tag = "diskc-test/build-large-file";
    build_ok(&[context.to_str().unwrap(), "-t", tag]);
    let inside = sh_in(tag, "sha256sum /big.bin");
    assert_eq!(inside.split_whitespace().next(), Some(hex::encode(Sha256::digest(&data)).as_str()));
}
