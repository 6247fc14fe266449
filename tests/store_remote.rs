//! Push and pull against a real S3 server (s3s-fs, installed by scripts/setup.sh, started
//! here on a loopback port): the same id and a byte-identical export after a round trip,
//! a variant pull moving about its new bytes only, a second pull moving nothing, and push or
//! pull killed with SIGKILL at random points leaving both stores valid.

mod common;

use common::s3::{S3Server, BUCKET};
use common::sample::{sample_bytes as bytes, sparse_file};

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

const MIB: u64 = 1 << 20;

fn json_ok(cmd: &mut Command) -> Value {
    let out = common::run_ok(cmd);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn put(s3: &S3Server, store: &Path, image: &Path) -> String {
    json_ok(s3.diskc(store).args(["store-put", "--json"]).arg(image))["id"].as_str().unwrap().to_string()
}

/// (id, transferred_bytes) of a push or pull.
fn transfer(s3: &S3Server, store: &Path, verb: &str, image: &str) -> (String, u64) {
    transfer_at(s3, store, verb, image, &s3.url())
}

fn transfer_at(s3: &S3Server, store: &Path, verb: &str, image: &str, url: &str) -> (String, u64) {
    let out = json_ok(s3.diskc(store).args([verb, "--json", image, url]));
    (out["id"].as_str().unwrap().to_string(), out["transferred_bytes"].as_u64().unwrap())
}

fn exported(s3: &S3Server, store: &Path, image: &str, out: &Path) -> Vec<u8> {
    common::run_ok(s3.diskc(store).args(["export", image, "-o"]).arg(out));
    fs::read(out).unwrap()
}

fn assert_verify_clean(s3: &S3Server, store: &Path, context: &str) {
    let mut verify = s3.diskc(store);
    verify.arg("verify");
    common::assert_store_verifies(verify, store, context);
}

/// A base image and a variant adding 4 MiB of new data to it.
fn family(dir: &Path) -> (PathBuf, PathBuf, u64) {
    let base_data = bytes(51, 24 * MIB as usize);
    let added = bytes(52, 4 * MIB as usize);
    let base = dir.join("base.img");
    let variant = dir.join("variant.img");
    sparse_file(&base, 64 * MIB, &[(0, &base_data)]);
    sparse_file(&variant, 64 * MIB, &[(0, &base_data[..]), (32 * MIB, &added[..])]);
    (base, variant, added.len() as u64)
}

#[test]
fn push_then_pull_gives_the_same_image_and_a_variant_pull_moves_only_its_new_bytes() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let (base, variant, added) = family(dir.path());
    let here = dir.path().join("here");
    let there = dir.path().join("there");
    let base_id = put(&s3, &here, &base);
    common::run_ok(s3.diskc(&here).args(["tag", &base_id, "team/base:1"]));

    let (pushed, sent) = transfer(&s3, &here, "push", "team/base:1");
    assert_eq!(pushed, base_id);
    assert!(sent > 10 * MIB, "the push sent only {sent} bytes");
    let again = transfer(&s3, &here, "push", "team/base:1").1;
    assert_eq!(again, 65, "a second push sends only the name (an id and a newline)");

    let (pulled, received) = transfer(&s3, &there, "pull", "team/base:1");
    assert_eq!(pulled, base_id);
    assert!(received > 10 * MIB, "{received}");
    assert_eq!(exported(&s3, &there, "team/base:1", &dir.path().join("a.img")), fs::read(&base).unwrap());
    assert_verify_clean(&s3, &there, "after the first pull");
    assert_eq!(transfer(&s3, &there, "pull", &base_id), (base_id.clone(), 0), "a second pull moved bytes");

    let variant_id = put(&s3, &here, &variant);
    transfer(&s3, &here, "push", &variant_id);
    let (pulled, moved) = transfer(&s3, &there, "pull", &variant_id);
    assert_eq!(pulled, variant_id);
    let budget = added + added / 10 + 2 * MIB;
    assert!(moved <= budget, "the variant pull moved {moved} bytes for {added} new (budget {budget})");
    assert_eq!(exported(&s3, &there, &variant_id, &dir.path().join("v.img")), fs::read(&variant).unwrap());
    assert_eq!(transfer(&s3, &there, "pull", &variant_id).1, 0, "a second variant pull moved bytes");
    assert_verify_clean(&s3, &there, "after the variant pull");
}

/// xorshift; the seed is printed in every failure message.
#[test]
fn push_and_pull_killed_at_random_points_leave_both_stores_valid() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let (base, _, _) = family(dir.path());
    let here = dir.path().join("here");
    let id = put(&s3, &here, &base);
    let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = common::Rng(seed);
    let spawn = |store: &Path, verb: &str, url: &str| {
        s3.diskc(store)
            .args([verb, "--json", &id, url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let timed = |store: &Path, verb: &str, url: &str| {
        let started = Instant::now();
        assert!(spawn(store, verb, url).wait().unwrap().success());
        started.elapsed()
    };
    // How long each takes here: a push to a prefix of its own, a pull into a store of its own.
    let mut push_full = timed(&here, "push", &s3.url());
    let mut pull_full = timed(&dir.path().join("probe"), "pull", &s3.url());

    for verb in ["push", "pull"] {
        let mut kills = 0;
        for attempt in 0..6 {
            // A push goes to a fresh prefix (the remote lacks everything); a pull into a
            // fresh store (the local store lacks everything).
            let (store, url, full) = match verb {
                "push" => (here.clone(), s3.url_at(&format!("push{attempt}")), push_full),
                _ => (dir.path().join(format!("pull{attempt}")), s3.url(), pull_full),
            };
            let delay = Duration::from_micros(rng.below(full.as_micros() as u64));
            let context =
                format!("seed {seed}, {verb} attempt {attempt}, killed after {delay:?} of {full:?}");
            let mut child = spawn(&store, verb, &url);
            std::thread::sleep(delay);
            child.kill().unwrap();
            if child.wait().unwrap().signal() == Some(libc::SIGKILL) {
                kills += 1;
            } else {
                // It ended before the kill (the reference was timed on a busier machine):
                // later kills come sooner.
                let full = if verb == "push" { &mut push_full } else { &mut pull_full };
                *full = (*full).min(delay);
            }
            assert_verify_clean(&s3, &store, &context);
            assert_eq!(transfer_at(&s3, &store, verb, &id, &url).0, id, "{context}: the re-run");
            assert_verify_clean(&s3, &store, &context);
            // The remote is valid: a fresh store pulls the image whole from it.
            let fresh = dir.path().join(format!("fresh-{verb}{attempt}"));
            transfer_at(&s3, &fresh, "pull", &id, &url);
            let out = dir.path().join("out.img");
            assert!(
                exported(&s3, &fresh, &id, &out) == fs::read(&base).unwrap(),
                "{context}: export differs"
            );
            assert_verify_clean(&s3, &fresh, &context);
        }
        assert!(kills >= 1, "seed {seed}: no {verb} was killed mid-way");
    }
}

/// A diskc command against the remote store itself (`--store URL`), cached in `cache`.
fn at_remote(s3: &S3Server, cache: &Path) -> Command {
    let mut cmd = s3.diskc(cache);
    cmd.env_remove("DISKC_STORE").env("XDG_CACHE_HOME", cache).args(["--store", &s3.url()]);
    cmd
}

fn packs_in(store: &Path) -> usize {
    fs::read_dir(store.join("packs")).map_or(0, |d| d.count())
}

#[test]
fn every_command_works_on_a_remote_store_through_the_local_cache() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let (base, variant, _) = family(dir.path());
    let cache = dir.path().join("cache");
    let local = cache.join("diskc");

    // Written into the remote store: it lands locally, then on the remote.
    let base_id = json_ok(at_remote(&s3, &cache).args(["store-put", "--json"]).arg(&base))["id"]
        .as_str()
        .unwrap()
        .to_string();
    common::run_ok(at_remote(&s3, &cache).args(["tag", &base_id, "team/base"]));

    // Another machine, with an empty cache, sees it by name.
    let other = dir.path().join("other");
    let listed = json_ok(at_remote(&s3, &other).args(["ls", "--json"]));
    let images = listed["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{listed}");
    assert_eq!(images[0]["id"], base_id.as_str());
    assert_eq!(images[0]["names"][0], "team/base:latest");
    let inspected = json_ok(at_remote(&s3, &other).args(["inspect", "--json", "team/base"]));
    assert_eq!(inspected["images"][0]["id"], base_id.as_str());
    assert_eq!(packs_in(&other.join("diskc")), 0, "ls and inspect fetched chunks");

    // export fetches the chunks once; the second export reads the cache only.
    let out = dir.path().join("out.img");
    common::run_ok(at_remote(&s3, &other).args(["export", "team/base", "-o"]).arg(&out));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&base).unwrap());
    let packs = packs_in(&other.join("diskc"));
    assert!(packs > 0);
    common::run_ok(at_remote(&s3, &other).args(["export", &base_id[..12], "-o"]).arg(&out));
    assert_eq!(packs_in(&other.join("diskc")), packs, "a second export fetched again");
    // The cached chunks are not images of the local store.
    let local_ls = json_ok(s3.diskc(&other.join("diskc")).args(["ls", "--json"]));
    assert_eq!(local_ls["images"].as_array().unwrap().len(), 0, "{local_ls}");

    // A variant put through another cache reaches the first machine too.
    let variant_id = json_ok(at_remote(&s3, &other).args(["store-put", "--json"]).arg(&variant))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = packs_in(&local);
    common::run_ok(at_remote(&s3, &cache).args(["export", &variant_id, "-o"]).arg(&out));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&variant).unwrap());
    assert_eq!(packs_in(&local), before + 1, "the variant's new chunks come as one pack");

    let verified = json_ok(at_remote(&s3, &cache).args(["verify", "--json"]));
    assert_eq!(verified["clean"], true, "{verified}");
    assert_eq!(verified["report"]["images_checked"], 2);

    // rm by name removes the image on the remote; the other one stays whole.
    let removed = json_ok(at_remote(&s3, &cache).args(["rm", "--json", "team/base"]));
    assert_eq!(removed["removed"][0]["deleted"], true, "{removed}");
    let listed = json_ok(at_remote(&s3, &other).args(["ls", "--json"]));
    assert_eq!(listed["images"].as_array().unwrap().len(), 1, "{listed}");
    let gone = at_remote(&s3, &other).args(["export", "team/base", "-o"]).arg(&out).output().unwrap();
    assert_eq!(gone.status.code(), Some(2), "{}", String::from_utf8_lossy(&gone.stderr));
}

#[test]
fn verify_of_a_remote_store_names_the_damaged_image() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let (base, variant, _) = family(dir.path());
    let cache = dir.path().join("cache");
    let base_id = put(&s3, &cache.join("diskc"), &base);
    common::run_ok(s3.diskc(&cache.join("diskc")).args(["tag", &base_id, "team/base"]));
    transfer(&s3, &cache.join("diskc"), "push", "team/base");
    let variant_id = put(&s3, &cache.join("diskc"), &variant);
    transfer(&s3, &cache.join("diskc"), "push", &variant_id);
    // The pack holding only the variant's own chunks (pushed second) is damaged on the server.
    let packs_dir = s3.root().join(BUCKET).join("team/packs");
    let mut packs: Vec<_> = fs::read_dir(&packs_dir).unwrap().map(|e| e.unwrap().path()).collect();
    packs.sort_by_key(|p| fs::metadata(p).unwrap().modified().unwrap());
    let mut bytes = fs::read(packs.last().unwrap()).unwrap();
    bytes[100] ^= 0xff;
    fs::write(packs.last().unwrap(), bytes).unwrap();

    let out = at_remote(&s3, &cache).args(["verify", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["report"]["damaged_images"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["id"], variant_id.as_str());
    assert!(!damaged[0]["damaged_chunks"].as_array().unwrap().is_empty(), "{report}");
}

/// A chain of images, each sharing 2 MiB with the one before and holding 4 MiB of its own:
/// pushing image i+1 relies on the pack the push of image i added, which removing image i
/// leaves mostly dead (gc copies the shared part out and condemns it).
fn chain(dir: &Path, len: usize) -> Vec<PathBuf> {
    let segments: Vec<Vec<u8>> = (0..=len).map(|i| bytes(100 + i as u64, 2 * MIB as usize)).collect();
    (0..len)
        .map(|i| {
            let path = dir.join(format!("chain{i}.img"));
            let own = bytes(200 + i as u64, 4 * MIB as usize);
            sparse_file(&path, 16 * MIB, &[(0, &segments[i]), (4 * MIB, &segments[i + 1]), (8 * MIB, &own)]);
            path
        })
        .collect()
}

#[test]
fn gc_of_a_remote_store_beside_pushes_loses_nothing() {
    let s3 = S3Server::start();
    let dir = common::tempdir();
    let images = chain(dir.path(), 8);
    let here = dir.path().join("here");
    let ids: Vec<String> = images.iter().map(|image| put(&s3, &here, image)).collect();
    let gc_cache = dir.path().join("gc");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (gc_runs, pushed) = std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            let (mut runs, mut condemned, mut removed) = (0, 0, 0);
            // Grace 0: every pack is old enough to condemn and every marker to act on, the
            // hardest case for the pushes beside it.
            // Once the pushes are done, runs until one finds nothing to do: a run rescues packs
            // a push came to rely on and condemns dead ones, the next condemns the dead part of
            // those rescued and removes the rest, and so on (how many runs that takes depends
            // on how the pushes and the runs interleaved). Ten quiet runs at most.
            let mut quiet_runs = 0;
            loop {
                let quiet = stop.load(std::sync::atomic::Ordering::SeqCst);
                let report = json_ok(at_remote(&s3, &gc_cache).args(["gc", "--json", "--grace", "0s"]));
                let count = |field: &str| report[field].as_u64().unwrap_or(0);
                condemned += count("packs_condemned");
                removed += count("packs_removed");
                runs += 1;
                if quiet {
                    quiet_runs += 1;
                    let idle = ["packs_condemned", "packs_removed", "packs_rescued", "packs_written"]
                        .iter()
                        .all(|field| count(field) == 0);
                    if idle || quiet_runs == 10 {
                        break;
                    }
                }
            }
            (runs, condemned, removed)
        });
        for (i, id) in ids.iter().enumerate() {
            transfer(&s3, &here, "push", id);
            // Odd images go at once: the pack their push added turns dead while the next
            // push, which shares those chunks, relies on it.
            if i % 2 == 1 && i + 1 < ids.len() {
                common::run_ok(at_remote(&s3, &gc_cache).args(["rm", id]));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (gc.join().unwrap(), ids.len())
    });
    let (runs, condemned, removed) = gc_runs;
    assert!(runs >= 2 && pushed == ids.len());
    assert!(
        condemned > 0 && removed > 0,
        "gc condemned {condemned} and removed {removed} packs in {runs} runs"
    );
    let verified = json_ok(at_remote(&s3, &dir.path().join("verify")).args(["verify", "--json"]));
    assert_eq!(verified["clean"], true, "{verified}");
    for (i, (id, image)) in ids.iter().zip(&images).enumerate() {
        let kept = i % 2 == 0 || i + 1 == ids.len();
        if !kept {
            continue;
        }
        let fresh = dir.path().join(format!("fresh{i}"));
        transfer(&s3, &fresh, "pull", id);
        let out = dir.path().join("out.img");
        assert!(exported(&s3, &fresh, id, &out) == fs::read(image).unwrap(), "image {i} differs after gc");
        assert_verify_clean(&s3, &fresh, &format!("image {i}"));
    }
    // Given time, gc leaves only live packs: every condemned one went.
    let condemned = s3.root().join(BUCKET).join("team/condemned");
    let left = fs::read_dir(&condemned).map_or(0, |d| d.count());
    assert_eq!(left, 0, "condemned packs left after gc runs found nothing more to do");
}
