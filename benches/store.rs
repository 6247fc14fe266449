//! Throughput of the store's put path and its parts: finding chunk boundaries (fixed and
//! content-defined), hashing, compressing, and a whole put into a fresh store. Run with
//! `cargo bench --bench store`; the figures feed docs/chunking.md.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;

#[path = "../tests/common/sample.rs"]
mod sample;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use diskc::digest::Digest;
use diskc::fileio::data_extents;
use diskc::store::chunking::{read_chunks, Chunking, Piece};
use diskc::store::{ImageRecord, Store};

const LEN: usize = 64 << 20;

/// Half random, half text, in 4 KiB blocks: compresses about like a rootfs.
fn sample() -> Vec<u8> {
    sample::sample_bytes(1, LEN)
}

fn parts(c: &mut Criterion) {
    let data = sample();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("image");
    File::create(&path).unwrap().write_all_at(&data, 0).unwrap();
    let file = File::open(&path).unwrap();
    let extents = data_extents(&file, LEN as u64).unwrap();

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);
    group.bench_function("sha256", |b| b.iter(|| Digest::of(black_box(&data))));
    group.bench_function("zstd-3 in 64 KiB chunks", |b| {
        b.iter(|| data.chunks(64 << 10).map(|c| zstd::bulk::compress(c, 3).unwrap().len()).sum::<usize>())
    });
    for chunking in ["fixed:1M", "cdc:64K", "cdc:256K"] {
        let chunking: Chunking = chunking.parse().unwrap();
        group.bench_function(format!("read chunks {chunking}"), |b| {
            b.iter(|| {
                let mut count = 0;
                read_chunks(&file, LEN as u64, &extents, chunking, None, |piece: Piece| {
                    count += piece.bytes();
                    Ok::<(), std::io::Error>(())
                })
                .unwrap();
                count
            })
        });
        group.bench_function(format!("put into a fresh store {chunking}"), |b| {
            b.iter_batched(
                || tempfile::tempdir_in(dir.path()).unwrap(),
                |root| {
                    let store = Store::open(root.path()).unwrap().with_chunking(chunking);
                    store.put_image(&path, &[], ImageRecord::default()).unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, parts);
criterion_main!(benches);
