//! What the boot tests share: the kernel (Debian's cloud kernel, fetched by
//! scripts/fetch-kernel.sh), and images built the way users build them — `diskc build` of a
//! Dockerfile, or `diskc convert docker-daemon:IMAGE` — into an OUTDIR and the test store,
//! which `diskc boot` then runs under QEMU.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

pub use crate::common::*;

/// Generous: the tests share two cores with other builds, and TCG is slow when starved. A
/// normal boot here takes a few seconds; this only bounds a hung one.
pub const BOOT_TIMEOUT_S: &str = "120";

/// The kernel and its modules directory, as scripts/fetch-kernel.sh prints them. The script
/// is run every time (it is idempotent), so a missing kernel is fetched or fails the test,
/// and the tests never depend on what the caller's environment happens to hold.
pub fn kernel_paths() -> &'static (PathBuf, PathBuf) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| {
        let out = run_ok(&mut Command::new(repo_root().join("scripts/fetch-kernel.sh")));
        let text = String::from_utf8(out.stdout).unwrap();
        let value = |key: &str| -> PathBuf {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("fetch-kernel.sh printed no {key}: {text}"))
                .into()
        };
        (value("DISKC_KERNEL="), value("DISKC_MODULES="))
    })
}

/// `diskc` with the fetched kernel in the environment (as `eval "$(fetch-kernel.sh)"` would
/// export it), for `build` and `convert`.
pub fn diskc_with_kernel() -> Command {
    let (kernel, modules) = kernel_paths();
    let mut cmd = diskc();
    cmd.env("DISKC_KERNEL", kernel).env("DISKC_MODULES", modules);
    cmd
}

/// A bootable image made by diskc: its OUTDIR and its id in the test store.
pub struct Bootable {
    pub outdir: PathBuf,
    pub id: String,
    /// Owns `outdir` when the image is not shared between tests.
    _dir: Option<tempfile::TempDir>,
}

/// Where an image goes: a temporary directory of its own, or a fixed one under the target
/// dir (for an image a test binary builds once and shares; it is replaced on the next run).
pub enum Outdir {
    Temporary,
    Shared(&'static str),
}

impl Outdir {
    /// The OUTDIR path (not existing yet: diskc creates it) and the guard that removes it.
    fn make(&self) -> (PathBuf, Option<tempfile::TempDir>) {
        match self {
            Outdir::Temporary => {
                let dir = tempdir();
                (dir.path().join("out"), Some(dir))
            }
            Outdir::Shared(name) => {
                let path = repo_root().join("target/test-tmp/boot-images").join(name);
                if path.exists() {
                    std::fs::remove_dir_all(&path).unwrap();
                }
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                (path, None)
            }
        }
    }
}

impl Bootable {
    /// `diskc build` of `dockerfile` (an empty context besides it), tagged `tag` in Docker.
    pub fn build(tag: &str, dockerfile: &str, outdir: Outdir) -> Bootable {
        let context = tempdir();
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        let (path, guard) = outdir.make();
        let mut cmd = diskc_with_kernel();
        cmd.args(["--json", "build", "-t", tag, "-o"]).arg(&path).arg(context.path());
        Bootable::from_output(run_ok(&mut cmd), path, guard)
    }

    /// `diskc convert docker-daemon:IMAGE`, with the kernel given as `--kernel/--modules`.
    pub fn convert(image: &str, outdir: Outdir) -> Bootable {
        let (kernel, modules) = kernel_paths();
        let (path, guard) = outdir.make();
        let mut cmd = diskc();
        cmd.args(["--json", "convert", &format!("docker-daemon:{image}"), "--kernel"])
            .arg(kernel)
            .arg("--modules")
            .arg(modules)
            .arg("-o")
            .arg(&path);
        Bootable::from_output(run_ok(&mut cmd), path, guard)
    }

    fn from_output(out: Output, outdir: PathBuf, guard: Option<tempfile::TempDir>) -> Bootable {
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("diskc --json printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        });
        assert!(!result["boot"].is_null(), "diskc made an image without a boot part: {result}");
        for file in ["manifest.json", "rootfs.ext4", "vmlinuz", "initrd.img"] {
            assert!(outdir.join(file).is_file(), "{} has no {file}", outdir.display());
        }
        let id = result["id"].as_str().unwrap_or_else(|| panic!("no image id: {result}")).to_string();
        Bootable { outdir, id, _dir: guard }
    }

    /// `diskc boot OUTDIR ARGS...`, with its output.
    pub fn boot(&self, args: &[&str]) -> Output {
        boot(self.outdir.as_os_str(), args)
    }
}

/// `diskc boot TARGET ARGS...` (an OUTDIR, or an image in the test store), bounded by
/// [`BOOT_TIMEOUT_S`] unless `args` sets its own `--timeout`, with the fetched kernel's
/// modules directory (the guest's modules disk is made from it once per test store).
pub fn boot_command(target: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = diskc_with_kernel();
    cmd.arg("boot").arg(target);
    if !args.contains(&"--timeout") {
        cmd.args(["--timeout", BOOT_TIMEOUT_S]);
    }
    cmd.args(args);
    cmd
}

/// `diskc boot TARGET ARGS...` run to its end, with its output.
pub fn boot(target: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    boot_command(target, args).output().unwrap()
}

/// The guest program's stdout (nothing else is on diskc's stdout), line by line.
pub fn program_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// `docker run --rm ARGS...` with Debian's client, for comparing with `diskc boot`.
pub fn docker_run(args: &[&str]) -> Output {
    Command::new(DOCKER).args(["run", "--rm"]).args(args).output().expect("docker runs")
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
