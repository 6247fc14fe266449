//! Booting straight from the store over NBD, and `diskc serve` for other clients: images
//! boot from the store with no copy of their rootfs; the export reads as `diskc export`
//! writes the rootfs, to one client and to four at once (sharing one cache); a damaged
//! chunk is an I/O error, never other bytes; a server that dies stops the boot with exit 3.
//! The NBD clients are QEMU's own (`qemu-img`, `qemu-io`, package qemu-utils).

mod boot_support;
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use boot_support::*;
use serde_json::Value;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn nbd_uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// A running `diskc serve`, killed if the test fails before it is stopped.
struct Serving(Option<Child>);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `diskc --json serve IMAGE --nbd unix:SOCKET` with `cmd`'s store, once its socket is up.
fn serve(mut cmd: Command, image: &str, socket: &Path) -> Serving {
    cmd.args(["--json", "serve", image, "--nbd", &format!("unix:{}", socket.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "diskc serve ended: {:?}", child.wait_with_output());
        assert!(Instant::now() < deadline, "diskc serve did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Serving(Some(child))
}

/// Stops a server with SIGTERM: its report (JSON on stdout) and its stderr.
fn stop(mut serving: Serving) -> (Value, String) {
    let child = serving.0.take().unwrap();
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "diskc serve: {}", stderr(&out));
    (serde_json::from_slice(&out.stdout).unwrap(), stderr(&out))
}

/// `qemu-img convert` of the export into `out`.
fn read_export(socket: &Path, out: &Path) -> Output {
    Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &nbd_uri(socket)])
        .arg(out)
        .output()
        .expect("qemu-img (qemu-utils) is required")
}

/// `qemu-io -r -c COMMAND` on the export: what it printed.
fn qemu_io_cmd(socket: &Path, command: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", "qemu-io", "-f", "raw", "-r", "-c", command, &nbd_uri(socket)])
        .output()
        .expect("qemu-io (qemu-utils) is required");
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out)
}

/// The stored record of an image (`diskc inspect --json`).
fn manifest(mut cmd: Command, image: &str) -> Value {
    let out = run_ok(cmd.args(["--json", "inspect", image]));
    let mut object: Value = serde_json::from_slice(&out.stdout).unwrap();
    object["images"][0]["manifest"].take()
}

fn busybox_id() -> String {
    ensure_base_images(&["busybox"]);
    Bootable::convert(BUSYBOX_IMAGE, Outdir::Temporary).id
}

#[test]
fn busybox_and_debian_boot_from_the_store_through_nbd() {
    ensure_base_images(&["busybox", "debian"]);
    for base in [BUSYBOX_IMAGE, DEBIAN_IMAGE] {
        let id = Bootable::convert(base, Outdir::Temporary).id;
        let tmp = tempdir();
        let mut cmd =
            boot_command(&id, &["--", "sh", "-c", "echo booted; head -c 3 /etc/os-release; exit 4"]);
        let out = cmd.env("TMPDIR", tmp.path()).output().unwrap();
        assert_exit(&out, 4);
        let lines = program_lines(&out);
        assert_eq!(lines[0], "booted", "{base}: {}", stderr(&out));

        // --json: stdout is one object; the program's output went to stderr.
        let out = boot(&id, &["--read-only", "--json", "--", "sh", "-c", "echo on-stderr"]);
        assert_exit(&out, 0);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(stderr(&out).contains("on-stderr"));
        assert_eq!(report["command"], "boot");
        assert_eq!(report["exit_code"], 0);
        assert_eq!(report["id"].as_str().unwrap(), id.trim_start_matches("sha256:"));
        assert_eq!(report["fetched_bytes"], 0, "a local store fetches nothing");
        let size = manifest(diskc(), &id)["rootfs"]["size"].as_u64().unwrap();
        let read = report["read_bytes"].as_u64().unwrap();
        assert!(read > 0 && read < size / 2, "{base}: the guest read {read} of {size} bytes");
        let timings = &report["timings"];
        assert!(timings["first_output"].as_f64().unwrap() <= timings["total"].as_f64().unwrap(), "{report}");
        assert!(
            report["cache"]["peak_bytes"].as_u64().unwrap()
                <= report["cache"]["limit_bytes"].as_u64().unwrap()
        );

        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "files left in TMPDIR: {left:?}");
    }
}

#[test]
fn the_export_reads_as_diskc_export_to_one_and_four_clients_sharing_one_cache() {
    let id = busybox_id();
    let dir = tempdir();
    let exported = dir.path().join("exported.ext4");
    run_ok(diskc().args(["export", &id, "-o"]).arg(&exported));
    let expected = std::fs::read(&exported).unwrap();
    let socket = dir.path().join("nbd.sock");
    let server = serve(diskc(), &id, &socket);

    let one = dir.path().join("one.raw");
    let out = read_export(&socket, &one);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&one).unwrap() == expected, "the export differs from diskc export");

    let outs: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("c{i}.raw"))).collect();
    std::thread::scope(|s| {
        for out in &outs {
            let socket = &socket;
            s.spawn(move || {
                let result = read_export(socket, out);
                assert!(result.status.success(), "{}", stderr(&result));
            });
        }
    });
    for out in &outs {
        assert!(std::fs::read(out).unwrap() == expected, "{} differs", out.display());
    }
    let (report, log) = stop(server);
    assert_eq!(report["clients"], 5, "{report}");
    assert_eq!(report["read_bytes"].as_u64().unwrap(), 5 * expected.len() as u64);
    // One cache for all: every chunk was decompressed once, whichever client read it first.
    let chunks = manifest(diskc(), &id)["rootfs"]["chunks"].as_array().unwrap().len() as u64;
    let cache = &report["cache"];
    assert_eq!(cache["loads"].as_u64().unwrap(), chunks, "{report}");
    assert!(cache["peak_bytes"].as_u64().unwrap() <= cache["limit_bytes"].as_u64().unwrap());
    assert!(log.contains("served 5 client(s)") && log.contains("cache"), "{log}");
    assert!(!socket.exists(), "the socket stays after the server");
}

/// Where a chunk's zstd frame lies in its pack: (pack path, offset, length), from the
/// pack's own index (docs/store.md: 48-byte entries, a 56-byte footer).
fn locate_frame(store: &Path, digest: &str) -> (PathBuf, u64, u64) {
    let want = hex_bytes(digest.trim_start_matches("sha256:"));
    for entry in std::fs::read_dir(store.join("packs")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let footer = &bytes[bytes.len() - 56..];
        let index_offset = u64::from_le_bytes(footer[0..8].try_into().unwrap()) as usize;
        let count = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
        for e in bytes[index_offset..index_offset + 48 * count].chunks_exact(48) {
            if e[..32] == want[..] {
                let offset = u64::from_le_bytes(e[32..40].try_into().unwrap());
                let len = u32::from_le_bytes(e[40..44].try_into().unwrap());
                return (path, offset, u64::from(len));
            }
        }
    }
    panic!("chunk {digest} is in no pack");
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn a_damaged_chunk_is_an_io_error_never_other_bytes() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let with_store = || {
        let mut cmd = diskc();
        cmd.env("DISKC_STORE", &store);
        cmd
    };
    let rootfs = dir.path().join("rootfs");
    // xorshift: no chunk repeats another, so damaging one frame damages one chunk.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..4_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&rootfs, &data).unwrap();
    let put: Value =
        serde_json::from_slice(&run_ok(with_store().args(["--json", "store-put"]).arg(&rootfs)).stdout)
            .unwrap();
    let id = put["id"].as_str().unwrap().to_string();
    let chunks = manifest(with_store(), &id)["rootfs"]["chunks"].as_array().unwrap().clone();
    let damaged = &chunks[chunks.len() / 2];
    let (pack, offset, len) = locate_frame(&store, damaged["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(offset + len / 2) as usize] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();

    let socket = dir.path().join("nbd.sock");
    let server = serve(with_store(), &id, &socket);
    let at = damaged["offset"].as_u64().unwrap();
    let qemu_io = |offset: u64| qemu_io_cmd(&socket, &format!("read -v {offset} 512"));
    let failed = qemu_io(at);
    assert!(failed.contains("Input/output error"), "{failed}");
    // The rest of the image still reads, as stored.
    let fine = qemu_io(0);
    assert!(fine.contains("read 512/512 bytes"), "{fine}");
    let first = format!("{:02x} {:02x}", data[0], data[1]);
    assert!(fine.contains(&first), "{fine}");
    // A whole read fails rather than hand out other bytes. (qemu-io: qemu-img convert 7.2
    // with parallel requests reports the error and then waits forever for its own workers.)
    let whole = qemu_io_cmd(&socket, &format!("read 0 {}", data.len()));
    assert!(whole.contains("Input/output error"), "{whole}");

    let (report, log) = stop(server);
    assert!(report["failed_reads"].as_u64().unwrap() >= 2, "{report}");
    let line = log.lines().find(|l| l.contains("I/O error")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&id) && line.contains("is damaged"), "{line}");
    assert_eq!(log.matches("I/O error").count(), 1, "one line per damaged chunk: {log}");
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn the_server_killed_stops_the_boot_with_exit_3() {
    let id = busybox_id();
    let mut boot =
        boot_command(&id, &["--", "sh", "-c", "echo up; sleep 100; cat /bin/* >/dev/null; echo done"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stdout = BufReader::new(boot.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    let server = children(boot.id())
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().contains("serve"))
        .expect("diskc boot runs its disk server as a child");
    let killed = Instant::now();
    // SAFETY: kills a process of this test's own making.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let out = boot.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(killed.elapsed() < Duration::from_secs(60), "diskc boot hung after its server died");
    assert!(stderr(&out).contains("NBD server") && stderr(&out).contains("ended"), "{}", stderr(&out));
}

#[test]
fn a_boot_from_a_cold_remote_store_fetches_only_what_the_guest_reads() {
    // Debian, not busybox: busybox's rootfs is so small beside the kernel and initrd (which a
    // boot fetches whole) that any boot fetches most of the image.
    ensure_base_images(&["debian"]);
    let id = Bootable::convert(DEBIAN_IMAGE, Outdir::Temporary).id;
    let s3 = common::s3::S3Server::start();
    let mut push = diskc();
    s3.configure(&mut push);
    let out = run_ok(push.args(["--json", "push", &id, &s3.url()]));
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = pushed["transferred_bytes"].as_u64().unwrap();

    // A machine that has never seen the image: an empty local store as the remote's cache.
    // `host_kernel`: whether this machine has the image's boot kernel (DISKC_KERNEL and
    // DISKC_MODULES, as the convert had), so that the kernel and initrd need no fetch.
    let boot_remote = |cache: &Path, host_kernel: bool| {
        let mut cmd =
            boot_command(&id, &["--json", "--store", &s3.url(), "--", "sh", "-c", "echo from-remote"]);
        s3.configure(&mut cmd);
        if !host_kernel {
            cmd.env_remove("DISKC_KERNEL");
        }
        let out = cmd.env("DISKC_STORE", cache).output().unwrap();
        assert_exit(&out, 0);
        assert!(stderr(&out).contains("from-remote"), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let cache = tempdir();
    let cold = boot_remote(cache.path(), true);
    let fetched = cold["fetched_bytes"].as_u64().unwrap();
    assert!(fetched > 0, "a cold boot fetched nothing: {cold}");
    assert!(
        fetched * 100 <= stored * 15,
        "the boot fetched {fetched} of the image's {stored} stored bytes: over 15%"
    );
    // The chunks fetched stay in the local store: the next boot fetches nothing.
    let warm = boot_remote(cache.path(), true);
    assert_eq!(warm["fetched_bytes"], 0, "{warm}");

    // A machine without the image's kernel fetches the kernel and initrd too, and boots.
    let elsewhere = boot_remote(tempdir().path(), false);
    let fetched_elsewhere = elsewhere["fetched_bytes"].as_u64().unwrap();
    let kernel = std::fs::metadata(&kernel_paths().0).unwrap().len();
    eprintln!("stored {stored}, fetched {fetched} with the host's kernel, {fetched_elsewhere} without");
    assert!(
        fetched_elsewhere > fetched + kernel / 2,
        "without the host's kernel the boot fetched {fetched_elsewhere} bytes, with it {fetched}"
    );
}
