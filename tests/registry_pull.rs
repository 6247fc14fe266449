//! The `docker://` source against a real registry (Debian's docker-registry on loopback):
//! an image pushed by the Docker client resolves to the same manifest, config and layers
//! the daemon knows, every blob streams with its digest; a multi-platform OCI index
//! resolves by platform; an unknown tag or repository is bad input and a registry that is
//! down is an environment failure naming it.

mod common;
mod registry_support;

use std::io::Read;

use diskc::digest::{Digest, HashingReader};
use diskc::error::{Classify, ErrorKind};
use diskc::source::registry::{Registry, RegistryError, RegistryOptions};
use diskc::source::LayerDescriptor;
use diskc::source::DEFAULT_PLATFORM;
use registry_support::{build_app_image, docker_inspect, docker_push, free_port, TestRegistry};

fn anonymous() -> RegistryOptions {
    // A config path that does not exist: no credentials, whatever the machine has.
    RegistryOptions { docker_config: Some("/nonexistent/diskc/config.json".into()), ..Default::default() }
}

fn registry(reference: &str) -> Registry {
    Registry::new(registry_support::registry_ref(reference), &anonymous()).unwrap()
}

/// Streams a blob and returns its digest and size.
fn hash_blob(reg: &Registry, layer: &LayerDescriptor) -> (Digest, u64) {
    let mut reader = HashingReader::new(reg.open_blob(layer).unwrap());
    std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
    reader.finish()
}

#[test]
fn pushed_image_resolves_and_every_blob_matches_its_digest() {
    let image = build_app_image();
    let reg = TestRegistry::start();
    let pushed = docker_push(image, &reg.host(), "diskc/app:v1", None);

    let client = registry(&format!("docker://{}/diskc/app:v1", reg.host()));
    let resolved = client.resolve(DEFAULT_PLATFORM).unwrap();

    assert_eq!(
        resolved.manifest_digest.unwrap().to_string(),
        pushed,
        "manifest digest differs from docker push's"
    );
    assert_eq!(
        resolved.config_digest.to_string(),
        docker_inspect(image, "{{.Id}}"),
        "config digest is not the image id"
    );
    assert_eq!(Digest::of(&resolved.config_json), resolved.config_digest);
    assert_eq!(resolved.platform, "linux/amd64");

    let config: serde_json::Value = serde_json::from_slice(&resolved.config_json).unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let daemon_layers = docker_inspect(image, "{{range .RootFS.Layers}}{{.}} {{end}}");
    assert_eq!(diff_ids.join(" "), daemon_layers.trim());
    assert_eq!(resolved.layers.len(), diff_ids.len());
    assert_eq!(resolved.layers.len(), 2, "busybox plus one RUN layer");

    for (layer, diff_id) in resolved.layers.iter().zip(&diff_ids) {
        assert_eq!(layer.media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
        let (digest, size) = hash_blob(&client, layer);
        assert_eq!(digest, layer.digest, "blob digest");
        assert_eq!(Some(size), layer.size, "blob size");
        // The uncompressed stream is the layer the daemon holds.
        let gz = flate2::read::GzDecoder::new(client.open_blob(layer).unwrap());
        let mut plain = HashingReader::new(gz);
        std::io::copy(&mut plain, &mut std::io::sink()).unwrap();
        assert_eq!(plain.finish().0.to_string(), *diff_id, "diff_id of {}", layer.digest);
    }

    // The same image by digest resolves identically.
    let by_digest =
        registry(&format!("docker://{}/diskc/app@{pushed}", reg.host())).resolve(DEFAULT_PLATFORM).unwrap();
    assert_eq!(by_digest, resolved);
}

#[test]
fn unknown_tag_and_repository_are_bad_input() {
    let image = build_app_image();
    let reg = TestRegistry::start();
    docker_push(image, &reg.host(), "diskc/app:v1", None);

    for reference in [
        format!("docker://{}/diskc/app:no-such-tag", reg.host()),
        format!("docker://{}/diskc/no-such-repo:v1", reg.host()),
        format!("docker://{}/diskc/app@sha256:{}", reg.host(), "0".repeat(64)),
    ] {
        let err = registry(&reference).resolve(DEFAULT_PLATFORM).unwrap_err();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{reference}: {err:?}");
        assert_eq!(err.error_kind(), ErrorKind::BadInput, "{reference}");
        assert!(err.to_string().contains(&reference), "{err}");
    }

    let client = registry(&format!("docker://{}/diskc/app:v1", reg.host()));
    let absent = LayerDescriptor { digest: Digest::of(b"absent"), media_type: String::new(), size: None };
    let err = client.open_blob(&absent).map(|_| ()).unwrap_err();
    assert_eq!(err.error_kind(), ErrorKind::BadInput);
    assert!(err.to_string().contains(&absent.digest.to_string()), "{err}");
}

#[test]
fn registry_down_is_environment_error_naming_host_and_port() {
    let port = free_port();
    let err =
        registry(&format!("docker://127.0.0.1:{port}/diskc/app:v1")).resolve(DEFAULT_PLATFORM).unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.error_kind(), ErrorKind::Environment);
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// Uploads a blob with the two-step upload of the distribution API (POST, then PUT with
/// the digest).
fn put_blob(reg: &TestRegistry, repo: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let started = ureq::post(reg.url(&format!("/v2/{repo}/blobs/uploads/"))).send_empty().unwrap();
    assert_eq!(started.status().as_u16(), 202);
    let location = started.headers().get("location").unwrap().to_str().unwrap().to_string();
    let location = if location.starts_with("http") { location } else { reg.url(&location) };
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = ureq::put(format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .send(bytes)
        .unwrap();
    assert_eq!(done.status().as_u16(), 201);
    digest
}

fn put_manifest(reg: &TestRegistry, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let done = ureq::put(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .send(bytes)
        .unwrap();
    assert_eq!(done.status().as_u16(), 201);
}

fn get_json(reg: &TestRegistry, path: &str, accept: &str) -> serde_json::Value {
    let mut response = ureq::get(reg.url(path)).header("Accept", accept).call().unwrap();
    serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap()
}

/// An OCI manifest for `config` over the pushed image's layers.
fn oci_manifest(config: &[u8], layers: &serde_json::Value) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": l["digest"],
                "size": l["size"],
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(config).to_string(),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .unwrap()
}

#[test]
fn multi_platform_index_resolves_by_platform() {
    let image = build_app_image();
    let reg = TestRegistry::start();
    let repo = "diskc/multi";
    docker_push(image, &reg.host(), &format!("{repo}:amd64"), None);

    // The pushed (amd64) image, and an arm64 twin: the same layers under a config that
    // declares arm64/v8. Both as OCI manifests, listed by an OCI index.
    let pushed = get_json(
        &reg,
        &format!("/v2/{repo}/manifests/amd64"),
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    let amd64_config_digest = pushed["config"]["digest"].as_str().unwrap().to_string();
    let mut amd64_config = Vec::new();
    ureq::get(reg.url(&format!("/v2/{repo}/blobs/{amd64_config_digest}")))
        .call()
        .unwrap()
        .into_body()
        .into_reader()
        .read_to_end(&mut amd64_config)
        .unwrap();
    let mut arm64: serde_json::Value = serde_json::from_slice(&amd64_config).unwrap();
    arm64["architecture"] = "arm64".into();
    arm64["variant"] = "v8".into();
    let arm64_config = serde_json::to_vec(&arm64).unwrap();
    let arm64_config_digest = put_blob(&reg, repo, &arm64_config);

    let oci = "application/vnd.oci.image.manifest.v1+json";
    let mut entries = Vec::new();
    let mut manifest_digests = Vec::new();
    for (config, arch, variant) in [(&arm64_config, "arm64", Some("v8")), (&amd64_config, "amd64", None)] {
        let manifest = oci_manifest(config, &pushed["layers"]);
        let digest = Digest::of(&manifest);
        put_manifest(&reg, repo, &digest.to_string(), oci, &manifest);
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        entries.push(serde_json::json!({"mediaType": oci, "digest": digest.to_string(), "size": manifest.len(), "platform": platform}));
        manifest_digests.push(digest);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    put_manifest(&reg, repo, "multi", "application/vnd.oci.image.index.v1+json", &index);

    let client = registry(&format!("docker://{}/{repo}:multi", reg.host()));
    let amd64 = client.resolve("linux/amd64").unwrap();
    assert_eq!(amd64.manifest_digest, Some(manifest_digests[1]));
    assert_eq!(amd64.config_digest.to_string(), amd64_config_digest);
    assert_eq!(amd64.platform, "linux/amd64");
    assert_eq!(amd64.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");

    let arm = client.resolve("linux/arm64").unwrap();
    assert_eq!(arm.manifest_digest, Some(manifest_digests[0]));
    assert_eq!(arm.config_digest, arm64_config_digest);
    assert_eq!(arm.platform, "linux/arm64/v8");
    assert_eq!(arm.config_json, arm64_config);
    assert_eq!(arm.layers, amd64.layers);

    // The index by its digest resolves the same way.
    let by_digest = registry(&format!("docker://{}/{repo}@{}", reg.host(), Digest::of(&index)));
    assert_eq!(by_digest.resolve("linux/arm64/v8").unwrap(), arm);

    let err = client.resolve("linux/s390x").unwrap_err();
    assert_eq!(err.error_kind(), ErrorKind::BadInput);
    let text = err.to_string();
    assert!(
        text.contains("linux/s390x") && text.contains("linux/arm64/v8") && text.contains("linux/amd64"),
        "{text}"
    );
}

#[test]
fn plain_http_beyond_loopback_needs_insecure() {
    let image = build_app_image();
    let reg = TestRegistry::start_on_all_interfaces();
    // Pushed through loopback: the daemon allows plain HTTP only there.
    docker_push(image, &reg.host(), "diskc/app:v1", None);
    let address = registry_support::non_loopback_address();
    let reference = registry_support::registry_ref(&format!("docker://{address}:{}/diskc/app:v1", reg.port));
    assert!(!reference.is_loopback());

    // HTTPS by default: the plain-HTTP registry cannot answer a TLS handshake.
    let err = Registry::new(reference.clone(), &anonymous()).unwrap().resolve(DEFAULT_PLATFORM).unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert_eq!(err.error_kind(), ErrorKind::Environment);

    let insecure = RegistryOptions { insecure: true, ..anonymous() };
    let resolved = Registry::new(reference, &insecure).unwrap().resolve(DEFAULT_PLATFORM).unwrap();
    assert_eq!(resolved.config_digest.to_string(), docker_inspect(image, "{{.Id}}"));
}

#[test]
fn registry_blobs_feed_the_parallel_layer_indexer() {
    use diskc::layer::{index_layers, LayerExpect, LayerJob};

    let image = build_app_image();
    let reg = TestRegistry::start();
    docker_push(image, &reg.host(), "diskc/app:v1", None);
    let client = registry(&format!("docker://{}/diskc/app:v1", reg.host()));
    let resolved = client.resolve(DEFAULT_PLATFORM).unwrap();
    let config = diskc::source::parse_config(&resolved.config_json).unwrap();

    let jobs: Vec<LayerJob> = resolved
        .layers
        .iter()
        .zip(&config.diff_ids)
        .map(|(l, diff_id)| LayerJob {
            expect: LayerExpect {
                digest: Some(l.digest),
                diff_id: Some(*diff_id),
                media_type: l.media_type.clone(),
            },
            size: l.size,
        })
        .collect();
    let spool = common::tempdir();
    let open = |i: usize| -> std::io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(client.open_blob(&resolved.layers[i])?))
    };
    let layers = index_layers(&jobs, open, &common::spool_file(spool.path())).unwrap();

    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
    assert_eq!(diff_ids, config.diff_ids);
    let top = layers.last().unwrap();
    assert!(top.entries.iter().any(|e| e.path == b"srv/hello"), "the RUN layer holds srv/hello");

    // A blob the registry does not have reaches the layer stage as bad input.
    let absent = LayerDescriptor { digest: Digest::of(b"absent"), media_type: String::new(), size: None };
    let io_err = std::io::Error::from(client.open_blob(&absent).map(|_| ()).unwrap_err());
    assert_eq!(ErrorKind::of_io(&io_err), ErrorKind::BadInput);
}
