//! The guest's network, QEMU's user-mode network configured by diskc-init: the guest reaches
//! a server on the host (at 10.0.2.2, as QEMU maps the host's loopback), and a client on the
//! host reaches a server in the guest through `-p`, and through `-P` for an EXPOSEd port.

mod boot_support;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use boot_support::*;

fn image() -> &'static Bootable {
    static IMAGE: OnceLock<Bootable> = OnceLock::new();
    IMAGE.get_or_init(|| {
        ensure_base_images(&["busybox"]);
        Bootable::convert(BUSYBOX_IMAGE, Outdir::Shared("busybox-network"))
    })
}

/// Serves `body` to every HTTP request on a loopback port until the test ends.
fn serve_once_per_request(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

#[test]
fn the_guest_downloads_a_file_from_the_host() {
    let port = serve_once_per_request("a file from the host\n");
    let url = format!("http://10.0.2.2:{port}/file.txt");
    let out = image().boot(&["--", "wget", "-q", "-O", "-", &url]);
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a file from the host\n");
}

/// What a client connecting to `port` on the host reads, once the guest's server answers:
/// QEMU listens on the host port from its start, and until the guest's server listens a
/// connection is accepted and closed at once, so it retries. Fails when `boot` ends first.
fn answer_on(port: u16, boot_ended: impl Fn() -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no answer from the guest on port {port}");
        assert!(!boot_ended(), "the boot ended before answering on port {port}");
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if !answer.is_empty() {
                return answer;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_host_client_reaches_a_guest_server_through_publish() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:8080");
    // The guest answers one connection, then its program ends and the VM powers off.
    let server = std::thread::spawn(move || {
        image().boot(&["-p", &publish, "--", "sh", "-c", "echo hello from the guest | nc -l -p 8080"])
    });
    let answer = answer_on(port, || server.is_finished());
    assert_eq!(answer, "hello from the guest\n");
    let out = server.join().unwrap();
    assert_exit(&out, 0);
}

#[test]
fn publish_all_puts_exposed_ports_on_free_host_ports() {
    ensure_base_images(&["busybox"]);
    let dockerfile = "FROM diskc-test/busybox:latest\nEXPOSE 8080\n\
                      CMD [\"sh\", \"-c\", \"echo exposed | nc -l -p 8080\"]\n";
    let image = Bootable::build("diskc-test/boot-exposed:latest", dockerfile, Outdir::Temporary);
    let mut child = boot_command(&image.outdir, &["-P"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port: u16 = line
        .strip_prefix("diskc: published 8080/tcp -> 0.0.0.0:")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mapping on stderr: {line:?}"));
    assert_eq!(answer_on(port, || false), "exposed\n");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
}
