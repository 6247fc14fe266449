//! The store commands as a user runs them: `ls`, `inspect`, `export`, `tag`, `rm`, `gc`,
//! their `--json` output, exit codes, and where the store is found.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn put(store: &Path, rootfs: &Path, boot: &[(&str, &Path)]) -> String {
    let mut cmd = common::diskc();
    cmd.args(["store-put", "--json", "--store"]).arg(store).arg(rootfs);
    for (flag, path) in boot {
        cmd.arg(flag).arg(path);
    }
    json_of(&common::run_ok(&mut cmd))["id"].as_str().unwrap().to_string()
}

#[test]
fn store_commands_list_inspect_export_tag_and_remove() {
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let (rootfs, kernel, other) =
        (dir.path().join("rootfs"), dir.path().join("kernel"), dir.path().join("other"));
    fs::write(&rootfs, (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    fs::write(&kernel, b"not really a kernel").unwrap();
    fs::write(&other, b"another image").unwrap();
    let id = put(&store, &rootfs, &[("--kernel", &kernel)]);
    let other_id = put(&store, &other, &[]);
    assert_eq!(id.len(), 64);

    let tagged = json_of(&common::run_ok(
        common::diskc().args(["tag", "--json", "--store"]).arg(&store).args([&id[..10], "app:v1"]),
    ));
    assert_eq!(tagged["id"], id.as_str());

    let listed = json_of(&common::run_ok(common::diskc().args(["ls", "--json", "--store"]).arg(&store)));
    let images = listed["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let row = images.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["names"], serde_json::json!(["app:v1"]));
    assert_eq!(row["size"], 3_000_000);
    let stored = row["stored_size"].as_u64().unwrap();
    assert!(stored > 0 && stored < 3_000_000, "stored_size {stored}");
    assert!(row["created"].as_str().unwrap().ends_with('Z'));
    let human = String::from_utf8(common::run_ok(common::diskc().args(["ls", "--store"]).arg(&store)).stdout)
        .unwrap();
    assert!(
        human.contains(&id[..12]) && human.contains("app:v1") && human.contains(&other_id[..12]),
        "{human}"
    );

    let inspected = json_of(&common::run_ok(
        common::diskc().args(["inspect", "--json", "--store"]).arg(&store).arg("app:v1"),
    ));
    let inspected = &inspected["images"][0];
    assert_eq!(inspected["id"], id.as_str());
    assert_eq!(inspected["manifest"]["rootfs"]["size"], 3_000_000);
    assert_eq!(inspected["manifest"]["files"]["kernel"]["size"], 19);

    let (out, kernel_out) = (dir.path().join("out.img"), dir.path().join("vmlinuz"));
    common::run_ok(
        common::diskc()
            .args(["export", "--store"])
            .arg(&store)
            .args([&id[..8], "-o"])
            .arg(&out)
            .arg("--kernel-out")
            .arg(&kernel_out),
    );
    assert_eq!(fs::read(&out).unwrap(), fs::read(&rootfs).unwrap());
    assert_eq!(fs::read(&kernel_out).unwrap(), fs::read(&kernel).unwrap());
    let no_initrd = common::diskc()
        .args(["export", "--store"])
        .arg(&store)
        .args([&id, "-o"])
        .arg(&out)
        .arg("--initrd-out")
        .arg(dir.path().join("initrd"))
        .output()
        .unwrap();
    assert_eq!(no_initrd.status.code(), Some(2), "{}", String::from_utf8_lossy(&no_initrd.stderr));

    let removed =
        json_of(&common::run_ok(common::diskc().args(["rm", "--json", "--store"]).arg(&store).arg("app:v1")));
    assert_eq!(removed["removed"][0]["id"], id.as_str());
    assert_eq!(removed["removed"][0]["untagged"], serde_json::json!(["app:v1"]));
    assert_eq!(removed["removed"][0]["deleted"], true);
    let gone = common::diskc().args(["inspect", "--store"]).arg(&store).arg(&id).output().unwrap();
    assert_eq!(gone.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.starts_with("diskc: error:") && stderr.contains(&id), "{stderr}");

    let gc = json_of(&common::run_ok(common::diskc().args(["gc", "--json", "--store"]).arg(&store)));
    assert!(gc["chunks_removed"].as_u64().unwrap() >= 2, "{gc}");
    let verify = json_of(&common::run_ok(common::diskc().args(["verify", "--json", "--store"]).arg(&store)));
    assert_eq!(verify["clean"], true);
    assert_eq!(verify["report"]["images_checked"], 1);
}

#[test]
fn store_is_found_through_diskc_store_then_xdg_cache_home() {
    let dir = common::tempdir();
    let file = dir.path().join("f");
    fs::write(&file, b"content").unwrap();
    let id = put(&dir.path().join("explicit"), &file, &[]);

    let env_store = dir.path().join("from-env");
    common::run_ok(common::diskc().env("DISKC_STORE", &env_store).args(["store-put"]).arg(&file));
    assert!(env_store.join("images").join(format!("{id}.json.zst")).exists());

    let xdg = dir.path().join("xdg");
    common::run_ok(
        common::diskc().env_remove("DISKC_STORE").env("XDG_CACHE_HOME", &xdg).args(["store-put"]).arg(&file),
    );
    assert!(xdg.join("diskc/images").join(format!("{id}.json.zst")).exists());
}

#[test]
fn store_put_is_hidden_from_help() {
    let help = String::from_utf8(common::run_ok(common::diskc().arg("--help")).stdout).unwrap();
    for command in ["ls", "inspect", "export", "tag", "rm", "gc", "verify"] {
        assert!(help.contains(&format!("  {command}")), "{command} missing from:\n{help}");
    }
    assert!(!help.contains("store-put"), "{help}");
}
