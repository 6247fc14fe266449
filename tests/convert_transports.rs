//! One image through all five transports — the daemon, a docker-archive, OCI layouts and
//! OCI archives with gzip and with zstd layers, and a real registry — gives one rootfs
//! digest. A registry that is down is an environment failure (exit 3) leaving no output.

mod common;
mod registry_support;

use std::path::Path;
use std::process::Command;

use common::images::{build_fixture, skopeo_copy};
use common::{diskc, run_ok, tempdir, DOCKER};
use registry_support::{docker_push, TestRegistry};

fn rootfs_digest(source: &str, outdir: &Path) -> String {
    let out = run_ok(diskc().args(["--json", "convert", source, "-o"]).arg(outdir));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["rootfs"]["digest"].as_str().unwrap().to_string()
}

fn stored_id(source: &str, store: &Path) -> String {
    let out = run_ok(diskc().args(["--json", "convert", source, "--store"]).arg(store));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["id"].as_str().unwrap().to_string()
}

/// Regression (issue 11): the id covered the source reference, and the cache answered with
/// whichever transport stored the image first, so `docker-archive:` then `docker-daemon:`
/// gave one id and the other order another.
#[test]
fn the_image_id_is_the_same_whichever_transport_stores_it_first() {
    let image = build_fixture("changes");
    let work = tempdir();
    let archive = work.path().join("image.tar");
    run_ok(Command::new(DOCKER).args(["save", "-o"]).arg(&archive).arg(&image));
    let (archive, daemon) =
        (format!("docker-archive:{}", archive.display()), format!("docker-daemon:{image}"));
    let one = work.path().join("archive-first");
    let ids_one = [stored_id(&archive, &one), stored_id(&daemon, &one)];
    let other = work.path().join("daemon-first");
    let ids_other = [stored_id(&daemon, &other), stored_id(&archive, &other)];
    for id in ids_one.iter().chain(&ids_other) {
        assert_eq!(id, &ids_one[0], "ids: {ids_one:?} then {ids_other:?}");
    }
}

#[test]
fn every_transport_gives_the_same_rootfs() {
    let image = build_fixture("changes");
    let work = tempdir();
    let dir = work.path();

    let archive = dir.join("image.tar");
    run_ok(Command::new(DOCKER).args(["save", "-o"]).arg(&archive).arg(&image));
    let archive_ref = format!("docker-archive:{}", archive.display());
    let mut sources = vec![format!("docker-daemon:{image}"), archive_ref.clone()];
    for format in ["gzip", "zstd"] {
        let layout = format!("oci:{}:app", dir.join(format!("oci-{format}")).display());
        let oci_archive = format!("oci-archive:{}:app", dir.join(format!("oci-{format}.tar")).display());
        for dest in [&layout, &oci_archive] {
            skopeo_copy(&archive_ref, dest, format);
        }
        sources.push(layout);
        sources.push(oci_archive);
    }
    let registry = TestRegistry::start();
    docker_push(&image, &registry.host(), "diskc/changes:v1", None);
    sources.push(format!("docker://{}/diskc/changes:v1", registry.host()));

    let digests: Vec<(String, String)> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), rootfs_digest(s, &dir.join(format!("out{i}")))))
        .collect();
    let first = &digests[0].1;
    for (source, digest) in &digests {
        assert_eq!(digest, first, "{source} gave another rootfs than {}", digests[0].0);
    }
}

#[test]
fn a_registry_that_is_down_is_an_environment_failure() {
    let work = tempdir();
    let port = registry_support::free_port();
    let out = diskc()
        .args(["convert", &format!("docker://127.0.0.1:{port}/diskc/none:v1"), "-o"])
        .arg(work.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0, "nothing left behind");
}
