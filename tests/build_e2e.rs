//! `diskc build` end to end: each Dockerfile of `fixtures/build/` built through diskc into
//! an output directory whose rootfs, mounted by the kernel, equals `docker export` of the
//! image BuildKit built, and whose manifest.json carries the image's config. A second
//! build of the same context hits BuildKit's cache and gives the same rootfs.

mod common;
#[path = "common/export_oracle.rs"]
mod export_oracle;
#[path = "common/tree_compare.rs"]
mod tree_compare;

use std::path::Path;

use common::{diskc, ensure_base_images, repo_root, run_ok, tempdir};
use export_oracle::assert_rootfs_equals_export;

/// Builds `fixtures/build/<case>` with diskc into `outdir`; returns the `--json` object.
fn build(case: &str, outdir: &Path, extra: &[&str]) -> serde_json::Value {
    ensure_base_images(&["busybox"]);
    let context = repo_root().join("fixtures/build").join(case);
    let out = run_ok(diskc().args(["--json", "build"]).arg(&context).args(extra).arg("-o").arg(outdir));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn manifest(outdir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(outdir.join("manifest.json")).unwrap()).unwrap()
}

/// Builds, then compares the rootfs with `docker export` of the image BuildKit made.
fn assert_build_equals_export(case: &str, extra: &[&str]) -> serde_json::Value {
    let work = tempdir();
    let out = work.path().join("out");
    let json = build(case, &out, extra);
    let image = json["image_id"].as_str().expect("image_id").to_string();
    assert_rootfs_equals_export(&out.join("rootfs.ext4"), &image);
    let m = manifest(&out);
    assert_eq!(m["rootfs"]["digest"], json["rootfs"]["digest"]);
    assert_eq!(m["source"]["config_digest"], image.as_str());
    assert_eq!(m["id"], json["id"], "manifest.json names the stored image");
    m
}

#[test]
fn multistage_with_copy_from() {
    assert_build_equals_export("multistage", &[]);
}

#[test]
fn build_args_and_target() {
    let m =
        assert_build_equals_export("args-target", &["--build-arg", "FLAVOUR=spicy", "--target", "second"]);
    assert_eq!(m["source"]["diff_ids"].as_array().unwrap().len(), 3, "busybox + the two RUNs up to `second`");
}

#[test]
fn copy_chown() {
    assert_build_equals_export("chown", &[]);
}

#[test]
fn run_steps_that_delete_and_replace() {
    assert_build_equals_export("delete-replace", &[]);
}

#[test]
fn manifest_carries_the_config() {
    let m = assert_build_equals_export("config", &[]);
    let c = &m["config"];
    assert_eq!(
        c["env"].as_array().unwrap().iter().filter(|e| e.as_str().unwrap().starts_with("APP_MODE=")).count(),
        1
    );
    assert!(c["env"].as_array().unwrap().iter().any(|e| e == "GREETING=hello world"), "{c}");
    assert_eq!(c["working_dir"], "/srv/app");
    assert_eq!(c["user"], "nobody");
    assert_eq!(c["entrypoint"][0], "/bin/sh");
    assert_eq!(c["cmd"], serde_json::json!(["cat", "marker"]));
}

#[test]
fn building_twice_hits_the_cache_and_gives_the_same_rootfs() {
    let work = tempdir();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let first = build("delete-replace", &a, &[]);
    let context = repo_root().join("fixtures/build/delete-replace");
    let out = run_ok(diskc().args(["--json", "build"]).arg(&context).arg("-o").arg(&b));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("CACHED"), "the second build should hit BuildKit's cache:\n{progress}");
    assert_eq!(first["image_id"], second["image_id"]);
    assert_eq!(first["rootfs"]["digest"], second["rootfs"]["digest"]);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["cache_hit"], true, "the store answers the second conversion");
    assert!(std::fs::read(a.join("rootfs.ext4")).unwrap() == std::fs::read(b.join("rootfs.ext4")).unwrap());
}
