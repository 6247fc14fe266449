//! Reading layer blobs: compression by magic, digests verified while streaming, tar
//! features (PAX xattrs and times, long names, devices, links, big ids), the sparse spool,
//! parallel indexing, and bad input (corrupt, truncated, mismatched, unreadable).

mod common;

use std::io::{self, Read, Write};

use diskc::digest::Digest;
use diskc::error::{Classify, ErrorKind};
use diskc::layer::{index_layer, index_layers, Compression, LayerError, LayerExpect, LayerIndex, LayerJob};
use diskc::tree::flatten::EntryKind;
use diskc::tree::{Content, BLOCK_SIZE};
use proptest::prelude::*;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A sparse-looking file: data in block 0, holes, data in the partial last block (259).
fn holey() -> Vec<u8> {
    let mut v = vec![0u8; (1 << 20) + 3 * BLOCK_SIZE as usize + 100];
    v[..5].copy_from_slice(b"start");
    let tail = v.len() - 3;
    v[tail..].copy_from_slice(b"end");
    v
}

/// A layer with one of everything.
fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), "etc/", io::empty()).unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, 6), "etc/hello", &b"hello\n"[..]).unwrap();
    let long = format!("etc/{}", "l".repeat(255));
    b.append_data(&mut header(tar::EntryType::Regular, 0o600, 4), &long, &b"long"[..]).unwrap();
    let data = holey();
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, data.len() as u64), "holey", &data[..])
        .unwrap();
    let zeros = vec![0u8; 3 << 20];
    b.append_data(&mut header(tar::EntryType::Regular, 0o644, zeros.len() as u64), "zeros", &zeros[..])
        .unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc/sym", "../holey").unwrap();
    let mut h = header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "etc/hard", "etc/hello").unwrap();
    let mut h = header(tar::EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "null", io::empty()).unwrap();
    b.append_data(&mut header(tar::EntryType::Fifo, 0o600, 0), "fifo", io::empty()).unwrap();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.k", &b"v"[..]),
        ("SCHILY.xattr.security.capability", &[1, 2, 0, 255][..]),
        ("mtime", &b"1700000000.123456789"[..]),
        ("uid", &b"4000000000"[..]),
    ])
    .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o4755, 1);
    h.set_gid(100000);
    b.append_data(&mut h, "setuid", &b"x"[..]).unwrap();
    // A Latin-1 name, not UTF-8: set the name bytes directly.
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    h.as_old_mut().name[..4].copy_from_slice(b"caf\xe9");
    h.set_cksum();
    b.append(&h, io::empty()).unwrap();
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn expect(blob: &[u8], tar: &[u8]) -> LayerExpect {
    LayerExpect { digest: Some(Digest::of(blob)), diff_id: Some(Digest::of(tar)), media_type: String::new() }
}

fn entry<'l>(layer: &'l LayerIndex, path: &str) -> &'l diskc::tree::flatten::Entry<diskc::layer::SpoolRef> {
    layer.entries.iter().find(|e| e.path == path.as_bytes()).unwrap_or_else(|| panic!("{path} missing"))
}

fn read_all(layer: &LayerIndex, path: &str) -> Vec<u8> {
    match &entry(layer, path).kind {
        EntryKind::File(f) => {
            let mut v = vec![0u8; f.size as usize];
            f.content.read_at(0, &mut v).unwrap();
            v
        }
        other => panic!("{path} is {other:?}"),
    }
}

#[test]
fn every_compression_gives_the_same_index() {
    let tar = sample_tar();
    let dir = common::tempdir();
    for (blob, compression) in
        [(tar.clone(), Compression::None), (gzip(&tar), Compression::Gzip), (zstd(&tar), Compression::Zstd)]
    {
        let layer = index_layer(&blob[..], &expect(&blob, &tar), 3, common::spool(dir.path(), 3)).unwrap();
        assert_eq!(layer.compression, compression);
        assert_eq!(layer.digest, Digest::of(&blob));
        assert_eq!(layer.diff_id, Digest::of(&tar));
        assert_eq!((layer.compressed_size, layer.uncompressed_size), (blob.len() as u64, tar.len() as u64));
        assert_eq!(read_all(&layer, "etc/hello"), b"hello\n");
        assert_eq!(read_all(&layer, &format!("etc/{}", "l".repeat(255))), b"long");
        assert_eq!(read_all(&layer, "holey"), holey());
        let EntryKind::File(f) = &entry(&layer, "holey").kind else { unreachable!() };
        assert_eq!(f.data_blocks, vec![0..1, 259..260], "the hole's blocks are left out");
        assert_eq!(f.content.layer(), 3);
        let mut part = [0u8; 10];
        f.content.read_at(BLOCK_SIZE - 5, &mut part).unwrap();
        assert_eq!(part, [0; 10]);
        assert!(f.content.read_at(f.size - 2, &mut part).is_err(), "reading past the end fails");
        let EntryKind::File(z) = &entry(&layer, "zeros").kind else { unreachable!() };
        assert!(z.data_blocks.is_empty());
        assert_eq!(read_all(&layer, "zeros"), vec![0u8; 3 << 20]);
        assert!(matches!(&entry(&layer, "etc/sym").kind, EntryKind::Symlink(t) if t == b"../holey"));
        assert!(matches!(&entry(&layer, "etc/hard").kind, EntryKind::HardLink(t) if t == b"etc/hello"));
        assert!(
            matches!(&entry(&layer, "null").kind, EntryKind::CharDevice(d) if (d.major, d.minor) == (1, 3))
        );
        assert!(matches!(entry(&layer, "fifo").kind, EntryKind::Fifo));
        let s = &entry(&layer, "setuid").meta;
        assert_eq!((s.mode, s.uid, s.gid), (0o4755, 4_000_000_000, 100000));
        assert_eq!((s.mtime.sec, s.mtime.nsec), (1_700_000_000, 123_456_789));
        assert_eq!(s.xattrs.get(&b"user.k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
        assert_eq!(s.xattrs.get(&b"security.capability"[..]).map(Vec::as_slice), Some(&[1u8, 2, 0, 255][..]));
        assert_eq!(entry(&layer, "etc/hello").meta.mtime.sec, 1_700_000_000);
        assert!(layer.entries.iter().any(|e| e.path == b"caf\xe9"));
    }
}

#[test]
fn digest_and_diff_id_mismatches_name_the_blob() {
    let tar = sample_tar();
    let blob = gzip(&tar);
    let dir = common::tempdir();
    let mut wrong = expect(&blob, &tar);
    wrong.digest = Some(Digest::of(b"other"));
    let e = index_layer(&blob[..], &wrong, 0, common::spool(dir.path(), 0)).err().unwrap();
    assert!(matches!(e, LayerError::DigestMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains(&Digest::of(b"other").to_string())
            && e.to_string().contains(&Digest::of(&blob).to_string()),
        "{e}"
    );
    let mut wrong = expect(&blob, &tar);
    wrong.diff_id = Some(Digest::of(b"other"));
    let e = index_layer(&blob[..], &wrong, 0, common::spool(dir.path(), 0)).err().unwrap();
    assert!(matches!(e, LayerError::DiffIdMismatch { .. }), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::BadInput);
}

#[test]
fn flipped_and_truncated_blobs_are_errors() {
    let tar = sample_tar();
    let dir = common::tempdir();
    for blob in [tar.clone(), gzip(&tar), zstd(&tar)] {
        let exp = expect(&blob, &tar);
        let name = exp.digest.unwrap().to_string();
        let mut flipped = blob.clone();
        let at = flipped.len() / 3;
        flipped[at] ^= 0x40;
        for (what, bad) in [
            ("flipped", flipped),
            ("truncated", blob[..blob.len() * 2 / 3].to_vec()),
            ("cut short", blob[..blob.len() - 1].to_vec()),
        ] {
            let e = index_layer(&bad[..], &exp, 0, common::spool(dir.path(), 0))
                .err()
                .unwrap_or_else(|| panic!("{what} blob read without error"));
            assert_eq!(e.error_kind(), ErrorKind::BadInput, "{what}: {e}");
            assert!(e.to_string().contains(&name), "{what}: the error names the blob: {e}");
        }
    }
}

#[test]
fn an_encrypted_layer_is_unsupported() {
    let dir = common::tempdir();
    let exp = LayerExpect {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into(),
        ..Default::default()
    };
    let e = index_layer(&b""[..], &exp, 0, common::spool(dir.path(), 0)).err().unwrap();
    assert!(matches!(e, LayerError::Unsupported { .. }), "{e}");
}

/// A zstd frame header declaring a window of 2^`log` bytes, then one empty last block.
fn zstd_frame_with_window(log: u8) -> Vec<u8> {
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (log - 10) << 3];
    frame.extend([0x01, 0x00, 0x00]);
    frame
}

#[test]
fn a_zstd_window_over_128_mib_is_refused_before_it_is_allocated() {
    let dir = common::tempdir();
    // A few bytes asking for 256 MiB to 2 GiB of window: refused, naming the blob and the limit.
    for log in [28, 30, 31] {
        let blob = zstd_frame_with_window(log);
        let exp = LayerExpect { digest: Some(Digest::of(&blob)), ..Default::default() };
        let e = index_layer(&blob[..], &exp, 0, common::spool(dir.path(), 0)).err().unwrap();
        assert!(matches!(e, LayerError::ZstdWindow { .. }), "window 2^{log}: {e}");
        let text = e.to_string();
        assert!(text.contains(&Digest::of(&blob).to_string()) && text.contains("128 MiB"), "{text}");
        assert_eq!(e.error_kind(), ErrorKind::BadInput);
    }
    // A long window within the limit, as `zstd --long=27` writes, reads as any layer.
    let tar = sample_tar();
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.long_distance_matching(true).unwrap();
    encoder.window_log(27).unwrap();
    encoder.write_all(&tar).unwrap();
    let blob = encoder.finish().unwrap();
    assert_eq!(blob[5], (27 - 10) << 3, "the frame declares its 128 MiB window");
    let layer = index_layer(&blob[..], &expect(&blob, &tar), 0, common::spool(dir.path(), 0)).unwrap();
    assert_eq!(read_all(&layer, "etc/hello"), b"hello\n");
}

/// Fails like a broken connection after some bytes.
struct Broken<'a>(&'a [u8]);

impl Read for Broken<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let n = self.0.len().min(buf.len()).min(1000);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn a_failing_reader_is_an_environment_error() {
    let tar = sample_tar();
    let blob = gzip(&tar);
    let dir = common::tempdir();
    let e =
        index_layer(Broken(&blob[..blob.len() / 2]), &expect(&blob, &tar), 0, common::spool(dir.path(), 0))
            .err()
            .unwrap();
    assert!(matches!(e, LayerError::Read { .. }), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::Environment);
    // A spool file that cannot be written (opened read-only).
    let read_only = std::fs::File::open(common::tempdir().path()).unwrap();
    let writer = diskc::layer::SpoolFile::new(read_only).slot(0).unwrap();
    let e = index_layer(&tar[..], &LayerExpect::default(), 0, writer).err().unwrap();
    assert!(matches!(e, LayerError::Spool { .. }), "{e}");
    assert_eq!(e.error_kind(), ErrorKind::Environment);
}

#[test]
fn uids_beyond_32_bits_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    h.set_uid(5_000_000_000);
    b.append_data(&mut h, "big", io::empty()).unwrap();
    let tar = b.into_inner().unwrap();
    let dir = common::tempdir();
    let e = index_layer(&tar[..], &LayerExpect::default(), 0, common::spool(dir.path(), 0)).err().unwrap();
    assert!(e.to_string().contains("\"big\"") && e.to_string().contains("5000000000"), "{e}");
}

#[test]
fn many_layers_come_back_in_input_order() {
    let dir = common::tempdir();
    let blobs: Vec<(Vec<u8>, Vec<u8>)> = (0..6)
        .map(|i| {
            let mut b = tar::Builder::new(Vec::new());
            let data = vec![i as u8 + 1; 1000 * (i % 3 + 1)];
            b.append_data(
                &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
                format!("f{i}"),
                &data[..],
            )
            .unwrap();
            let tar = b.into_inner().unwrap();
            let blob = if i % 2 == 0 { gzip(&tar) } else { zstd(&tar) };
            (blob, tar)
        })
        .collect();
    let jobs: Vec<LayerJob> =
        blobs.iter().map(|(b, t)| LayerJob { expect: expect(b, t), size: Some(b.len() as u64) }).collect();
    let layers = index_layers(
        &jobs,
        |i| Ok(Box::new(io::Cursor::new(blobs[i].0.clone())) as Box<dyn Read + Send>),
        &common::spool_file(dir.path()),
    )
    .unwrap();
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(layer.entries[0].path, format!("f{i}").as_bytes());
        let EntryKind::File(f) = &layer.entries[0].kind else { unreachable!() };
        assert_eq!(f.content.layer(), i as u32);
    }
    // The first failure in input order is the error.
    let e = index_layers(
        &jobs,
        |i| {
            if i >= 4 {
                Err(io::ErrorKind::NotFound.into())
            } else {
                Ok(Box::new(io::Cursor::new(blobs[i].0.clone())) as Box<dyn Read + Send>)
            }
        },
        &common::spool_file(dir.path()),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains(&jobs[4].expect.digest.unwrap().to_string()), "{e}");
}

/// One spool directory for all fuzz cases.
fn fuzz_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(common::tempdir).path()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = index_layer(&bytes[..], &LayerExpect::default(), 0, common::spool(fuzz_dir(), 0));
    }

    #[test]
    fn mutated_tars_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), gz in any::<bool>()) {
        static SAMPLES: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        let (plain, gzipped) = SAMPLES.get_or_init(|| {
            let tar = sample_tar();
            (tar[..8192].to_vec(), gzip(&tar))
        });
        let mut blob = if gz { gzipped.clone() } else { plain.clone() };
        for (at, byte) in flips {
            let i = at.index(blob.len());
            blob[i] = byte;
        }
        let _ = index_layer(&blob[..], &LayerExpect::default(), 0, common::spool(fuzz_dir(), 0));
    }
}

#[test]
fn gnu_sparse_members_in_both_forms() {
    let dir = common::tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let file = std::fs::File::create(src.join("sparse")).unwrap();
    file.set_len(10 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"hello", 5_000_000).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"end", (10 << 20) - 3).unwrap();
    drop(file);
    let expected = std::fs::read(src.join("sparse")).unwrap();
    for format in ["gnu", "posix"] {
        let out = std::process::Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf", "-", "-C"])
            .arg(&src)
            .arg("sparse")
            .output()
            .expect("GNU tar");
        assert!(out.status.success());
        assert!(out.stdout.len() < 1 << 20, "{format}: tar stored the holes");
        let layer =
            index_layer(&out.stdout[..], &LayerExpect::default(), 0, common::spool(dir.path(), 0)).unwrap();
        assert_eq!(layer.entries.len(), 1, "{format}");
        assert_eq!(read_all(&layer, "sparse"), expected, "{format}");
        let EntryKind::File(f) = &layer.entries[0].kind else { unreachable!() };
        assert_eq!(f.data_block_count(), 2, "{format}");
    }
}

#[test]
fn the_fuzz_seeds_are_valid_layers() {
    let dir = common::tempdir();
    let seeds = common::repo_root().join("fixtures/fuzz/layer");
    let mut read = 0;
    for seed in std::fs::read_dir(&seeds).unwrap() {
        let path = seed.unwrap().path();
        let blob = std::fs::read(&path).unwrap();
        let layer = index_layer(&blob[..], &LayerExpect::default(), 0, common::spool(dir.path(), 0))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!layer.entries.is_empty(), "{}", path.display());
        read += 1;
    }
    assert_eq!(read, 18, "six tars, each plain, gzip and zstd");
}
