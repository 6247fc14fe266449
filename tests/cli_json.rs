//! Every command's `--json` against the schema `docs/json.md` documents: one object on
//! stdout with `schema_version` and `command` and the documented fields; errors as one
//! object on stderr with `error` and `exit_code`.

mod boot_support;
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

/// The `command: field, field` lines of docs/json.md's fenced block.
fn documented() -> BTreeMap<String, Vec<String>> {
    let doc = fs::read_to_string(common::repo_root().join("docs/json.md")).unwrap();
    let block = doc.split("```text\n").nth(1).unwrap().split("```").next().unwrap();
    block
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(command, fields)| (command.to_string(), fields.split(", ").map(String::from).collect()))
        .collect()
}

fn json(store: &Path, args: &[&str]) -> Value {
    let out = common::run_ok(common::diskc().arg("--json").arg("--store").arg(store).args(args));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "not one line: {text}");
    serde_json::from_str(&text).unwrap()
}

/// `object` has the fields the schema lists under `key`.
fn check(schema: &BTreeMap<String, Vec<String>>, key: &str, object: &Value) {
    let fields = schema.get(key).unwrap_or_else(|| panic!("docs/json.md does not document {key}"));
    for field in fields {
        assert!(object.get(field).is_some(), "{key}: no field {field} in {object}");
    }
}

#[test]
fn every_command_prints_the_documented_json() {
    common::ensure_base_images(&["busybox"]);
    let schema = documented();
    let dir = common::tempdir();
    let store = dir.path().join("store");
    let rootfs = dir.path().join("rootfs");
    fs::write(&rootfs, vec![3u8; 100_000]).unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let (image, man) = (dir.path().join("image"), dir.path().join("man"));
    let mut outputs: Vec<(&str, Value)> = Vec::new();
    let put = json(&store, &["store-put", rootfs.to_str().unwrap()]);
    let id = put["id"].as_str().unwrap().to_string();
    outputs.push(("store-put", put));
    outputs.push(("tag", json(&store, &["tag", &id, "app"])));
    let remote = format!("file://{}", dir.path().join("remote").display());
    fs::create_dir(dir.path().join("remote")).unwrap();
    outputs.push(("push", json(&store, &["push", "app", &remote])));
    outputs.push(("pull", json(&dir.path().join("other"), &["pull", "app", &remote])));
    outputs.push(("ls", json(&store, &["ls"])));
    outputs.push(("inspect", json(&store, &["inspect", "app"])));
    outputs.push(("export", json(&store, &["export", "app", "-o", image.to_str().unwrap()])));
    outputs.push(("verify", json(&store, &["verify"])));
    outputs.push(("gc", json(&store, &["gc"])));
    outputs.push(("rm", json(&store, &["rm", "app"])));
    outputs.push(("prune", json(&store, &["prune"])));
    outputs.push(("mkfs", json(&store, &["mkfs", src.to_str().unwrap(), "-o", image.to_str().unwrap()])));
    outputs.push(("man", json(&store, &["man", man.to_str().unwrap()])));
    let convert = json(&store, &["convert", &format!("docker-daemon:{}", common::BUSYBOX_IMAGE)]);
    outputs.push(("convert", convert));
    for (command, object) in &outputs {
        assert_eq!(object["schema_version"], 1, "{command}: {object}");
        assert_eq!(object["command"], *command, "{object}");
        check(&schema, command, object);
        for (key, _) in schema.iter().filter(|(k, _)| k.starts_with(&format!("{command}."))) {
            let list = key.split_once('.').unwrap().1.trim_end_matches("[]");
            let rows = object[list].as_array().unwrap_or_else(|| panic!("{command}: {list} not a list"));
            assert!(!rows.is_empty(), "{command}: {list} is empty, nothing checked");
            rows.iter().for_each(|row| check(&schema, key, row));
        }
    }
    // Timings are rounded to milliseconds.
    let timings = &outputs.last().unwrap().1["timings"];
    for (phase, seconds) in timings.as_object().unwrap() {
        let ms = seconds.as_f64().unwrap() * 1000.0;
        assert!((ms - ms.round()).abs() < 1e-6, "{phase}: {seconds}");
    }
    // Every documented command but build (which needs a Dockerfile build), boot and serve
    // (below), and the build farm's (which tests/farm.rs checks against a NATS server) ran
    // above, and build documents convert's fields and its own.
    let ran: Vec<&str> = outputs.iter().map(|(c, _)| *c).collect();
    let elsewhere = |k: &str| ["build", "boot", "serve", "worker"].contains(&k) || k.contains("farm");
    for command in schema.keys().filter(|k| !k.contains('.') && !elsewhere(k)) {
        assert!(ran.contains(&command.as_str()), "{command} documented but not checked");
    }
    assert!(schema["convert"].iter().all(|f| schema["build"].contains(f)));
}

#[test]
fn with_json_an_error_is_one_object_on_stderr() {
    let dir = common::tempdir();
    let out =
        common::diskc().args(["--json", "ls", "--store"]).arg(dir.path().join("absent")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let error: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["exit_code"], 2);
    assert_eq!(error["kind"], "bad_input");
    assert_eq!(error["schema_version"], 1);
    assert!(error["error"].as_str().unwrap().contains("no store at"), "{error}");
    let usage = common::diskc().args(["--json", "ls", "--no-such-flag"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&usage.stderr).unwrap();
    assert_eq!(error["exit_code"], 1);
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = common::run_ok(common::diskc().args(["completion", shell]));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("prune") && script.contains("inspect"), "{shell}: {script}");
    }
    let dir = common::tempdir();
    common::run_ok(common::diskc().arg("man").arg(dir.path()));
    let page = fs::read_to_string(dir.path().join("diskc-ls.1")).unwrap();
    assert!(page.contains("\\-\\-filter"), "{page}");
    assert!(dir.path().join("diskc.1").exists());
    assert!(!dir.path().join("diskc-store-put.1").exists(), "a hidden command got a page");
}

/// `boot --json` (a guest under QEMU) and `serve --json` (an NBD server, read by qemu-img and
/// stopped with SIGTERM) print the documented objects.
#[test]
fn boot_and_serve_print_the_documented_json() {
    common::ensure_base_images(&["busybox"]);
    let schema = documented();
    let id = boot_support::Bootable::convert(common::BUSYBOX_IMAGE, boot_support::Outdir::Temporary).id;
    let out = boot_support::boot(&id, &["--json", "--", "sh", "-c", "echo out; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "not one line: {text}");
    let boot: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&boot["command"], &boot["schema_version"], &boot["exit_code"]),
        (&"boot".into(), &1.into(), &3.into())
    );
    check(&schema, "boot", &boot);
    for (phase, seconds) in boot["timings"].as_object().unwrap() {
        let ms = seconds.as_f64().unwrap() * 1000.0;
        assert!((ms - ms.round()).abs() < 1e-6, "{phase}: {seconds}");
    }

    let dir = common::tempdir();
    let socket = dir.path().join("nbd.sock");
    let mut server = common::diskc()
        .args(["--json", "serve", &id, "--nbd", &format!("unix:{}", socket.display())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let read = std::process::Command::new("qemu-img")
        .args(["info", &format!("nbd+unix:///?socket={}", socket.display())])
        .output()
        .expect("qemu-img (qemu-utils) is required");
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    server.stdin.take();
    let out = server.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let serve: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&serve["command"], &serve["schema_version"]), (&"serve".into(), &1.into()));
    check(&schema, "serve", &serve);
    assert!(serve["clients"].as_u64().unwrap() >= 1, "{serve}");
}
