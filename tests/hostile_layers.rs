//! Layers made by hand to be read two ways, each a bug diskc had: the index must be the
//! one Docker's reader (Go's archive/tar) sees, or the layer must be refused (exit 2).

mod common;
#[path = "common/rawtar.rs"]
mod rawtar;

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diskc::error::{Classify, ErrorKind};
use diskc::layer::{index_layer, index_layers, LayerError, LayerExpect, LayerIndex, LayerJob};
use diskc::tree::flatten::EntryKind;
use diskc::tree::{DeviceNumber, Timestamp};
use rawtar::{pax_record, Header, Tar};

fn index(tar: &[u8]) -> Result<LayerIndex, LayerError> {
    let dir = common::tempdir();
    index_layer(tar, &LayerExpect::default(), 0, common::spool(dir.path(), 0))
}

fn paths(layer: &LayerIndex) -> Vec<String> {
    layer.entries.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect()
}

/// The layer is refused as bad input, and the error says `needle`.
fn refused(tar: &[u8], needle: &str) -> String {
    let e = index(tar).err().unwrap_or_else(|| panic!("read without error, expected {needle:?}"));
    let text = e.to_string();
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{text}");
    assert!(text.contains(needle), "{needle:?} not in: {text}");
    text
}

/// Runs `f` on a thread of its own and fails when it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("took more than {limit:?}"))
}

#[test]
fn pax_records_holding_a_newline_are_read_by_their_length() {
    // `setcap cap_dac_override,cap_fowner+ep`: the capability's bytes hold 0x0a.
    let cap = [1, 0, 0, 2, 0x0a, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // An access ACL naming uid 10 (a 0x0a in the value).
    let acl = [2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 6, 0, 10, 0, 0, 0];
    let tar = Tar::new()
        .special(b'g', &pax_record(b"comment", b"two\nlines"))
        .pax(&[
            (b"SCHILY.xattr.security.capability", &cap),
            (b"SCHILY.xattr.system.posix_acl_access", &acl),
            (b"SCHILY.xattr.user.bin", b"\n\0\n"),
        ])
        .file(b"usr/bin/ping", b"elf")
        .pax(&[(b"path", b"new\nline")])
        .file(b"x", b"")
        .pax(&[(b"linkpath", b"to\nwhere")])
        .entry(Header::ustar(b"sym", b'2', 0), b"")
        .finish();
    let layer = index(&tar).expect("a layer with newlines in PAX values is read");
    assert_eq!(paths(&layer), ["usr/bin/ping", "new\nline", "sym"]);
    let x = &layer.entries[0].meta.xattrs;
    assert_eq!(x[&b"security.capability"[..]], cap);
    assert_eq!(x[&b"system.posix_acl_access"[..]], acl);
    assert_eq!(x[&b"user.bin"[..]], b"\n\0\n");
    assert!(matches!(&layer.entries[2].kind, EntryKind::Symlink(t) if t == b"to\nwhere"));
}

#[test]
fn nul_in_a_link_target_or_xattr_name_and_empty_xattr_names_are_refused() {
    let sym = || Header::ustar(b"sym", b'2', 0).link(b"t");
    refused(&Tar::new().pax(&[(b"linkpath", b"/etc\0passwd")]).entry(sym(), b"").finish(), "NUL");
    refused(&Tar::new().pax(&[(b"path", b"a\0b")]).entry(sym(), b"").finish(), "NUL");
    refused(&Tar::new().pax(&[(b"SCHILY.xattr.user.a\0b", b"v")]).file(b"f", b"").finish(), "NUL");
    refused(&Tar::new().pax(&[(b"SCHILY.xattr.user.", b"v")]).file(b"f", b"").finish(), "xattr name");
}

#[test]
fn a_repeated_pax_key_takes_its_last_value() {
    let tar = Tar::new()
        .pax(&[
            (b"path", b"shown-to-diskc"),
            (b"uid", b"1"),
            (b"size", b"0"),
            (b"path", b"seen-by-docker"),
            (b"uid", b"2"),
            (b"size", b"512"),
        ])
        // 512 bytes of data that a reader taking the first `size` would read as a header.
        .entry(Header::ustar(b"f", b'0', 0), &Header::ustar(b"injected", b'0', 0).bytes())
        .pax(&[(b"linkpath", b"first"), (b"linkpath", b"last")])
        .entry(Header::ustar(b"sym", b'2', 0), b"")
        .finish();
    let layer = index(&tar).unwrap();
    assert_eq!(paths(&layer), ["seen-by-docker", "sym"]);
    assert_eq!(layer.entries[0].meta.uid, 2);
    assert!(matches!(&layer.entries[1].kind, EntryKind::Symlink(t) if t == b"last"));
}

#[test]
fn header_only_types_carry_no_data_whatever_their_size_says() {
    let smuggled = Header::ustar(b"smuggled", b'0', 0).bytes();
    let mut tar = Tar::new().file(b"target", b"t");
    for (name, typeflag) in [("d/", b'5'), ("sym", b'2'), ("hard", b'1'), ("fifo", b'6'), ("chr", b'3')] {
        tar = tar.entry(Header::ustar(name.as_bytes(), typeflag, 512).link(b"target"), b"").raw(&smuggled);
    }
    let layer = index(&tar.finish()).unwrap();
    let got = paths(&layer);
    assert_eq!(got.iter().filter(|p| *p == "smuggled").count(), 5, "{got:?}");
}

#[test]
fn a_lone_zero_block_does_not_end_the_archive() {
    let tar = Tar::new().file(b"a", b"1").raw(&[0; 512]).file(b"hidden", b"2").finish();
    refused(&tar, "zero block");
}

#[test]
fn non_numeric_pax_uid_gid_and_mtime_are_refused() {
    for (key, value) in [(&b"uid"[..], &b"root"[..]), (b"gid", b"1x"), (b"mtime", b"now"), (b"uid", b"-5")] {
        refused(&Tar::new().pax(&[(key, value)]).file(b"f", b"").finish(), "\"f\"");
    }
}

#[test]
fn a_negative_base256_mtime_stays_before_1970() {
    let h = Header::gnu(b"old", b'0', 0).base256(rawtar::MTIME, -100);
    let layer = index(&Tar::new().entry(h, b"").finish()).unwrap();
    assert_eq!(layer.entries[0].meta.mtime, Timestamp::new(-100, 0));
}

/// Collects what tracing prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn times_ext4_cannot_store_are_clamped_with_one_warning() {
    let tar = Tar::new()
        .pax(&[(b"mtime", b"99999999999"), (b"atime", b"99999999999.5"), (b"ctime", b"-9999999999")])
        .file(b"far/future", b"")
        .file(b"ordinary", b"")
        .finish();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let layer = tracing::subscriber::with_default(subscriber, || index(&tar)).unwrap();
    let m = &layer.entries[0].meta;
    // ext4's range: 1901-12-13T20:45:52Z to 2446-05-10T22:38:55Z.
    let (min, max) = (Timestamp::new(-(1 << 31), 0), Timestamp::new((1 << 31) - 1 + (3 << 32), 999_999_999));
    assert_eq!((m.mtime, m.atime, m.ctime), (max, max, min));
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    assert!(log.contains("far/future") && log.contains("clamped"), "{log}");
}

#[test]
fn device_numbers_linux_cannot_encode_are_refused() {
    for (major, minor) in [(4096, 0), (0, 1 << 20)] {
        let tar = Tar::new().entry(Header::ustar(b"dev/odd", b'3', 0).device(major, minor), b"").finish();
        refused(&tar, "dev/odd");
    }
    let huge = Header::gnu(b"dev/huge", b'3', 0).device(0, 1).base256(rawtar::DEVMAJOR, 1 << 40);
    refused(&Tar::new().entry(huge, b"").finish(), "dev/huge");
    let max = Header::ustar(b"dev/max", b'4', 0).device(4095, (1 << 20) - 1);
    let layer = index(&Tar::new().entry(max, b"").finish()).unwrap();
    let want = DeviceNumber { major: 4095, minor: (1 << 20) - 1 };
    assert!(matches!(layer.entries[0].kind, EntryKind::BlockDevice(d) if d == want));
}

#[test]
fn a_500_kb_path_is_refused_as_past_path_max() {
    let long = b"a/".repeat(250_000);
    let text = refused(&Tar::new().pax(&[(b"path", &long)]).file(b"f", b"").finish(), "PATH_MAX");
    assert!(text.len() < 1000, "the error does not print the whole path");
}

#[test]
fn a_sparse_member_claiming_17_tib_fails_fast_and_holes_cost_nothing() {
    let sparse = |real: u64, at: u64| {
        let map = format!("1\n{at}\n4\n");
        let mut data = map.into_bytes();
        data.resize(512, 0);
        data.extend_from_slice(b"data");
        let real = real.to_string();
        Tar::new()
            .pax(&[
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"huge"),
                (b"GNU.sparse.realsize", real.as_bytes()),
            ])
            .entry(Header::ustar(b"GNUSparseFile.0/huge", b'0', data.len() as u64), &data)
            .finish()
    };
    let too_big = sparse(17 << 40, (17 << 40) - 4);
    within(Duration::from_secs(10), move || refused(&too_big, "ext4 holds at most"));
    // A TiB of holes and four bytes of data is four bytes of work.
    let tib = sparse(1 << 40, (1 << 40) - 4);
    let layer = within(Duration::from_secs(10), move || index(&tib).unwrap());
    let EntryKind::File(f) = &layer.entries[0].kind else { panic!("not a file") };
    assert_eq!((f.size, f.data_block_count()), (1 << 40, 1));
}

/// A reader that never ends.
struct Endless;

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        buf.fill(0);
        Ok(buf.len())
    }
}

#[test]
fn a_blob_longer_than_its_descriptor_says_is_cut_off() {
    let tar = Tar::new().file(b"f", b"x").finish();
    let dir = common::tempdir();
    let spool = common::spool_file(dir.path());
    let size = tar.len() as u64;
    let job = LayerJob { expect: LayerExpect::default(), size: Some(size) };
    // The tar, then zeros without end: the blob is read only up to its size, and one byte.
    let tar2 = tar.clone();
    let open = move |_| Ok(Box::new(io::Cursor::new(tar2.clone()).chain(Endless)) as Box<dyn Read + Send>);
    let e = within(Duration::from_secs(10), move || index_layers(&[job], open, &spool).err().unwrap());
    assert_eq!(e.error_kind(), ErrorKind::BadInput, "{e}");
    assert!(e.to_string().contains(&size.to_string()), "{e}");
    // Shorter than it says is as wrong.
    let job = LayerJob { expect: LayerExpect::default(), size: Some(size + 1) };
    let spool = common::spool_file(dir.path());
    let e =
        index_layers(&[job], |_| Ok(Box::new(io::Cursor::new(tar.clone())) as Box<dyn Read + Send>), &spool);
    assert!(e.err().unwrap().to_string().contains("bytes"));
}
