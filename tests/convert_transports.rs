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
