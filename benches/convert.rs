//! The whole conversion of a large generated image (scripts/make-bench-image.sh: 11 gzip
//! layers, about 1.1 GiB of file data, whiteouts, an opaque directory, replaced files) from an
//! OCI layout, three ways:
//!
//! - `cold --no-store`: the rootfs and its manifest in an output directory only;
//! - `cold into a store`: into a fresh store (chunked, compressed, durable; its layers saved);
//! - `incremental, top layer changed`: the image with another top layer (about 10 MiB) into
//!   a store that holds the first image: the ten lower layers are restored, not read.
//!
//! Throughput is the image's uncompressed layer bytes per second. Run with
//! `cargo bench --bench convert` (the first run spends a minute or two making the image).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use diskc::pipeline::{ConvertPlan, OutputPlan, RootfsOptions};
use diskc::source::SourceRef;

/// The layout's path, made by the script when absent.
fn bench_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-bench-image.sh");
    let out = Command::new(&script).output().expect("running scripts/make-bench-image.sh");
    assert!(out.status.success(), "make-bench-image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn plan(layout: &Path, reference: &str, outdir: Option<PathBuf>, store: Option<PathBuf>) -> ConvertPlan {
    let input = format!("oci:{}:{reference}", layout.display());
    ConvertPlan {
        source: input.parse::<SourceRef>().unwrap(),
        input,
        platform: Some("linux/amd64".into()),
        registry: Default::default(),
        output: OutputPlan {
            outdir,
            store: store.map(Into::into),
            rootfs: RootfsOptions::default(),
            ..Default::default()
        },
    }
}

/// The sum of the layers' uncompressed sizes: what a conversion reads and writes.
fn image_bytes(layout: &Path) -> u64 {
    let blobs = layout.join("blobs/sha256");
    // The uncompressed sizes are not in the manifest: count the tar streams once.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(digest)).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let blob = blobs.join(l["digest"].as_str().unwrap().trim_start_matches("sha256:"));
            let file = std::fs::File::open(blob).unwrap();
            std::io::copy(
                &mut flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)),
                &mut std::io::sink(),
            )
            .unwrap()
        })
        .sum()
}

fn convert(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rt = runtime.handle();
    let layout = bench_image();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bytes = image_bytes(&layout);

    // A store holding the base image (and its saved layers), copied for each incremental run.
    let seeded = work.path().join("seeded");
    diskc::convert(&plan(&layout, "base", None, Some(seeded.clone())), rt, &mut |_| {}).unwrap();

    let mut group = c.benchmark_group("convert");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    group.warm_up_time(Duration::from_secs(1));
    let fresh = || {
        let dir = tempfile::tempdir_in(work.path()).unwrap();
        let out = dir.path().join("out");
        (dir, out)
    };
    group.bench_function("cold --no-store", |b| {
        b.iter_batched(
            fresh,
            |(dir, out)| {
                diskc::convert(&plan(&layout, "base", Some(out), None), rt, &mut |_| {}).unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("cold into a store", |b| {
        b.iter_batched(
            fresh,
            |(dir, _)| {
                diskc::convert(&plan(&layout, "base", None, Some(dir.path().join("store"))), rt, &mut |_| {})
                    .unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("incremental, top layer changed", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let store = dir.path().join("store");
                let copied = Command::new("cp").arg("-a").arg(&seeded).arg(&store).status().unwrap();
                assert!(copied.success());
                (dir, store)
            },
            |(dir, store)| {
                let converted =
                    diskc::convert(&plan(&layout, "top-changed", None, Some(store)), rt, &mut |_| {})
                        .unwrap();
                assert_eq!(converted.layers_reused, 10);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, convert);
criterion_main!(benches);
