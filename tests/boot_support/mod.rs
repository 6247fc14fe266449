//! What the boot tests share: the kernel (Debian's cloud kernel, fetched by
//! scripts/fetch-kernel.sh), test images built with BuildKit, and an OUTDIR made the way
//! `diskc build` makes it, which `diskc boot` then runs under QEMU.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use diskc::boot::{self, KernelSource};
use diskc::manifest::ImageConfig;

pub use crate::common::*;

/// Generous: the tests share two cores with other builds, and TCG is slow when starved.
pub const BOOT_TIMEOUT_S: &str = "180";

/// `DISKC_KERNEL` and `DISKC_MODULES`, from the environment or from fetch-kernel.sh.
pub fn kernel_paths() -> &'static (PathBuf, PathBuf) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| {
        if let (Some(k), Some(m)) = (std::env::var_os("DISKC_KERNEL"), std::env::var_os("DISKC_MODULES")) {
            return (k.into(), m.into());
        }
        let out = run_ok(&mut Command::new(repo_root().join("scripts/fetch-kernel.sh")));
        let text = String::from_utf8(out.stdout).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("fetch-kernel.sh printed no {key}: {text}"))
                .into()
        };
        (value("DISKC_KERNEL="), value("DISKC_MODULES="))
    })
}

/// Builds `tag` from a Dockerfile given as text (no context), with BuildKit.
pub fn build_image(tag: &str, dockerfile: &str) {
    let mut child = Command::new(DOCKER)
        .args(["build", "-q", "-t", tag, "-"])
        .env("DOCKER_BUILDKIT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker client");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker build {tag} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The image's run configuration, as Docker reports it.
pub fn image_config(image: &str) -> ImageConfig {
    let out = run_ok(Command::new(DOCKER).args(["image", "inspect", "--format", "{{json .Config}}", image]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let strings = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    ImageConfig {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        working_dir: v["WorkingDir"].as_str().unwrap_or_default().to_string(),
        user: v["User"].as_str().unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// THE place where a test rootfs is made: `docker export` of a container of the image,
/// unpacked and turned into ext4 by `mkfs.ext4 -d`. Writes `outdir/rootfs.ext4`.
/// (At integration this becomes `diskc convert`.)
pub fn rootfs_of_image(image: &str, outdir: &Path) -> PathBuf {
    let tree = outdir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let cid =
        String::from_utf8(run_ok(Command::new(DOCKER).args(["create", image, "/no-such-command"])).stdout)
            .unwrap();
    let cid = cid.trim();
    let script = format!("{DOCKER} export {cid} | tar -x --numeric-owner -p -C {}", tree.display());
    let exported = Command::new("sh").args(["-c", &script]).output().unwrap();
    run_ok(Command::new(DOCKER).args(["rm", cid]));
    assert!(exported.status.success(), "export {image}: {}", String::from_utf8_lossy(&exported.stderr));
    let du = run_ok(Command::new("du").args(["-sb"]).arg(&tree));
    let bytes: u64 = String::from_utf8_lossy(&du.stdout).split_whitespace().next().unwrap().parse().unwrap();
    let size_mib = bytes * 13 / 10 / (1 << 20) + 32;
    let rootfs = outdir.join("rootfs.ext4");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&rootfs)
            .arg(format!("{size_mib}M")),
    );
    std::fs::remove_dir_all(&tree).unwrap();
    rootfs
}

/// An OUTDIR for `diskc boot`: rootfs, vmlinuz, initrd.img and manifest.json.
pub struct Bootable {
    pub dir: tempfile::TempDir,
}

impl Bootable {
    pub fn of_image(image: &str) -> Bootable {
        let dir = tempdir();
        let rootfs = rootfs_of_image(image, dir.path());
        let (k, m) = kernel_paths();
        let kernel = KernelSource::from_host(k, m).unwrap();
        let config = image_config(image);
        let boot = boot::prepare(dir.path(), &kernel, &config).unwrap();
        let manifest = serde_json::json!({
            "config": config,
            "rootfs": { "file": rootfs.file_name().unwrap().to_str().unwrap() },
            "boot": boot,
        });
        std::fs::write(dir.path().join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap())
            .unwrap();
        Bootable { dir }
    }

    /// `diskc boot OUTDIR ARGS...`, with its output.
    pub fn boot(&self, args: &[&str]) -> Output {
        let mut cmd = diskc();
        cmd.arg("boot").arg(self.dir.path());
        if !args.contains(&"--timeout") {
            cmd.args(["--timeout", BOOT_TIMEOUT_S]);
        }
        cmd.args(args);
        cmd.output().unwrap()
    }
}

/// The console lines, without the kernel's and the init's own.
pub fn program_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !is_kernel_message(l) && !l.starts_with("diskc-init:"))
        .map(str::to_string)
        .collect()
}

/// Panics with the whole console unless `diskc boot` exited with `code`.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "diskc boot exited {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[    1.234567] ...`: a kernel log line (panics and warnings print despite `quiet`).
fn is_kernel_message(line: &str) -> bool {
    line.strip_prefix('[').and_then(|rest| rest.split_once(']')).is_some_and(|(stamp, _)| {
        let stamp = stamp.trim_start();
        !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    })
}
