//! `diskc boot`'s `docker run` flags do what `docker run` does with the same flags on the
//! same image: each test runs one command both ways and compares what the program printed
//! and its exit status.

mod boot_support;
mod common;

use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;

use boot_support::*;

const IMAGE: &str = "diskc-test/boot-flags:latest";

/// A user with a group membership, ENV, WORKDIR and a CMD for the flags to override.
const DOCKERFILE: &str = r#"FROM diskc-test/busybox:latest
RUN echo 'alice:x:1234:1234::/home/alice:/bin/sh' >> /etc/passwd \
 && echo 'alice:x:1234:' >> /etc/group && echo 'audio:x:29:alice' >> /etc/group \
 && mkdir -p /srv/app
ENV GREETING=image
WORKDIR /srv/app
CMD ["echo", "cmd"]
"#;

fn image() -> &'static Bootable {
    static IMAGE_DIR: OnceLock<Bootable> = OnceLock::new();
    IMAGE_DIR.get_or_init(|| {
        ensure_base_images(&["busybox"]);
        Bootable::build(IMAGE, DOCKERFILE, Outdir::Shared("busybox-flags"))
    })
}

/// `docker run FLAGS IMAGE CMD...` and `diskc boot IMAGE FLAGS -- CMD...` (both with the
/// same hostname and `FROM_HOST` in their environment) print the same and exit the same;
/// returns diskc's output.
fn same_as_docker(flags: &[&str], cmd: &[&str]) -> Output {
    let image = image();
    let mut docker_args = vec!["--hostname", "flags"];
    docker_args.extend(flags);
    docker_args.push(IMAGE);
    docker_args.extend(cmd);
    let mut docker = std::process::Command::new(DOCKER);
    docker.env("FROM_HOST", "from the host").args(["run", "--rm"]).args(&docker_args);
    let docker = docker.output().unwrap();

    let mut diskc_args = vec!["--hostname", "flags"];
    diskc_args.extend(flags);
    if !cmd.is_empty() {
        diskc_args.push("--");
        diskc_args.extend(cmd);
    }
    let diskc = boot_command(&image.outdir, &diskc_args).env("FROM_HOST", "from the host").output().unwrap();
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        (text(&diskc), diskc.status.code()),
        (text(&docker), docker.status.code()),
        "diskc (left) and docker (right) differ for {flags:?} {cmd:?}\ndiskc stderr: {}\ndocker stderr: {}",
        String::from_utf8_lossy(&diskc.stderr),
        String::from_utf8_lossy(&docker.stderr)
    );
    diskc
}

fn sorted_lines(out: &Output) -> Vec<String> {
    let mut lines = program_lines(out);
    lines.sort();
    lines
}

#[test]
fn env_flags_do_what_docker_does() {
    let dir = tempdir();
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# read by both\nFILE=1\nGREETING=from the file\nQUOTED=\"kept\"\nFROM_HOST\n")
        .unwrap();
    let env_file = env_file.to_str().unwrap();
    let out = same_as_docker(&["--env-file", env_file, "-e", "GREETING=flag", "-e", "EMPTY="], &["env"]);
    // Compared whole above; these are the lines that show each rule.
    let lines = sorted_lines(&out);
    for want in
        ["FILE=1", "GREETING=flag", "QUOTED=\"kept\"", "FROM_HOST=from the host", "EMPTY=", "HOSTNAME=flags"]
    {
        assert!(lines.contains(&want.to_string()), "{want} missing from {lines:?}");
    }
}

#[test]
fn entrypoint_flag_replaces_the_entrypoint_and_drops_cmd() {
    // The image's CMD (`echo cmd`) would print "echo cmd" after the new ENTRYPOINT.
    let out = same_as_docker(&["--entrypoint", "/bin/echo"], &[]);
    assert_eq!(program_lines(&out), [""]);
}

#[test]
fn workdir_flag_makes_and_enters_the_directory() {
    let out = same_as_docker(&["-w", "/srv/new/dir"], &["sh", "-c", "pwd; stat -c '%U %a' ."]);
    assert_eq!(program_lines(&out), ["/srv/new/dir", "root 755"]);
}

#[test]
fn user_flag_resolves_names_groups_and_numbers() {
    let out = same_as_docker(&["-u", "alice"], &["sh", "-c", "id; echo $HOME"]);
    assert_eq!(
        program_lines(&out),
        ["uid=1234(alice) gid=1234(alice) groups=29(audio),1234(alice)", "/home/alice"]
    );
    let out = same_as_docker(&["-u", "4321:4321"], &["id"]);
    assert_eq!(program_lines(&out), ["uid=4321 gid=4321 groups=4321"]);
}

/// A host directory with one file, fresh for each run.
fn host_dir(root: &Path, name: &str) -> String {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("in"), "from the host\n").unwrap();
    dir.to_str().unwrap().to_string()
}

/// Runs `cmd` with `-v HOSTDIR:/data[MODE]`, a fresh host directory for each of docker and
/// diskc, compares them, and returns the two directories and diskc's output.
fn same_as_docker_with_volume(mode: &str, cmd: &[&str]) -> (tempfile::TempDir, [String; 2], Output) {
    let root = tempdir();
    let dirs = [host_dir(root.path(), "docker"), host_dir(root.path(), "diskc")];
    let image = image();
    let docker = docker_run(
        &["-v", &format!("{}:/data{mode}", dirs[0]), IMAGE].iter().chain(cmd).copied().collect::<Vec<_>>(),
    );
    let mut args = vec!["-v".to_string(), format!("{}:/data{mode}", dirs[1]), "--".into()];
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let diskc = boot(&image.outdir, &args);
    assert_exit(&diskc, docker.status.code().unwrap());
    assert_eq!(
        String::from_utf8_lossy(&diskc.stdout),
        String::from_utf8_lossy(&docker.stdout),
        "diskc (left) and docker (right) differ; diskc stderr: {}",
        String::from_utf8_lossy(&diskc.stderr)
    );
    (root, dirs, diskc)
}

#[test]
fn volume_flag_shares_a_host_directory_both_ways() {
    let (_root, dirs, out) =
        same_as_docker_with_volume("", &["sh", "-c", "cat /data/in; echo written > /data/out; ls /data"]);
    assert_eq!(program_lines(&out), ["from the host", "in", "out"]);
    for dir in &dirs {
        assert_eq!(std::fs::read_to_string(Path::new(dir).join("out")).unwrap(), "written\n", "{dir}");
    }
}

#[test]
fn read_only_volume_refuses_writes() {
    let (_root, dirs, out) =
        same_as_docker_with_volume(":ro", &["sh", "-c", "cat /data/in; touch /data/new 2>&1; echo rc=$?"]);
    assert_eq!(program_lines(&out), ["from the host", "touch: /data/new: Read-only file system", "rc=1"]);
    for dir in &dirs {
        assert!(!Path::new(dir).join("new").exists(), "{dir}");
    }
}
