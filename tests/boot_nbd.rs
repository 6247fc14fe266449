//! Booting straight from the store over NBD, and `diskc serve` for other clients: images
//! boot from the store with no copy of their rootfs; the export reads as `diskc export`
//! writes the rootfs, to one client and to four at once (sharing one cache); four boots of
//! one image at once share one server; a damaged chunk is an I/O error, never other bytes; a
//! server that dies stops the boot with exit 3; a boot profile makes a cold remote boot
//! fetch its chunks in one batch.
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

/// Busybox converted into a store of the test's own: its shared disk server is the test's
/// alone (the test store's is shared by every test that boots busybox).
fn busybox_in(store: &Path) -> String {
    ensure_base_images(&["busybox"]);
    let (kernel, modules) = kernel_paths();
    let mut cmd = diskc();
    cmd.env("DISKC_STORE", store)
        .args(["--json", "convert", &format!("docker-daemon:{BUSYBOX_IMAGE}"), "--kernel"])
        .arg(kernel)
        .arg("--modules")
        .arg(modules);
    let out: Value = serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap();
    out["id"].as_str().unwrap().to_string()
}

/// The pids of the disk servers of `store` (a `diskc serve` with an argument under it: its
/// `--store`, or its files' `--shared` path for a remote store cached there), zombies aside.
fn servers_of(store: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> =
            cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "serve") && args.iter().any(|a| Path::new(a).starts_with(store)) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until no disk server of `store` runs (they linger a moment after the last boot).
fn wait_for_no_server(store: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !servers_of(store).is_empty() {
        assert!(Instant::now() < deadline, "disk servers left running: {:?}", servers_of(store));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No disk server of `store` is left, nor its sockets.
fn assert_no_server_left(store: &Path) {
    wait_for_no_server(store);
    let run = store.join("run");
    let sockets: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock" || x == "ctl"))
        .collect();
    assert!(sockets.is_empty(), "sockets left in {}: {sockets:?}", run.display());
}

#[test]
fn four_boots_of_one_image_at_once_share_one_server_and_its_cache() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let id = busybox_in(&store);
    let boots: Vec<Child> = (0..4)
        .map(|i| {
            let script = format!("echo boot-{i}; cat /bin/busybox >/dev/null; sleep 3");
            boot_command(&id, &["--json", "--", "sh", "-c", &script])
                .env("DISKC_STORE", &store)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut reports = Vec::new();
    for (i, boot) in boots.into_iter().enumerate() {
        let out = boot.wait_with_output().unwrap();
        assert_exit(&out, 0);
        assert!(stderr(&out).contains(&format!("boot-{i}")), "{}", stderr(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["read_bytes"].as_u64().unwrap() > 0, "{report}");
        reports.push(report);
    }
    // One server: every boot names the same process, and the last to end saw all four
    // attach and all four VMs connect to it.
    let pids: Vec<&Value> = reports.iter().map(|r| &r["server"]["pid"]).collect();
    assert!(pids.iter().all(|p| *p == pids[0] && p.is_u64()), "{reports:?}");
    let most = |key: &str| reports.iter().map(|r| r["server"][key].as_u64().unwrap()).max().unwrap();
    assert_eq!((most("boots"), most("clients")), (4, 4), "{reports:?}");
    // One cache: the server's own count of what it served is the four VMs' reads together
    // (and its cache loaded each chunk once, below its bound).
    let last = reports.iter().max_by_key(|r| r["server"]["read_bytes"].as_u64().unwrap()).unwrap();
    let read: u64 = reports.iter().map(|r| r["read_bytes"].as_u64().unwrap()).sum();
    assert_eq!(last["server"]["read_bytes"].as_u64().unwrap(), read, "{reports:?}");
    let cache = &last["cache"];
    assert!(cache["peak_bytes"].as_u64().unwrap() <= cache["limit_bytes"].as_u64().unwrap());
    assert!(cache["hits"].as_u64().unwrap() > 0, "{last}");
    assert_no_server_left(&store);
}

#[test]
fn the_server_killed_stops_the_boot_with_exit_3() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let id = busybox_in(&store);
    let mut boot =
        boot_command(&id, &["--", "sh", "-c", "echo up; sleep 100; cat /bin/* >/dev/null; echo done"])
            .env("DISKC_STORE", &store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stdout = BufReader::new(boot.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    let servers = servers_of(&store);
    assert_eq!(servers.len(), 1, "one disk server for the boot: {servers:?}");
    let killed = Instant::now();
    // SAFETY: kills a process of this test's own making.
    unsafe { libc::kill(servers[0] as i32, libc::SIGKILL) };
    let out = boot.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(killed.elapsed() < Duration::from_secs(60), "diskc boot hung after its server died");
    assert!(stderr(&out).contains("NBD server") && stderr(&out).contains("ended"), "{}", stderr(&out));

    // The dead server's sockets are stale: the next boot starts a server of its own.
    let out = boot_command(&id, &["--", "echo", "again"]).env("DISKC_STORE", &store).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out), ["again"]);
    assert_no_server_left(&store);
}

#[test]
fn a_boot_from_a_cold_remote_store_fetches_only_what_the_guest_reads_then_by_its_profile() {
    // Debian, not busybox: busybox's rootfs is so small beside the kernel and initrd (which a
    // boot fetches whole) that any boot fetches most of the image.
    ensure_base_images(&["debian"]);
    let id = Bootable::convert(DEBIAN_IMAGE, Outdir::Temporary).id;
    let hex = id.trim_start_matches("sha256:").to_string();
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
    // The first boot recorded its profile, on the remote beside the image.
    assert_eq!(cold["boot_profile"], "recorded", "{cold}");
    assert_eq!(cold["prefetched_bytes"], 0, "{cold}");
    let cold_fetches = cold["fetches"].as_u64().unwrap();
    let profile = s3.root().join(common::s3::BUCKET).join(format!("team/images/{hex}.boot"));
    assert!(profile.is_file(), "no profile at {}", profile.display());
    // The chunks fetched stay in the local store: the next boot fetches nothing.
    let warm = boot_remote(cache.path(), true);
    assert_eq!((&warm["fetched_bytes"], &warm["fetches"]), (&Value::from(0), &Value::from(0)), "{warm}");

    // A machine without the image's kernel fetches the kernel and initrd too, and boots.
    let elsewhere = boot_remote(tempdir().path(), false);
    let fetched_elsewhere = elsewhere["fetched_bytes"].as_u64().unwrap();
    let kernel = std::fs::metadata(&kernel_paths().0).unwrap().len();
    eprintln!("stored {stored}, fetched {fetched} with the host's kernel, {fetched_elsewhere} without");
    assert!(
        fetched_elsewhere > fetched + kernel / 2,
        "without the host's kernel the boot fetched {fetched_elsewhere} bytes, with it {fetched}"
    );

    // Another machine, with the profile there: the boot's chunks come in one batch before
    // the VM starts, and the guest finds (nearly) all it reads already fetched.
    let other = tempdir();
    let second = boot_remote(other.path(), true);
    assert_eq!(second["boot_profile"], "used", "{second}");
    let prefetched = second["prefetched_bytes"].as_u64().unwrap();
    assert!(prefetched > 0, "{second}");
    let later = second["fetches"].as_u64().unwrap() - 1;
    assert!(
        later <= 2 && later * 4 < cold_fetches,
        "after the one batch the guest still fetched {later} times (without a profile {cold_fetches}): {second}"
    );

    // pull --boot-first: the profile's chunks first, then the rest; the profile comes along,
    // and goes on with a push.
    let pulled_into = tempdir();
    let out = run_ok(s3.diskc(pulled_into.path()).args(["--json", "pull", "--boot-first", &id, &s3.url()]));
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = pulled["boot_first_chunks"].as_u64().unwrap();
    assert!(first > 0 && first < pulled["chunks"].as_u64().unwrap(), "{pulled}");
    assert!(pulled_into.path().join(format!("images/{hex}.boot")).is_file());
    run_ok(s3.diskc(pulled_into.path()).args(["push", &id, &s3.url_at("other")]));
    assert!(s3.root().join(common::s3::BUCKET).join(format!("other/images/{hex}.boot")).is_file());

    // A local store removed while its disk server lingers ends the server all the same.
    let caches = [cache.path().to_path_buf(), other.path().to_path_buf()];
    drop((cache, other));
    for dir in caches {
        wait_for_no_server(&dir);
    }
}

#[test]
fn a_damaged_chunk_is_an_io_error_in_the_guest_of_a_boot() {
    ensure_base_images(&["busybox"]);
    let dir = tempdir();
    let store = dir.path().join("store");
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    // Random bytes: the file's chunks are its own, so damaging one damages this file only.
    let dockerfile = format!("FROM {BUSYBOX_IMAGE}\nRUN head -c 1048576 /dev/urandom > /data\n");
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    let mut build = diskc_with_kernel();
    build.env("DISKC_STORE", &store).args(["--json", "build", "-t", "diskc-test/damaged-data"]).arg(&context);
    let built: Value = serde_json::from_slice(&run_ok(&mut build).stdout).unwrap();
    let id = built["id"].as_str().unwrap().to_string();
    let with_store = || {
        let mut cmd = diskc();
        cmd.env("DISKC_STORE", &store);
        cmd
    };

    // Where the middle of /data lies in the rootfs, and the chunk that holds it.
    let rootfs = dir.path().join("rootfs.ext4");
    run_ok(with_store().args(["export", &id, "-o"]).arg(&rootfs));
    let out = run_ok(Command::new("debugfs").args(["-R", "bmap /data 128"]).arg(&rootfs));
    let block: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let at = block * 4096;
    let chunks = manifest(with_store(), &id)["rootfs"]["chunks"].as_array().unwrap().clone();
    let chunk = chunks
        .iter()
        .find(|c| {
            let offset = c["offset"].as_u64().unwrap();
            (offset..offset + c["size"].as_u64().unwrap()).contains(&at)
        })
        .unwrap();
    let (pack, offset, len) = locate_frame(&store, chunk["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(offset + len / 2) as usize] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();

    let script = "cat /data >/dev/null; echo cat=$?; head -c 4096 /data | wc -c";
    let out = boot_command(&id, &["--", "sh", "-c", script]).env("DISKC_STORE", &store).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(program_lines(&out), ["cat=1", "4096"], "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("Input/output error"), "{log}");
    assert!(log.contains("read(s) of image") && log.contains("failed"), "{log}");
    assert_no_server_left(&store);
}
