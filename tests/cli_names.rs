//! Names and listings as docker users expect them, against the real binary: `hello` means
//! `hello:latest`, `rm` untags like `docker rmi`, several arguments, the global `--store`,
//! `ls -q | --format | --filter`, `prune`, and `inspect`.

mod common;

use std::fs;
use std::path::Path;

use serde_json::Value;

fn diskc_in(store: &Path, args: &[&str]) -> String {
    let out = common::run_ok(common::diskc().arg("--store").arg(store).args(args));
    String::from_utf8(out.stdout).unwrap()
}

fn put(store: &Path, seed: u8) -> String {
    let rootfs = store.with_extension(format!("rootfs{seed}"));
    fs::write(&rootfs, vec![seed; 200_000 + usize::from(seed)]).unwrap();
    diskc_in(store, &["store-put", rootfs.to_str().unwrap()]).trim().to_string()
}

#[test]
fn a_name_without_a_tag_means_latest_everywhere() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let id = put(&store, 1);
    // tag, several names at once; `hello` is stored as hello:latest.
    diskc_in(&store, &["tag", &id, "hello", "hello:v2"]);
    let names = diskc_in(&store, &["ls", "--format", "names"]);
    assert_eq!(names.trim(), "hello:latest,hello:v2");
    // Both spellings find it in inspect; `ls --filter name=hello` matches hello:latest.
    for spelling in ["hello", "hello:latest"] {
        assert!(diskc_in(&store, &["inspect", spelling]).contains(&id), "{spelling}");
    }
    assert_eq!(diskc_in(&store, &["ls", "-q", "--filter", "name=hello"]).trim(), id);
    assert_eq!(diskc_in(&store, &["ls", "-q", "--filter", "name=nothello"]).trim(), "");
}

#[test]
fn rm_of_a_name_untags_and_removes_the_image_with_its_last_name() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let id = put(&store, 2);
    diskc_in(&store, &["tag", &id, "a", "b"]);
    assert_eq!(diskc_in(&store, &["rm", "a"]), "untagged: a:latest\n");
    assert_eq!(diskc_in(&store, &["ls", "-q"]).trim(), id, "the image went with a name left");
    assert_eq!(diskc_in(&store, &["rm", "b:latest"]), format!("untagged: b:latest\ndeleted: {id}\n"));
    assert_eq!(diskc_in(&store, &["ls", "-q"]), "");
}

#[test]
fn rm_takes_several_images_and_an_id_removes_every_name() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let (one, two) = (put(&store, 3), put(&store, 4));
    diskc_in(&store, &["tag", &one, "x", "y"]);
    let out: Value = serde_json::from_str(&diskc_in(&store, &["rm", "--json", &one[..12], &two])).unwrap();
    assert_eq!(out["removed"][0]["untagged"], serde_json::json!(["x:latest", "y:latest"]));
    assert_eq!(out["removed"][0]["deleted"], true);
    assert_eq!(out["removed"][1]["id"], two.as_str());
    assert_eq!(diskc_in(&store, &["ls", "-q"]), "");
}

#[test]
fn store_is_a_global_flag_and_the_subcommand_flag_wins() {
    let dir = common::tempdir();
    let (store, other) = (dir.path().join("store"), dir.path().join("other"));
    let id = put(&store, 5);
    let out = common::run_ok(common::diskc().arg("--store").arg(&store).args(["ls", "-q"]));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);
    fs::create_dir(&other).unwrap();
    let out =
        common::run_ok(common::diskc().arg("--store").arg(&store).args(["ls", "-q", "--store"]).arg(&other));
    assert!(out.stdout.is_empty());
}

#[test]
fn ls_formats_and_filters() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let (old, new) = (put(&store, 6), put(&store, 7));
    diskc_in(&store, &["tag", &new, "web:1"]);
    let rows = diskc_in(&store, &["ls", "--format", "short_id,names,size"]);
    assert!(rows.contains(&format!("{}\tweb:1\t200007\n", &new[..12])), "{rows}");
    assert!(rows.contains(&format!("{}\t\t200006\n", &old[..12])), "{rows}");
    let json: Value = serde_json::from_str(&diskc_in(&store, &["ls", "--format", "json"])).unwrap();
    assert_eq!(json["images"].as_array().unwrap().len(), 2);
    assert_eq!(diskc_in(&store, &["ls", "-q", "--filter", "dangling=true"]).trim(), old);
    assert_eq!(diskc_in(&store, &["ls", "-q", "--filter", "name=web*,since=1h"]).trim(), new);
    let bad =
        common::diskc().arg("--store").arg(&store).args(["ls", "--format", "{{.ID}}"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("short_id"));
}

#[test]
fn prune_removes_unnamed_images_and_all_with_all() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let (unnamed, named) = (put(&store, 8), put(&store, 9));
    diskc_in(&store, &["tag", &named, "keep"]);
    // Nothing is a week old yet.
    assert_eq!(diskc_in(&store, &["prune", "--until", "7d", "-q"]), "");
    assert_eq!(diskc_in(&store, &["ls", "-q"]).lines().count(), 2);
    let out: Value = serde_json::from_str(&diskc_in(&store, &["prune", "--json"])).unwrap();
    assert_eq!(out["removed"][0]["id"], unnamed.as_str());
    assert!(out["gc"]["chunks_removed"].as_u64().unwrap() >= 1, "{out}");
    assert_eq!(diskc_in(&store, &["ls", "-q"]).trim(), named);
    diskc_in(&store, &["prune", "--all"]);
    assert_eq!(diskc_in(&store, &["ls", "-q"]), "");
}

#[test]
fn inspect_prints_a_summary_and_json_the_full_record_for_each_image() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let (one, two) = (put(&store, 10), put(&store, 11));
    diskc_in(&store, &["tag", &one, "app:v1"]);
    let human = diskc_in(&store, &["inspect", "app:v1", &two[..8]]);
    for field in ["id:", "names:       app:v1", "created:", "rootfs:", "chunks:", "boot:        none"] {
        assert!(human.contains(field), "{field} missing:\n{human}");
    }
    assert!(human.contains(&one) && human.contains(&two), "{human}");
    let json: Value =
        serde_json::from_str(&diskc_in(&store, &["inspect", "--json", "app:v1", &two])).unwrap();
    assert_eq!(json["images"][0]["names"], serde_json::json!(["app:v1"]));
    assert_eq!(json["images"][1]["manifest"]["rootfs"]["size"], 200_011);
}
