//! `diskc build` runs Dockerfiles through BuildKit in the real Docker daemon; the images it
//! leaves are checked with Docker's own `image inspect` and `run`.

mod build_support;
mod common;

use build_support::{build_ok, fixture, inspect, sh_in};

fn path(p: std::path::PathBuf) -> String {
    p.to_str().unwrap().to_owned()
}

#[test]
fn several_stages_and_copy_from() {
    let tag = "diskc-test/build-multistage";
    let (id, progress) = build_ok(&[&path(fixture("multistage")), "-t", tag]);
    assert_eq!(inspect(tag)["Id"], id.as_str(), "the tag names the image diskc reported");
    assert!(progress.contains("[builder 2/2] RUN mkdir"), "plain progress names the stage:\n{progress}");
    let out = sh_in(
        tag,
        "cat /opt/artifact.txt; stat -c '%a' /opt/artifact.txt; cat /opt/nested/file; ls /never 2>&1 || true",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["built in the builder stage", "750", "nested"]);
    assert!(lines[3].contains("No such file"), "the unused stage leaked: {out}");
}

#[test]
fn build_args_and_target() {
    let tag = "diskc-test/build-args-target";
    build_ok(&[
        &path(fixture("args-target")),
        "-t",
        tag,
        "--build-arg",
        "FLAVOUR=spicy",
        "--target",
        "second",
    ]);
    let out = sh_in(tag, "cat /flavour /second; test -e /last && echo last-present || echo no-last");
    assert_eq!(out, "flavour=spicy\nsecond\nno-last\n");

    let tag = "diskc-test/build-args-default";
    build_ok(&[&path(fixture("args-target")), "-t", tag]);
    assert_eq!(sh_in(tag, "cat /flavour /last"), "flavour=plain\nlast\n");
}

#[test]
fn copy_chown() {
    let tag = "diskc-test/build-chown";
    build_ok(&[&path(fixture("chown")), "-t", tag]);
    let out = sh_in(
        tag,
        "stat -c '%n %u:%g' /data /data/top.txt /data/sub/below.txt /note.txt; cat /data/sub/below.txt",
    );
    assert_eq!(
        out,
        "/data 1234:5678\n/data/top.txt 1234:5678\n/data/sub/below.txt 1234:5678\n/note.txt 65534:65534\nbelow\n"
    );
}

#[test]
fn run_steps_delete_and_replace_files() {
    let tag = "diskc-test/build-delete-replace";
    build_ok(&[&path(fixture("delete-replace")), "-t", tag]);
    let out = sh_in(
        tag,
        "ls /work | tr '\\n' ' '; echo; cat /work/replace /work/dir/b /work/keep-link; \
         ls /work/dir; test -e /bin/vi && echo vi-present || echo no-vi",
    );
    assert_eq!(out, "dir keep keep-link replace \nnew\ntwo\nkeep\nb\nno-vi\n");
    let layers = inspect(tag)["RootFS"]["Layers"].as_array().unwrap().len();
    assert_eq!(layers, 4, "the base layer and one per RUN");
}

#[test]
fn image_config_env_workdir_user_entrypoint_cmd() {
    let tag = "diskc-test/build-config";
    build_ok(&[&path(fixture("config")), "-t", tag, "--label", "org.example.role=test"]);
    check_config_image(tag);
}

/// The classic builder, only on request, makes an image with the same config.
#[test]
fn classic_builder_on_request() {
    let tag = "diskc-test/build-config-classic";
    let (_, progress) = build_ok(&[
        &path(fixture("config")),
        "-t",
        tag,
        "--builder",
        "classic",
        "--label",
        "org.example.role=test",
    ]);
    assert!(progress.contains("Step 1/"), "the classic builder's own progress:\n{progress}");
    assert!(!progress.contains("#1 "), "no BuildKit progress with the classic builder:\n{progress}");
    check_config_image(tag);
}

fn check_config_image(tag: &str) {
    let config = &inspect(tag)["Config"];
    let env: Vec<&str> = config["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"APP_MODE=production"), "{env:?}");
    assert!(env.contains(&"GREETING=hello world"), "{env:?}");
    assert_eq!(config["WorkingDir"], "/srv/app");
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["Entrypoint"][0], "/bin/sh");
    assert_eq!(config["Entrypoint"][3], "entrypoint");
    assert_eq!(config["Cmd"], serde_json::json!(["cat", "marker"]));
    assert_eq!(config["Labels"]["org.example.role"], "test");
    let out = common::run_ok(std::process::Command::new(common::DOCKER).args(["run", "--rm", tag]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world from /srv/app as 65534\nready\n");
}

#[test]
fn a_second_build_hits_the_cache_and_gives_the_same_image() {
    let dir = common::tempdir();
    // A context of its own, so that no other test warms the cache for it first.
    let context = dir.path().join("ctx");
    std::fs::create_dir(&context).unwrap();
    let nonce = format!("{:?}", std::time::SystemTime::now());
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM diskc-test/busybox:latest\nCOPY stamp /stamp\nRUN echo '{nonce}' > /nonce && sleep 1\n"
        ),
    )
    .unwrap();
    std::fs::write(context.join("stamp"), &nonce).unwrap();
    let tag = "diskc-test/build-cache";
    let ours = |name: &str| name.contains("COPY stamp") || name.contains("RUN echo");
    let (first, progress) = build_ok(&[&path(context.clone()), "-t", tag]);
    assert!(
        !cached_steps(&progress).iter().any(|s| ours(s)),
        "a fresh context must not be cached:\n{progress}"
    );
    let (second, progress) = build_ok(&[&path(context.clone()), "-t", tag]);
    assert_eq!(first, second);
    assert_eq!(
        cached_steps(&progress).iter().filter(|s| ours(s)).count(),
        2,
        "COPY and RUN must come from the cache:\n{progress}"
    );
    let (third, progress) = build_ok(&[&path(context), "-t", tag, "--no-cache"]);
    assert!(!cached_steps(&progress).iter().any(|s| ours(s)), "--no-cache still used the cache:\n{progress}");
    assert_ne!(third, first, "--no-cache reran the steps, so the image has new layers");
}

/// The names of the steps that plain progress (`#N NAME` ... `#N CACHED`) shows as cached.
fn cached_steps(progress: &str) -> Vec<String> {
    let mut names = std::collections::HashMap::new();
    let mut cached = Vec::new();
    for line in progress.lines() {
        let Some((number, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else { continue };
        if rest == "CACHED" {
            cached.extend(names.get(number).cloned());
        } else {
            names.entry(number.to_owned()).or_insert_with(|| rest.to_owned());
        }
    }
    cached
}

#[test]
fn quiet_prints_only_the_stored_image_id() {
    common::ensure_base_images(&["busybox"]);
    let out = common::run_ok(common::diskc().args(["build", "--quiet", &path(fixture("multistage"))]));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.stderr.is_empty(), "--quiet printed progress: {}", String::from_utf8_lossy(&out.stderr));
    let id = stdout.trim();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) && stdout.lines().count() == 1,
        "{stdout}"
    );
}
