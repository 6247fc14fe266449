//! Boots a Debian-based image (debootstrap'd base, see scripts/make-base-images.sh, plus
//! kmod) whose CMD is a shell script run as a user given by name, created with useradd; and
//! loads kernel modules in it from the boot kernel's modules disk.

mod boot_support;
mod common;

use std::sync::OnceLock;

use boot_support::*;

const IMAGE: &str = "diskc-test/boot-debian-app:latest";

const DOCKERFILE: &str = r#"FROM diskc-test/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends kmod && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1234 --groups audio,video alice
RUN printf '%s\n' '#!/bin/bash' 'set -eu' \
      'echo "user=$(whoami) uid=$(id -u) gid=$(id -g) groups=$(id -G)"' \
      'echo "home=$HOME pwd=$(pwd)"' \
      'echo "bash=${BASH_VERSINFO[0]} mode=${MODE}"' \
      'echo "hostname=$(cat /proc/sys/kernel/hostname) lo=$(cat /sys/class/net/lo/operstate)"' \
      > /usr/local/bin/hello.sh && chmod 755 /usr/local/bin/hello.sh
ENV MODE=debian
USER alice
WORKDIR /home/alice
CMD ["hello.sh"]
"#;

/// Built once per test binary by `diskc build`.
fn image() -> &'static Bootable {
    static IMAGE_DIR: OnceLock<Bootable> = OnceLock::new();
    IMAGE_DIR.get_or_init(|| {
        ensure_base_images(&["debian"]);
        Bootable::build(IMAGE, DOCKERFILE, Outdir::Shared("debian-app"))
    })
}

#[test]
fn runs_a_script_as_a_named_user() {
    let out = image().boot(&[]);
    assert_exit(&out, 0);
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = program_lines(&out);
    assert_eq!(lines.len(), 4, "{console}");
    // audio is gid 29 and video gid 44 in Debian's base-passwd.
    assert_eq!(lines[0], "user=alice uid=1234 gid=1234 groups=1234 29 44", "{console}");
    assert_eq!(lines[1], "home=/home/alice pwd=/home/alice", "{console}");
    assert_eq!(lines[2], "bash=5 mode=debian", "{console}");
    // lo reports "unknown" rather than "up" (it has no carrier), but never "down".
    assert_eq!(lines[3], "hostname=diskc lo=unknown", "{console}");
}

#[test]
fn modprobe_loads_overlay_and_tun_from_the_boot_kernel() {
    let script = "set -e; modprobe overlay; cd /tmp; mkdir lower upper work merged; \
                  echo from-lower > lower/f; \
                  mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work merged; \
                  echo overlay=$(cat merged/f); echo changed > merged/f; echo upper=$(cat upper/f); \
                  modprobe tun; test -c /dev/net/tun && echo tun=ok; \
                  echo cgroup=$(stat -f -c %T /sys/fs/cgroup)";
    let out = image().boot(&["-u", "root", "--", "sh", "-c", script]);
    assert_exit(&out, 0);
    assert_eq!(
        program_lines(&out),
        ["overlay=from-lower", "upper=changed", "tun=ok", "cgroup=cgroup2fs"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
