//! The `docker-daemon:` source against the real Docker Engine: an image built from the
//! busybox base inspects to the digests `docker image inspect` reports, and its export
//! streams as a tar whose manifest.json, config and layers carry exactly those digests.
//! A missing image is bad input.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::Command;
use std::sync::Once;

use diskc::digest::{Digest, HashingReader};
use diskc::error::{Classify, ErrorKind};
use diskc::source::daemon::{export_stream, resolve_daemon, DaemonError};

const IMAGE: &str = "diskc-test/remote-daemon:latest";

fn build_image() {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        common::ensure_base_images(&["busybox"]);
        let context = common::tempdir();
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM diskc-test/busybox:latest\n\
             RUN mkdir -p /srv && echo 'from the daemon' > /srv/msg\n\
             RUN rm /bin/vi && ln -s /srv/msg /srv/link\n\
             ENV GREETING=hello\n\
             WORKDIR /srv\n\
             EXPOSE 8080/tcp\n\
             ENTRYPOINT [\"/bin/cat\"]\n\
             CMD [\"/srv/msg\"]\n",
        )
        .unwrap();
        common::run_ok(
            Command::new(common::DOCKER)
                .env("DOCKER_BUILDKIT", "1")
                .args(["build", "-q", "-t", IMAGE])
                .arg(context.path()),
        );
    });
}

fn inspect(format: &str) -> String {
    let out = common::run_ok(Command::new(common::DOCKER).args(["image", "inspect", "-f", format, IMAGE]));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn resolve_reports_what_docker_inspect_reports() {
    build_image();
    let image = resolve_daemon(common::rt(), IMAGE).unwrap();
    assert_eq!(image.id.to_string(), inspect("{{.Id}}"));
    let layers: Vec<String> = image.diff_ids.iter().map(|d| d.to_string()).collect();
    assert_eq!(layers.join(" "), inspect("{{range .RootFS.Layers}}{{.}} {{end}}"));
    assert!(image.diff_ids.len() >= 3, "busybox and two RUN layers at least");
    assert_eq!(image.platform, format!("{}/{}", inspect("{{.Os}}"), inspect("{{.Architecture}}")));
    assert!(image.repo_digests.is_empty(), "a locally built image has no repo digest");
    assert_eq!(image.config.entrypoint, ["/bin/cat"]);
    assert_eq!(image.config.cmd, ["/srv/msg"]);
    assert_eq!(image.config.working_dir, "/srv");
    assert_eq!(image.config.exposed_ports, ["8080/tcp"]);
    assert!(image.config.env.iter().any(|e| e == "GREETING=hello"), "{:?}", image.config.env);

    // By id, the same image.
    let by_id = resolve_daemon(common::rt(), &image.id.to_string()).unwrap();
    assert_eq!(by_id.id, image.id);
    assert_eq!(by_id.diff_ids, image.diff_ids);
}

#[test]
fn export_streams_a_tar_whose_digests_match_inspect() {
    build_image();
    let image = resolve_daemon(common::rt(), IMAGE).unwrap();
    // Export by id: exactly the inspected image.
    let stream = export_stream(common::rt(), &image.id.to_string()).unwrap();

    // Read it the way a consumer does: entry by entry as the bytes arrive, hashing each.
    let mut archive = tar::Archive::new(stream);
    let mut hashes: HashMap<String, Digest> = HashMap::new();
    let mut manifest_json = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if path == "manifest.json" {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            manifest_json = Some(bytes);
            continue;
        }
        let mut hashing = HashingReader::new(&mut entry);
        std::io::copy(&mut hashing, &mut std::io::sink()).unwrap();
        hashes.insert(path, hashing.finish().0);
    }

    // docker-archive's manifest.json (Engine < 25 writes only this; Engine >= 25 writes it
    // beside the OCI layout): the config file and the layer tars, bottom first.
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_json.expect("manifest.json in the export")).unwrap();
    let entry = &manifest.as_array().unwrap()[0];
    let config_path = entry["Config"].as_str().unwrap();
    assert_eq!(hashes[config_path], image.id, "config file {config_path}");
    let layer_paths: Vec<&str> =
        entry["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(layer_paths.len(), image.diff_ids.len());
    for (path, diff_id) in layer_paths.iter().zip(&image.diff_ids) {
        assert_eq!(hashes[*path], *diff_id, "layer {path}");
    }
}

#[test]
fn dropping_the_stream_early_stops_the_export() {
    build_image();
    let mut stream = export_stream(common::rt(), IMAGE).unwrap();
    let mut header = [0u8; 512];
    stream.read_exact(&mut header).unwrap();
    // A tar header: the ustar magic at offset 257.
    assert_eq!(&header[257..262], b"ustar");
    drop(stream);
    // The Engine must still serve a full export afterwards.
    let mut again = export_stream(common::rt(), IMAGE).unwrap();
    let n = std::io::copy(&mut again, &mut std::io::sink()).unwrap();
    assert!(n > 1 << 20, "export of {n} bytes is too small for a busybox image");
}

#[test]
fn missing_image_is_bad_input_naming_it() {
    let name = "diskc-test/remote-no-such-image:missing";
    let resolve_err = resolve_daemon(common::rt(), name).unwrap_err();
    let export_err = export_stream(common::rt(), name).map(|_| ()).unwrap_err();
    for err in [resolve_err, export_err] {
        assert!(matches!(err, DaemonError::NotFound { .. }), "{err:?}");
        assert_eq!(err.error_kind(), ErrorKind::BadInput);
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn export_feeds_the_stream_reader() {
    build_image();
    let image = resolve_daemon(common::rt(), IMAGE).unwrap();
    let spool = common::tempdir();
    let streamed = diskc::source::read_image_stream(
        export_stream(common::rt(), &image.id.to_string()).unwrap(),
        "docker-daemon:diskc-test/remote-daemon:latest",
        None,
        diskc::source::DEFAULT_PLATFORM,
        &common::spool_file(spool.path()),
        &image.diff_ids,
    )
    .unwrap();
    assert_eq!(streamed.resolved.config_digest, image.id);
    assert_eq!(streamed.config.diff_ids, image.diff_ids);
    let diff_ids: Vec<Digest> = streamed.layers.iter().map(|l| l.diff_id).collect();
    assert_eq!(diff_ids, image.diff_ids);
    assert_eq!(
        streamed.config.config, image.config,
        "the config the export carries is the one inspect reports"
    );
}
