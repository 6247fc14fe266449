//! Incremental conversion: an image whose lower layers the store has saved reads only the
//! layers above them, and its rootfs is byte for byte the one a cold conversion writes. The
//! images are OCI layouts this test writes, so each case changes exactly one thing: the top
//! layer, a middle layer, a top layer that deletes files of the layers below (plain and
//! opaque whiteouts), and the other way round, a top layer that no longer deletes what the
//! stored image's top layer did. Each case is converted twice: with an output directory
//! (restored layers laid into its image file after the put) and into a store alone (their
//! bytes never in the image file, read where the store keeps them): the same image either
//! way, exported or written. The
//! saved layers go with the images that use them (gc) and stay within their bound.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{diskc, run_ok};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// One file of a layer: path, bytes (a directory when `None`), and a whiteout when the
/// name says so.
type Item = (&'static str, Option<Vec<u8>>);

fn bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn layer_tar(items: &[Item], hardlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, path, &d[..]).unwrap();
            }
        }
    }
    for (path, target) in hardlinks {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes an OCI layout of the given layer tars (gzip-compressed) at `dir`; returns its
/// `oci:` reference.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha(bytes);
        fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", sha(tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let (digest, size) = put(&gz.finish().unwrap());
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size
        }));
    }
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "annotations": { "org.opencontainers.image.ref.name": "img" },
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    format!("oci:{}:img", dir.display())
}

/// The layers the cases are made of.
struct Layers {
    base: Vec<u8>,
    middle: Vec<u8>,
    middle_changed: Vec<u8>,
    top: Vec<u8>,
    top_changed: Vec<u8>,
    top_deleting: Vec<u8>,
}

fn layers() -> Layers {
    let base = layer_tar(
        &[
            ("etc/", None),
            ("etc/conf", Some(b"base conf\n".to_vec())),
            ("usr/", None),
            ("usr/bin/", None),
            ("usr/bin/tool", Some(bytes(1, 3 << 20))),
            ("usr/lib/", None),
            ("usr/lib/small", Some(bytes(2, 5000))),
            ("usr/lib/sparse", Some([bytes(3, 4096), vec![0; 1 << 20], bytes(4, 100)].concat())),
            ("opq/", None),
            ("opq/a", Some(bytes(5, 70_000))),
            ("opq/b", Some(bytes(6, 10))),
            ("var/", None),
            ("var/big", Some(bytes(7, 2 << 20))),
        ],
        &[("usr/bin/tool-link", "usr/bin/tool")],
    );
    let middle_with = |seed: u32| {
        layer_tar(
            &[
                ("etc/", None),
                ("etc/conf", Some(format!("middle conf {seed}\n").into_bytes())),
                ("srv/", None),
                ("srv/data", Some(bytes(seed, 1_500_000))),
                ("srv/more", Some(bytes(seed + 1, 9000))),
            ],
            &[],
        )
    };
    let top_with = |seed: u32| {
        layer_tar(
            &[
                ("app/", None),
                ("app/main", Some(bytes(seed, 200_000))),
                ("app/big", Some(bytes(seed + 1, 1 << 20))),
            ],
            &[],
        )
    };
    let top_deleting = layer_tar(
        &[
            ("usr/bin/.wh.tool", Some(Vec::new())),
            ("var/.wh.big", Some(Vec::new())),
            ("srv/.wh.data", Some(Vec::new())),
            ("opq/", None),
            ("opq/.wh..wh..opq", Some(Vec::new())),
            ("opq/new", Some(bytes(40, 3000))),
            ("app/", None),
            ("app/main", Some(bytes(41, 50_000))),
        ],
        &[],
    );
    Layers {
        base,
        middle: middle_with(20),
        middle_changed: middle_with(30),
        top: top_with(50),
        top_changed: top_with(60),
        top_deleting,
    }
}

/// Converts `source` with `args`; returns the JSON result.
fn convert(source: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = diskc();
    cmd.args(["--json", "convert", source]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_ok(&mut cmd);
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Case {
    name: &'static str,
    layers: Vec<Vec<u8>>,
    /// Lower layers the store has saved when this case is converted.
    reused: u64,
    /// Bytes of the rootfs the store must take from the image it holds: the base layer's
    /// data (5 MiB), where that image kept it too.
    store_reuses: u64,
}

fn saved_layers(store: &Path) -> Vec<PathBuf> {
    match fs::read_dir(store.join("layers")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).filter(|p| p.join("index").exists()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn incremental_conversions_write_the_bytes_of_cold_ones() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let l = layers();
    let first = vec![l.base.clone(), l.middle.clone(), l.top.clone()];
    let cases = [
        Case {
            name: "top-changed",
            layers: vec![l.base.clone(), l.middle.clone(), l.top_changed.clone()],
            reused: 2,
            store_reuses: 4 << 20,
        },
        Case {
            name: "middle-changed",
            layers: vec![l.base.clone(), l.middle_changed.clone(), l.top.clone()],
            reused: 1,
            store_reuses: 4 << 20,
        },
        Case {
            name: "top-deleting",
            layers: vec![l.base.clone(), l.middle.clone(), l.top_deleting.clone()],
            reused: 2,
            store_reuses: 0,
        },
        // The stored image with the deleting top kept little of the lower layers' data;
        // an image over the same lower layers that deletes nothing needs all of it.
        Case {
            name: "top-not-deleting",
            layers: vec![l.base.clone(), l.middle.clone(), l.top_changed_again()],
            reused: 2,
            store_reuses: 0,
        },
    ];

    let first_ref = oci_layout(&dir.path().join("first"), &first);
    let cold = convert(&first_ref, &["--store", store_arg, "--no-journal"], &[]);
    assert_eq!(cold["layers_reused"], 0);
    assert_eq!(cold["store_reused_bytes"], 0);
    assert_eq!(saved_layers(&store).len(), 3, "every layer of the first image is saved");
    // The twin store, for conversions without an output directory.
    let twin = dir.path().join("twin");
    let twin_arg = twin.to_str().unwrap();
    convert(&first_ref, &["--store", twin_arg, "--no-journal"], &[]);
    for layer in saved_layers(&twin) {
        assert!(layer.join("values").exists(), "{}: the MiBs' values are saved", layer.display());
    }

    for case in &cases {
        let reference = oci_layout(&dir.path().join(case.name), &case.layers);
        let warm_out = dir.path().join(format!("{}-warm", case.name));
        let cold_out = dir.path().join(format!("{}-cold", case.name));
        let warm = convert(
            &reference,
            &["--store", store_arg, "--no-journal", "-o", warm_out.to_str().unwrap()],
            &[],
        );
        assert_eq!(warm["layers_reused"], case.reused, "{}: {warm}", case.name);
        let store_reused = warm["store_reused_bytes"].as_u64().unwrap();
        assert!(
            store_reused >= case.store_reuses,
            "{}: {store_reused} bytes taken from the store",
            case.name
        );
        assert_eq!(warm["cache_hit"], false);
        let cold =
            convert(&reference, &["--no-store", "--no-journal", "-o", cold_out.to_str().unwrap()], &[]);
        assert_eq!(cold["layers_reused"], 0);
        let (a, b) = (
            fs::read(warm_out.join("rootfs.ext4")).unwrap(),
            fs::read(cold_out.join("rootfs.ext4")).unwrap(),
        );
        assert!(a == b, "{}: the incremental rootfs differs from the cold one", case.name);
        assert_eq!(warm["rootfs"], cold["rootfs"], "{}", case.name);
        common::assert_fsck_clean(&warm_out.join("rootfs.ext4"));
        // A fresh store gives the image the same id.
        let fresh = dir.path().join(format!("{}-store", case.name));
        let again = convert(&reference, &["--store", fresh.to_str().unwrap(), "--no-journal"], &[]);
        assert_eq!(again["id"], warm["id"], "{}", case.name);

        // Into a store alone: the restored layers are read where the store keeps them.
        let laid = convert(&reference, &["--store", twin_arg, "--no-journal"], &[]);
        assert_eq!(laid["layers_reused"], case.reused, "{}: {laid}", case.name);
        assert_eq!(laid["id"], warm["id"], "{}: the image a copy gives", case.name);
        assert_eq!(laid["rootfs"]["digest"], cold["rootfs"]["digest"], "{}", case.name);
        let laid_reused = laid["store_reused_bytes"].as_u64().unwrap();
        assert!(laid_reused >= case.store_reuses, "{}: {laid_reused} bytes taken from the store", case.name);
        let exported = dir.path().join(format!("{}-laid.ext4", case.name));
        run_ok(
            diskc().args(["export", "--store", twin_arg, laid["id"].as_str().unwrap(), "-o"]).arg(&exported),
        );
        assert!(fs::read(&exported).unwrap() == b, "{}: the exported rootfs is the cold one", case.name);
        common::assert_fsck_clean(&exported);
    }
}

impl Layers {
    /// A top layer unlike every other, deleting nothing.
    fn top_changed_again(&self) -> Vec<u8> {
        layer_tar(&[("app/", None), ("app/other", Some(bytes(70, 300_000)))], &[])
    }
}

#[test]
fn saved_layers_go_with_their_images_and_stay_within_their_bound() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let l = layers();
    let a = oci_layout(&dir.path().join("a"), &[l.base.clone(), l.middle.clone(), l.top.clone()]);
    let b = oci_layout(&dir.path().join("b"), &[l.base.clone(), l.middle_changed.clone()]);
    convert(&a, &["--store", store_arg, "-t", "a"], &[]);
    let converted_b = convert(&b, &["--store", store_arg, "-t", "b"], &[]);
    assert_eq!(converted_b["layers_reused"], 1);
    // base, middle, top (a) and middle-changed (b).
    assert_eq!(saved_layers(&store).len(), 4);

    // Removing a: gc drops the layers only a used; the base, which b uses too, stays.
    run_ok(diskc().args(["rm", "--store", store_arg, "a"]));
    run_ok(diskc().args(["gc", "--store", store_arg]));
    assert_eq!(saved_layers(&store).len(), 2);
    let again = convert(&b, &["--store", store_arg, "--no-journal"], &[]);
    assert_eq!(again["layers_reused"], 2, "{again}");

    // Removing b's images as well leaves none.
    let ids: Vec<String> = fs::read_dir(store.join("images"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".json.zst").map(str::to_string))
        .collect();
    for id in ids {
        run_ok(diskc().args(["rm", "--store", store_arg, &id]));
    }
    run_ok(diskc().args(["gc", "--store", store_arg]));
    assert_eq!(saved_layers(&store).len(), 0);
    assert!(fs::read_dir(store.join("layers")).unwrap().next().is_none());

    // A bound smaller than the base layer's data keeps the saved layers under it: the least
    // recently used (the base, saved first) go first.
    let bound = (4u64 << 20).to_string();
    convert(&a, &["--store", store_arg], &[("DISKC_LAYER_CACHE_BYTES", &bound)]);
    let kept: u64 = saved_layers(&store)
        .iter()
        .map(|d| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(d.join("data")).unwrap().blocks() * 512
                + fs::metadata(d.join("index")).unwrap().len()
        })
        .sum();
    assert!(kept <= 4 << 20, "{kept} bytes of saved layers kept under a bound of 4 MiB");
    assert_eq!(saved_layers(&store).len(), 2, "the middle and top layers fit, the base does not");
}
