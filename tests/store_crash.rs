//! Crash safety and concurrency of the store, through real `diskc` processes: a put killed
//! with SIGKILL at random points leaves a store `diskc verify` finds clean and the put then
//! completes with the same id; concurrent puts of overlapping images (with gc running beside
//! them) both complete and corrupt nothing.

mod common;

use common::sample::{sample_bytes as bytes, sparse_file};

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

const MIB: usize = 1 << 20;

fn spawn_put(store: &Path, image: &Path) -> Child {
    common::diskc()
        .args(["store-put", "--json", "--store"])
        .arg(store)
        .arg(image)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The id a finished `store-put --json` printed.
fn id_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "store-put failed: {}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    value["id"].as_str().unwrap().to_string()
}

fn diskc_ok(store: &Path, args: &[&str]) -> String {
    let out = common::run_ok(common::diskc().args(args).arg("--store").arg(store));
    String::from_utf8(out.stdout).unwrap()
}

fn assert_verify_clean(store: &Path, context: &str) {
    let mut verify = common::diskc();
    verify.args(["verify", "--store"]).arg(store);
    common::assert_store_verifies(verify, store, context);
}

/// xorshift; the seed is printed in every failure message.
#[test]
fn put_killed_at_random_points_leaves_a_clean_store_and_completes_after() {
    let dir = common::tempdir();
    let image = dir.path().join("rootfs.img");
    let data = bytes(11, 20 * MIB);
    sparse_file(&image, 64 * MIB as u64, &[(0, &data[..12 * MIB]), (40 * MIB as u64, &data[12 * MIB..])]);

    // The reference: an uninterrupted put, and how long a put takes here.
    let started = Instant::now();
    let expected = id_of(spawn_put(&dir.path().join("reference"), &image));
    let mut full = started.elapsed();

    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = common::Rng(seed);
    let store = dir.path().join("store");
    let mut interrupted = 0;
    let mut attempts = 0;
    while interrupted < 20 {
        attempts += 1;
        assert!(attempts <= 80, "seed {seed}: only {interrupted} of {attempts} kills landed during a put");
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64));
        let context = format!("seed {seed}, attempt {attempts}, killed after {delay:?} of {full:?}");
        let mut child = spawn_put(&store, &image);
        std::thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            interrupted += 1;
        } else {
            // It ended before the kill: a put takes less than the reference said (timed
            // while other tests loaded the machine), so later kills come sooner.
            full = full.min(delay);
        }
        assert_verify_clean(&store, &context);
        assert_eq!(id_of(spawn_put(&store, &image)), expected, "{context}: the put after the kill");
        assert_verify_clean(&store, &context);
        let out = common::diskc()
            .args(["export", "--store"])
            .arg(&store)
            .arg(&expected[..12])
            .arg("-o")
            .arg(dir.path().join("out.img"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{context}: export failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            fs::read(dir.path().join("out.img")).unwrap() == fs::read(&image).unwrap(),
            "{context}: export differs"
        );
        // Start the next round from an empty store, so the next kill lands among writes too.
        diskc_ok(&store, &["rm", &expected]);
        diskc_ok(&store, &["gc"]);
        assert_eq!(fs::read_dir(store.join("tmp")).unwrap().count(), 0, "{context}: gc left temp files");
        assert_eq!(fs::read_dir(store.join("packs")).unwrap().count(), 0, "{context}: gc left packs");
    }
}

#[test]
fn concurrent_puts_of_overlapping_images_with_gc_running_corrupt_nothing() {
    let dir = common::tempdir();
    let base = bytes(21, 12 * MIB);
    let images: Vec<_> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("img{i}"));
            let extra = bytes(30 + i, 2 * MIB);
            sparse_file(&path, 64 * MIB as u64, &[(0, &base), (12 * MIB as u64, &extra)]);
            path
        })
        .collect();
    let expected: Vec<String> =
        images.iter().map(|image| id_of(spawn_put(&dir.path().join("reference"), image))).collect();

    for round in 0..3 {
        let store = dir.path().join(format!("store{round}"));
        let mut running: Vec<Option<Child>> =
            images.iter().map(|image| Some(spawn_put(&store, image))).collect();
        let mut ids = vec![None, None];
        // gc keeps running while the puts write; it must never take a chunk from under them.
        let mut gcs = 0;
        while ids.iter().any(Option::is_none) {
            // The puts create the store; until one has, there is nothing to collect (and gc,
            // rightly, refuses a store that does not exist).
            if store.join("lock").exists() {
                diskc_ok(&store, &["gc"]);
                gcs += 1;
            } else {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            for (slot, id) in running.iter_mut().zip(ids.iter_mut()) {
                if slot.as_mut().is_some_and(|child| child.try_wait().unwrap().is_some()) {
                    *id = Some(id_of(slot.take().unwrap()));
                }
            }
        }
        let ids: Vec<String> = ids.into_iter().map(Option::unwrap).collect();
        assert_eq!(ids, expected, "round {round}");
        assert!(gcs >= 1);
        assert_verify_clean(&store, &format!("round {round}"));
        diskc_ok(&store, &["gc"]);
        for (id, image) in ids.iter().zip(&images) {
            let out = dir.path().join("out.img");
            diskc_ok(&store, &["export", id, "-o", out.to_str().unwrap()]);
            assert!(
                fs::read(&out).unwrap() == fs::read(image).unwrap(),
                "round {round}: export of {id} differs"
            );
        }
    }
}
