//! The build path without `docker save`: an image in the local Docker daemon is read from the
//! Engine's own layer directories (overlay2 diff dirs and tar-split), and gives the same
//! rootfs and image id as through `docker save`. `diskc build` says which way it went, and a
//! rebuild with a changed last line reads only its new layers.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{diskc, ensure_base_images, run_ok, tempdir, BUSYBOX_IMAGE, DOCKER};
use serde_json::Value;

/// Layers that add, replace, delete (whiteouts), empty a directory (opaque) and hard-link.
fn dockerfile(last: &str) -> String {
    format!(
        "FROM {BUSYBOX_IMAGE}\n\
         RUN mkdir -p /data/keep /data/gone && head -c 3000000 /dev/urandom > /data/big \
             && echo a > /data/keep/a && echo b > /data/gone/b && ln /data/big /data/big-link\n\
         RUN rm -rf /data/gone /bin/vi && echo replaced > /data/keep/a \
             && rm -rf /data/keep && mkdir /data/keep && echo new > /data/keep/new\n\
         RUN dd if=/dev/zero of=/data/zeros bs=4096 count=300 2>/dev/null && echo {last} > /last\n"
    )
}

fn docker_build(dir: &Path, tag: &str, last: &str) {
    let ctx = dir.join(format!("ctx-{last}"));
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile(last)).unwrap();
    run_ok(Command::new(DOCKER).env("DOCKER_BUILDKIT", "1").args(["build", "-q", "-t", tag]).arg(&ctx));
}

fn convert(source: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = diskc();
    cmd.args(["--json", "convert", source]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap()
}

#[test]
fn layers_read_from_the_engines_directories_give_the_image_of_docker_save() {
    ensure_base_images(&["busybox"]);
    let dir = tempdir();
    let tag = "diskc-test/daemon-layers:latest";
    docker_build(dir.path(), tag, "one");
    let source = format!("docker-daemon:{tag}");
    let (direct_out, saved_out) = (dir.path().join("direct"), dir.path().join("saved"));
    let (direct_store, saved_store) = (dir.path().join("s1"), dir.path().join("s2"));

    let direct = convert(
        &source,
        &["--store", direct_store.to_str().unwrap(), "-o", direct_out.to_str().unwrap()],
        &[],
    );
    assert_eq!(direct["daemon_layers"]["path"], "engine-directories", "{direct}");
    let saved = convert(
        &source,
        &["--store", saved_store.to_str().unwrap(), "-o", saved_out.to_str().unwrap()],
        &[("DISKC_DAEMON_LAYERS", "save")],
    );
    assert_eq!(saved["daemon_layers"]["path"], "docker-save", "{saved}");
    assert!(saved["daemon_layers"]["reason"].as_str().unwrap().contains("DISKC_DAEMON_LAYERS"));

    assert_eq!(direct["id"], saved["id"]);
    assert_eq!(direct["rootfs"], saved["rootfs"]);
    assert!(
        fs::read(direct_out.join("rootfs.ext4")).unwrap() == fs::read(saved_out.join("rootfs.ext4")).unwrap()
    );
    common::assert_fsck_clean(&direct_out.join("rootfs.ext4"));
}

#[test]
fn a_rebuild_with_a_changed_last_line_reads_only_its_new_layer() {
    ensure_base_images(&["busybox"]);
    let dir = tempdir();
    let store = dir.path().join("store");
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let build = |last: &str| -> Value {
        fs::write(ctx.join("Dockerfile"), dockerfile(last)).unwrap();
        let out = run_ok(
            diskc()
                .args(["--json", "build"])
                .arg(&ctx)
                .args(["-t", "diskc-test/daemon-layers-rebuild:latest", "--store"])
                .arg(&store),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = build("first");
    assert_eq!(first["daemon_layers"]["path"], "engine-directories", "{first}");
    let layers = first["source"]["diff_ids"].as_array().unwrap().len() as u64;
    let second = build("second");
    assert_eq!(second["layers_reused"], layers - 1, "{second}");

    // The same image converted cold, through `docker save`, into a fresh store: same id.
    let image = second["image_id"].as_str().unwrap();
    let cold = convert(
        &format!("docker-daemon:{image}"),
        &["--store", dir.path().join("cold").to_str().unwrap()],
        &[("DISKC_DAEMON_LAYERS", "save")],
    );
    assert_eq!(cold["id"], second["id"]);
}
