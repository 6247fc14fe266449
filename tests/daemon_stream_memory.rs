//! The export is streamed, never held whole: reading the Debian base image's export
//! (over 100 MiB) raises the process's peak memory by a small fraction of it. Its own test
//! binary, because it measures the whole process.

mod common;

use diskc::digest::HashingReader;
use diskc::source::daemon::export_stream;

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn export_of_a_large_image_is_streamed() {
    common::ensure_base_images(&["debian"]);
    let before = peak_rss();
    let mut reader = HashingReader::new(export_stream(common::rt(), common::DEBIAN_IMAGE).unwrap());
    std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
    let exported = reader.count();
    let grown = peak_rss().saturating_sub(before);
    assert!(exported > 100 << 20, "export is only {exported} bytes");
    assert!(grown < 32 << 20, "peak RSS grew by {grown} bytes while streaming {exported} bytes");
}
