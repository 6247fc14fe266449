//! Boots busybox-based images under QEMU (TCG here) with `diskc boot` and checks, from the
//! program's output, that the image's program ran as Docker would have run it, that stdin
//! reaches it, and that `diskc boot` reports how it ended.

mod boot_support;
mod common;

use std::sync::OnceLock;

use boot_support::*;

const APP_IMAGE: &str = "diskc-test/boot-busybox-app:latest";

/// ENV, WORKDIR and `USER 1000:1000` reach the program; CMD prints what it sees.
const APP_DOCKERFILE: &str = r#"FROM diskc-test/busybox:latest
ENV GREETING="hello from diskc"
RUN mkdir -p /srv/app && chown 1000:1000 /srv/app
WORKDIR /srv/app
USER 1000:1000
CMD ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); echo pwd=$(pwd); echo greeting=$GREETING; echo home=$HOME"]
"#;

/// Built once per test binary by `diskc build`; the tests only boot it.
fn app_image() -> &'static Bootable {
    static IMAGE: OnceLock<Bootable> = OnceLock::new();
    IMAGE.get_or_init(|| {
        ensure_base_images(&["busybox"]);
        Bootable::build(APP_IMAGE, APP_DOCKERFILE, Outdir::Shared("busybox-app"))
    })
}

/// The plain base image, by `diskc convert`: runs as root, no CMD of its own (every boot
/// gives `-- CMD`).
fn base_image() -> &'static Bootable {
    static IMAGE: OnceLock<Bootable> = OnceLock::new();
    IMAGE.get_or_init(|| {
        ensure_base_images(&["busybox"]);
        Bootable::convert(BUSYBOX_IMAGE, Outdir::Shared("busybox-base"))
    })
}

fn console(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn runs_cmd_with_env_workdir_and_user() {
    let out = app_image().boot(&[]);
    assert_exit(&out, 0);
    assert_eq!(
        program_lines(&out),
        ["uid=1000 gid=1000", "pwd=/srv/app", "greeting=hello from diskc", "home=/"],
        "{}",
        console(&out)
    );
    // Only the program's output is on stdout; its stderr is apart.
    assert_eq!(
        console(&out),
        "uid=1000 gid=1000\npwd=/srv/app\ngreeting=hello from diskc\nhome=/\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = app_image().boot(&["--", "sh", "-c", "echo out; echo err >&2"]);
    assert_exit(&out, 0);
    assert_eq!(console(&out), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).lines().any(|l| l == "err"), "{out:?}");
}

#[test]
fn dash_dash_cmd_replaces_cmd_and_keeps_arguments_intact() {
    let image = app_image();
    let out = image.boot(&["--", "printf", "<%s>\\n", "two  spaces", "$HOME", "it's \"quoted\"", ""]);
    assert_exit(&out, 0);
    // Still the image's user and WORKDIR: only CMD is replaced.
    assert_eq!(
        program_lines(&out),
        ["<two  spaces>", "<$HOME>", "<it's \"quoted\">", "<>"],
        "{}",
        console(&out)
    );

    let out = image.boot(&["--", "sh", "-c", "echo guest says bye; exit 7"]);
    assert_exit(&out, 7);
    assert_eq!(program_lines(&out), ["guest says bye"]);
}

#[test]
fn exit_status_and_signal_death_reach_the_host() {
    let image = base_image();
    let out = image.boot(&["--", "sh", "-c", "exit 7"]);
    assert_exit(&out, 7);
    // Killed by SIGTERM (15): 128 + 15, as a shell reports it.
    let out = image.boot(&["--", "sh", "-c", "kill -TERM $$; sleep 5"]);
    assert_exit(&out, 143);
    // A program that is not there: 127, like Docker.
    let out = image.boot(&["--", "/no/such/program"]);
    assert_exit(&out, 127);
}

#[test]
fn orphans_are_reaped() {
    // Each subshell forks a child and exits at once: the children are orphans, reparented
    // to PID 1. After they exit, only PID 1 can reap them; count what is left as zombies.
    let script = "for i in 1 2 3 4 5; do (sleep 0.2 &) ; done; sleep 2; \
                  echo zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)";
    let out = base_image().boot(&["--", "sh", "-c", script]);
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out), ["zombies=0"], "{}", console(&out));
}

#[test]
fn read_only_root_refuses_writes() {
    let image = base_image();
    let probe = "if touch /probe 2>/dev/null; then echo write=ok; else echo write=failed; fi; \
                 grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1";
    let out = image.boot(&["--read-only", "--", "sh", "-c", probe]);
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out), ["write=failed", "ro"], "{}", console(&out));
    // The same probe on a normal boot writes (to a throwaway overlay), so the check can fail.
    let out = image.boot(&["--", "sh", "-c", probe]);
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out), ["write=ok", "rw"], "{}", console(&out));
}

#[test]
fn timeout_kills_a_hung_guest_and_exits_124() {
    let out = base_image().boot(&["--timeout", "5", "--", "sleep", "60"]);
    assert_exit(&out, 124);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("diskc: the guest did not finish within 5 s; the VM was killed"), "{stderr}");
}

#[test]
fn stdin_reaches_the_program_and_its_end_too() {
    use std::io::Write;
    let mut child = boot_command(&base_image().outdir, &["-i", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(console(&out), "hello\n");
}

/// Regression: the exit status was read from the console, so a program could fake it and
/// lose the output after its fake line.
#[test]
fn a_faked_status_line_neither_ends_the_boot_nor_sets_the_status() {
    let script = "echo 'diskc-init: exit status 0'; echo after; exit 5";
    let out = base_image().boot(&["--", "sh", "-c", script]);
    assert_exit(&out, 5);
    assert_eq!(console(&out), "diskc-init: exit status 0\nafter\n");
}

#[test]
fn sigterm_to_init_reaches_the_program() {
    // PID 1 forwards SIGTERM to the program, whose trap decides the exit status.
    let script = "trap 'echo got TERM; exit 42' TERM; kill -TERM 1; sleep 30 & wait";
    let out = base_image().boot(&["--", "sh", "-c", script]);
    assert_exit(&out, 42);
    assert_eq!(program_lines(&out), ["got TERM"], "{}", console(&out));
}
