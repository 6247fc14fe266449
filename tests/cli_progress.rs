//! Progress as `docker pull` shows it, pinned against the real binary pulling from a real
//! registry: `--progress plain` (the default when stderr is not a terminal) prints the image,
//! a line per layer with its digest and bytes, the total with its rate, and the stages;
//! `--progress tty` draws a bar per layer and a total on a terminal (`script` gives it one);
//! `--progress quiet` and `-q` print no progress at all.

mod common;
mod registry_support;

use std::path::Path;
use std::process::{Command, Output};

use indicatif::HumanBytes;
use registry_support::{build_app_image, docker_push, TestRegistry};

/// The pushed image's layers as the registry lists them: (digest hex, size).
fn layers(reg: &TestRegistry, repo_tag: &str) -> Vec<(String, u64)> {
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let mut response = ureq::get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .call()
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
            (digest, l["size"].as_u64().unwrap())
        })
        .collect()
}

fn convert(source: &str, store: &Path, args: &[&str]) -> Output {
    let out = common::diskc()
        .args(["convert", source, "--store"])
        .arg(store)
        .args(args)
        .env("DOCKER_CONFIG", store.with_extension("docker"))
        .output()
        .unwrap();
    assert!(out.status.success(), "diskc convert {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Lines that are progress: anything on stderr but the note about a missing kernel.
fn progress_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.starts_with("diskc: note:")).collect()
}

#[test]
fn plain_progress_names_each_layer_its_bytes_and_the_total() {
    let reg = TestRegistry::start();
    docker_push(build_app_image(), &reg.host(), "diskc/app:v1", None);
    let layers = layers(&reg, "diskc/app:v1");
    assert!(layers.len() >= 2, "{layers:?}");
    let source = format!("docker://{}/diskc/app:v1", reg.host());
    let dir = common::tempdir();

    // Not a terminal: plain is the default, and --progress plain says the same.
    for args in [&[][..], &["--progress", "plain"]] {
        let store = dir.path().join(format!("store{}", args.len()));
        let err = stderr(&convert(&source, &store, args));
        let lines = progress_lines(&err);
        let total: u64 = layers.iter().map(|(_, size)| size).sum();
        assert_eq!(lines[0], format!("{source}: {} layers, {}", layers.len(), HumanBytes(total)), "{err}");
        for (digest, size) in &layers {
            let line = format!(" sha256:{}: {} done", &digest[..12], HumanBytes(*size));
            assert_eq!(lines.iter().filter(|l| l.ends_with(&line)).count(), 1, "no {line:?} in\n{err}");
        }
        let read = lines.iter().find(|l| l.starts_with("layers read: ")).unwrap_or_else(|| panic!("{err}"));
        assert!(
            read.starts_with(&format!("layers read: {} in ", HumanBytes(total))) && read.ends_with("/s)"),
            "{read}"
        );
        for stage in ["layers merged: ", "rootfs written: "] {
            assert!(lines.iter().any(|l| l.starts_with(stage)), "no {stage:?} in\n{err}");
        }
    }

    // A second conversion answers from the store, and says so.
    let err = stderr(&convert(&source, &dir.path().join("store0"), &["--progress", "plain"]));
    assert!(err.lines().any(|l| l.starts_with("in the store already: ")), "{err}");
}

#[test]
fn quiet_progress_prints_nothing_but_the_result() {
    let reg = TestRegistry::start();
    docker_push(build_app_image(), &reg.host(), "diskc/app:v1", None);
    let source = format!("docker://{}/diskc/app:v1", reg.host());
    let dir = common::tempdir();

    let out = convert(&source, &dir.path().join("store1"), &["--progress", "quiet"]);
    assert_eq!(progress_lines(&stderr(&out)), Vec::<&str>::new());
    assert!(String::from_utf8_lossy(&out.stdout).contains("image "), "the result still shows");

    // -q wins over any --progress, and leaves the bare id on stdout.
    let out = convert(&source, &dir.path().join("store2"), &["-q", "--progress", "plain"]);
    assert_eq!(stderr(&out), "");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim().len(), 64);

    // tty on a pipe draws nothing: bars are for terminals.
    let out = convert(&source, &dir.path().join("store3"), &["--progress", "tty"]);
    assert_eq!(progress_lines(&stderr(&out)), Vec::<&str>::new());
}

#[test]
fn on_a_terminal_each_layer_gets_a_bar_and_the_total_a_rate() {
    let reg = TestRegistry::start();
    docker_push(build_app_image(), &reg.host(), "diskc/app:v1", None);
    let layers = layers(&reg, "diskc/app:v1");
    let source = format!("docker://{}/diskc/app:v1", reg.host());
    let dir = common::tempdir();
    let typescript = dir.path().join("typescript");
    let command = format!(
        "{} convert {source} --store {}",
        env!("CARGO_BIN_EXE_diskc"),
        dir.path().join("store").display()
    );
    // util-linux's script: the command runs on a pseudo-terminal, its output recorded.
    common::run_ok(
        Command::new("script").args(["-qec", &command]).arg(&typescript).env("DOCKER_CONFIG", dir.path()),
    );
    let screen = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    let total: u64 = layers.iter().map(|(_, size)| size).sum();
    for (digest, size) in &layers {
        let size = HumanBytes(*size).to_string();
        let finished = format!("{} [{}] {size:>10}/{size:<10} done", &digest[..12], "=".repeat(30));
        assert!(screen.contains(&finished), "no {finished:?} on the screen:\n{screen}");
    }
    let total_bar = format!("total        [{}] {:>10}/", "=".repeat(30), HumanBytes(total).to_string());
    assert!(screen.contains(&total_bar), "no {total_bar:?} on the screen:\n{screen}");
    assert!(screen.contains("/s "), "no rate on the screen:\n{screen}");
}

#[test]
fn push_and_pull_between_stores_follow_progress_too() {
    let dir = common::tempdir();
    let (store, remote) =
        (dir.path().join("store"), format!("file://{}", dir.path().join("remote").display()));
    let rootfs = dir.path().join("rootfs");
    std::fs::write(&rootfs, (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let out = common::run_ok(common::diskc().args(["store-put", "--store"]).arg(&store).arg(&rootfs));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let transfer = |verb: &str, store: &Path, args: &[&str]| {
        common::run_ok(
            common::diskc()
                .args([verb, "--store"])
                .arg(store)
                .args([id.as_str(), remote.as_str()])
                .args(args),
        )
    };

    let err = stderr(&transfer("push", &store, &["--progress", "plain"]));
    assert!(err.lines().any(|l| l.starts_with("push: ") && l.ends_with(" KiB of chunks")), "{err}");
    assert!(err.lines().last().unwrap().ends_with(" bytes transferred"), "{err}");

    let out = transfer("pull", &dir.path().join("quiet"), &["--progress", "quiet"]);
    assert_eq!(stderr(&out), "");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);
    let err = stderr(&transfer("pull", &dir.path().join("plain"), &["--progress", "plain"]));
    assert!(err.lines().any(|l| l.starts_with("pull: ") && l.ends_with(" KiB of chunks")), "{err}");
}
