use super::header::*;
use super::pax::parse_time;
use super::*;

#[path = "../../../tests/common/rawtar.rs"]
mod rawtar;

use rawtar::{pax_record, Header, Tar};

/// Every entry of `bytes` with its data, or the first error.
fn read_all(bytes: &[u8]) -> Result<Vec<(TarEntry, Vec<u8>)>, TarError> {
    let mut reader = TarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        let mut data = Vec::new();
        reader.data().read_to_end(&mut data).map_err(TarError::Read)?;
        out.push((entry, data));
    }
    Ok(out)
}

fn paths(bytes: &[u8]) -> Vec<String> {
    read_all(bytes).unwrap().iter().map(|(e, _)| String::from_utf8_lossy(&e.path).into_owned()).collect()
}

fn error(bytes: &[u8]) -> String {
    match read_all(bytes) {
        Ok(entries) => {
            panic!("read without error: {:?}", entries.iter().map(|e| &e.0.path).collect::<Vec<_>>())
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn pax_values_holding_newlines_and_nuls_are_split_by_their_length() {
    // setcap cap_dac_override,cap_fowner+ep: the capability's bytes hold 0x0a.
    let cap = [1, 0, 0, 2, 0x0a, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // An ACL entry for uid 10 holds 0x0a too.
    let acl = [2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 6, 0, 10, 0, 0, 0];
    let tar = Tar::new()
        .special(b'g', &pax_record(b"comment", b"line one\nline two"))
        .pax(&[
            (b"path", b"dir/new\nline"),
            (b"SCHILY.xattr.security.capability", &cap),
            (b"SCHILY.xattr.system.posix_acl_access", &acl),
            (b"SCHILY.xattr.user.bin", b"\0\n\0"),
        ])
        .file(b"placeholder", b"data")
        .pax(&[(b"linkpath", b"target\nwith newline")])
        .entry(Header::ustar(b"link", b'2', 0), b"")
        .finish();
    let entries = read_all(&tar).unwrap();
    assert_eq!(entries.len(), 2, "the global header is no entry");
    let (file, data) = &entries[0];
    assert_eq!(file.path, b"dir/new\nline");
    assert_eq!(data, b"data");
    assert_eq!(file.xattrs[&b"security.capability"[..]], cap);
    assert_eq!(file.xattrs[&b"system.posix_acl_access"[..]], acl);
    assert_eq!(file.xattrs[&b"user.bin"[..]], b"\0\n\0");
    assert_eq!(entries[1].0.link, b"target\nwith newline");
}

#[test]
fn a_repeated_pax_key_takes_its_last_value() {
    let tar = Tar::new()
        .pax(&[(b"path", b"first"), (b"uid", b"1"), (b"size", b"3"), (b"path", b"last"), (b"uid", b"2")])
        .pax(&[(b"size", b"5")])
        .file(b"header-name", b"hello")
        .pax(&[(b"linkpath", b"a"), (b"linkpath", b"b")])
        .entry(Header::ustar(b"sym", b'2', 0), b"")
        .finish();
    let entries = read_all(&tar).unwrap();
    // A second extended header replaces the first, as in Go: `size` alone remains.
    assert_eq!(entries[0].0.path, b"header-name");
    assert_eq!(entries[0].1, b"hello");
    assert_eq!(entries[1].0.link, b"b");
    let tar = Tar::new()
        .pax(&[(b"path", b"first"), (b"uid", b"1"), (b"path", b"last"), (b"uid", b"2"), (b"size", b"2")])
        .file(b"x", b"hi")
        .finish();
    let (e, data) = &read_all(&tar).unwrap()[0];
    assert_eq!((e.path.as_slice(), e.uid, data.as_slice()), (&b"last"[..], 2, &b"hi"[..]));
}

#[test]
fn headers_before_a_global_header_apply_to_nothing() {
    // Go reads the global header as an entry of its own, which the extended header and
    // long name before it then belong to; Docker skips it, and so the next entry keeps its
    // own name.
    let tar = Tar::new()
        .pax(&[(b"path", b"evil")])
        .special(b'L', b"evil-too")
        .special(b'g', &pax_record(b"comment", b"global"))
        .file(b"benign", b"")
        .finish();
    assert_eq!(paths(&tar), ["benign"]);
}

#[test]
fn an_empty_pax_value_leaves_the_header_field() {
    let tar = Tar::new()
        .pax(&[(b"path", b"pax-name"), (b"path", b""), (b"uid", b"")])
        .file(b"ustar-name", b"")
        .finish();
    let (e, _) = &read_all(&tar).unwrap()[0];
    assert_eq!((e.path.as_slice(), e.uid), (&b"ustar-name"[..], 0));
}

#[test]
fn header_only_types_carry_no_data_whatever_their_size_says() {
    // Each header claims one block of data that is really the next header.
    let hidden = Header::ustar(b"hidden", b'0', 0).bytes();
    let mut tar = Tar::new();
    for typeflag in *b"123456" {
        let name = [b"entry-", &[typeflag][..]].concat();
        tar = tar.entry(Header::ustar(&name, typeflag, 512).link(b"target"), b"").raw(&hidden);
    }
    let got = paths(&tar.finish());
    assert_eq!(got.iter().filter(|p| *p == "hidden").count(), 6, "{got:?}");
    // A PAX size on a header-only type is ignored as well.
    let tar =
        Tar::new().pax(&[(b"size", b"512")]).entry(Header::ustar(b"d/", b'5', 0), b"").raw(&hidden).finish();
    assert_eq!(paths(&tar), ["d/", "hidden"]);
}

#[test]
fn a_lone_zero_block_inside_the_archive_is_an_error() {
    let tar = Tar::new().file(b"a", b"1").raw(&[0; 512]).file(b"after", b"2").finish();
    assert!(error(&tar).contains("single zero block"), "{}", error(&tar));
    // Two zero blocks end it; what follows is not read as entries.
    let tar = Tar::new().file(b"a", b"1").raw(&[0; 1024]).file(b"after", b"2").finish();
    assert_eq!(paths(&tar), ["a"]);
    // So does the end of the stream at a header, or after one zero block.
    assert_eq!(paths(&Tar::new().file(b"a", b"1").bytes), ["a"]);
    assert_eq!(paths(&Tar::new().file(b"a", b"1").raw(&[0; 512]).bytes), ["a"]);
    assert!(paths(&[]).is_empty());
}

#[test]
fn non_numeric_pax_ids_and_times_are_refused() {
    for (key, value) in [
        (&b"uid"[..], &b"12x"[..]),
        (b"gid", b"-1"),
        (b"gid", b" 5"),
        (b"mtime", b"yesterday"),
        (b"mtime", b"1.2.3"),
        (b"atime", b"1e9"),
        (b"size", b"0x10"),
    ] {
        let tar = Tar::new().pax(&[(key, value)]).file(b"f", b"").finish();
        let e = error(&tar);
        assert!(e.contains("\"f\"") && e.contains(&String::from_utf8_lossy(key).to_string()), "{e}");
    }
}

#[test]
fn nul_bytes_in_names_targets_and_xattr_names_are_refused() {
    let cases: [&[(&[u8], &[u8])]; 5] = [
        &[(b"path", b"a\0b")],
        &[(b"linkpath", b"/etc/passwd\0x")],
        &[(b"SCHILY.xattr.user.a\0b", b"v")],
        &[(b"SCHILY.xattr.user.", b"v")],
        &[(b"SCHILY.xattr.nonamespace", b"v")],
    ];
    for records in cases {
        let tar = Tar::new().pax(records).entry(Header::ustar(b"f", b'2', 0).link(b"t"), b"").finish();
        let e = error(&tar);
        assert!(e.contains("NUL") || e.contains("xattr name"), "{records:?}: {e}");
    }
}

#[test]
fn base256_numbers_keep_their_sign() {
    let h = Header::gnu(b"old", b'0', 0).base256(MTIME, -100).base256(UID, 4_000_000_000);
    let tar = Tar::new().entry(h, b"").entry(Header::gnu(b"big", b'0', 0).base256(SIZE, 3), b"abc").finish();
    let entries = read_all(&tar).unwrap();
    assert_eq!(entries[0].0.mtime, Timestamp::new(-100, 0));
    assert_eq!(entries[0].0.uid, 4_000_000_000);
    assert_eq!(entries[1].1, b"abc");
    let negative_size = Tar::new().entry(Header::gnu(b"neg", b'0', 0).base256(SIZE, -1), b"").finish();
    assert!(error(&negative_size).contains("negative"));
    assert_eq!(numeric(&[0xff; 12]), Ok(-1));
    assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Ok(256));
    assert!(numeric(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(), "overflow");
}

#[test]
fn pax_times_before_1970_and_with_fractions() {
    assert_eq!(parse_time(b"-100"), Some(Timestamp::new(-100, 0)));
    assert_eq!(parse_time(b"-1.25"), Some(Timestamp::new(-2, 750_000_000)));
    assert_eq!(parse_time(b"5.1234567891"), Some(Timestamp::new(5, 123_456_789)));
    assert_eq!(parse_time(b"5."), Some(Timestamp::new(5, 0)));
    for bad in [&b""[..], b"-", b".5", b"5.x", b"5.1234567891x", b"99999999999999999999"] {
        assert_eq!(parse_time(bad), None, "{bad:?}");
    }
}

#[test]
fn paths_and_targets_past_path_max_are_refused() {
    let long = vec![b'a'; PATH_MAX];
    let ok = vec![b'a'; PATH_MAX - 1];
    assert_eq!(read_all(&Tar::new().pax(&[(b"path", &ok)]).file(b"f", b"").finish()).unwrap()[0].0.path, ok);
    for tar in [
        Tar::new().pax(&[(b"path", &long)]).file(b"f", b"").finish(),
        Tar::new().special(b'L', &long).file(b"f", b"").finish(),
        Tar::new().special(b'K', &long).entry(Header::ustar(b"f", b'1', 0), b"").finish(),
    ] {
        assert!(error(&tar).contains("PATH_MAX"), "{}", error(&tar));
    }
}

#[test]
fn huge_extended_headers_are_refused_before_they_are_read() {
    // Claims a GiB; the archive holds a block. Refused on the claim, not after reading.
    let h = Header::ustar(b"pax", b'x', 1 << 30);
    let tar = Tar::new().entry(h, b"").finish();
    assert!(error(&tar).contains("extended header of 1073741824 bytes"), "{}", error(&tar));
}

#[test]
fn malformed_pax_records_are_errors() {
    for data in [
        &b"5 a=1\n"[..],
        b"7 a=1\n",
        b"x a=1\n",
        b"6 a=1\nextra",
        b"4 a\n",
        b"6 =ab\n",
        b"99999999999999999999999 a=b\n",
    ] {
        let tar = Tar::new().special(b'x', data).file(b"f", b"").finish();
        assert!(error(&tar).contains("PAX"), "{data:?}: {}", error(&tar));
        let global = Tar::new().special(b'g', data).file(b"f", b"").finish();
        assert!(error(&global).contains("PAX"), "global {data:?}");
    }
}

#[test]
fn gnu_long_names_and_links_and_ustar_prefixes() {
    let name = [b"d/".repeat(100), b"file".to_vec()].concat();
    let target = b"t/".repeat(80);
    let tar = Tar::new()
        .special(b'L', &[&name[..], b"\0"].concat())
        .special(b'K', &target)
        .entry(Header::gnu(b"short", b'1', 0), b"")
        .entry(Header::ustar(b"name", b'0', 0).set(rawtar::PREFIX, b"the/prefix"), b"")
        .entry(Header::ustar(b"v7dir/", b'\0', 0).set(rawtar::MAGIC, &[0; 8]), b"")
        .finish();
    let entries = read_all(&tar).unwrap();
    assert_eq!((entries[0].0.path.as_slice(), entries[0].0.link.as_slice()), (&name[..], &target[..]));
    assert_eq!(entries[0].0.kind, Kind::HardLink);
    assert_eq!(entries[1].0.path, b"the/prefix/name");
    assert_eq!(entries[2].0.kind, Kind::Directory);
}

#[test]
fn prefixes_are_read_where_go_reads_them() {
    // The ustar magic without its version is still ustar to Go: the prefix counts.
    let no_version =
        Header::ustar(b"name", b'0', 0).set(rawtar::MAGIC, b"ustar\0\0\0").set(rawtar::PREFIX, b"pre");
    // A GNU header from Go before 1.8: a prefix where the times would be.
    let old_go = Header::gnu(b"name", b'0', 0).set(rawtar::PREFIX, b"old/go");
    // A GNU header whose times are times: no prefix.
    let gnu = Header::gnu(b"name", b'0', 0).octal(345..357, 5).octal(357..369, 5);
    let tar = Tar::new().entry(no_version, b"").entry(old_go, b"").entry(gnu, b"").finish();
    assert_eq!(paths(&tar), ["pre/name", "old/go/name", "name"]);
}

#[test]
fn a_bad_checksum_is_an_error() {
    let mut tar = Tar::new().file(b"a", b"x").finish();
    tar[0] = b'b';
    assert!(error(&tar).contains("checksum"));
}

#[test]
fn old_gnu_sparse_maps_span_extension_blocks() {
    // Five segments: four in the header, one in an extension block.
    let mut h = Header::gnu(b"sparse", b'S', 5).octal(rawtar::GNU_REAL_SIZE, 1 << 20);
    for i in 0..4u64 {
        let at = rawtar::GNU_SPARSE.start + 24 * i as usize;
        h = h.octal(at..at + 12, i * 8192).octal(at + 12..at + 24, 1);
    }
    h.block[rawtar::GNU_IS_EXTENDED] = 1;
    let mut ext = [0u8; 512];
    ext[..12].copy_from_slice(format!("{:011o}\0", 1u64 << 19).as_bytes());
    ext[12..24].copy_from_slice(b"00000000001\0");
    let mut bytes = h.bytes().to_vec();
    bytes.extend_from_slice(&ext);
    let tar = Tar::new().raw(&bytes).data(b"abcde").finish();
    let (e, data) = &read_all(&tar).unwrap()[0];
    let want = vec![(0, 1), (8192, 1), (16384, 1), (24576, 1), (1 << 19, 1)];
    assert_eq!(e.sparse, Some(SparseFile { real_size: 1 << 20, map: Sparse::Segments(want) }));
    assert_eq!(data, b"abcde");
    assert_eq!(e.data_offset, 1024);
}

#[test]
fn pax_sparse_members_take_their_real_name() {
    let tar = Tar::new()
        .pax(&[
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", b"real/name"),
            (b"GNU.sparse.realsize", b"17592186044416"),
        ])
        .file(b"./GNUSparseFile.1/name", b"")
        .finish();
    let (e, _) = &read_all(&tar).unwrap()[0];
    assert_eq!(e.path, b"real/name");
    assert_eq!(e.sparse, Some(SparseFile { real_size: 1 << 44, map: Sparse::MapInData }));
    let old = Tar::new().pax(&[(b"GNU.sparse.size", b"10")]).file(b"f", b"").finish();
    assert!(error(&old).contains("0.x"));
}

#[test]
fn a_seekable_reader_skips_data_and_sees_a_cut_archive() {
    let tar = Tar::new().file(b"a", &[7; 3000]).file(b"b", b"bb").finish();
    let mut reader = TarReader::seekable(io::Cursor::new(&tar));
    assert_eq!(reader.next_entry().unwrap().unwrap().data_offset, 512);
    let b = reader.next_entry().unwrap().unwrap();
    assert_eq!((b.path.as_slice(), b.data_offset), (&b"b"[..], 512 + 3072 + 512));
    assert!(reader.next_entry().unwrap().is_none());
    let mut cut = TarReader::seekable(io::Cursor::new(&tar[..2000]));
    cut.next_entry().unwrap();
    assert!(matches!(cut.next_entry(), Err(TarError::Read(_))));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One entry as the property tests write it.
    #[derive(Clone, Debug)]
    struct Written {
        path: Vec<u8>,
        kind: u8,
        data: Vec<u8>,
        uid: u32,
        mtime: i64,
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    fn written() -> impl Strategy<Value = Written> {
        (
            prop::collection::vec(1u8..=255, 1..300),
            prop::sample::select(vec![b'0', b'5', b'2', b'6']),
            prop::collection::vec(any::<u8>(), 0..1100),
            any::<u32>(),
            -(1i64 << 40)..(1i64 << 40),
            prop::collection::btree_map(
                "[a-z]{1,8}".prop_map(|n| format!("user.{n}").into_bytes()),
                prop::collection::vec(any::<u8>(), 0..40),
                0..4,
            ),
        )
            .prop_map(|(path, kind, data, uid, mtime, xattrs)| Written {
                path,
                kind,
                data,
                uid,
                mtime,
                xattrs,
            })
    }

    /// Every field in PAX records, so any name bytes and any number go through.
    fn archive(entries: &[Written]) -> Vec<u8> {
        let mut tar = Tar::new();
        for e in entries {
            let (uid, mtime) = (e.uid.to_string(), e.mtime.to_string());
            let mut records: Vec<(&[u8], &[u8])> =
                vec![(b"path", &e.path), (b"uid", uid.as_bytes()), (b"mtime", mtime.as_bytes())];
            let keys: Vec<Vec<u8>> = e.xattrs.keys().map(|k| [&b"SCHILY.xattr."[..], k].concat()).collect();
            records.extend(keys.iter().map(Vec::as_slice).zip(e.xattrs.values().map(Vec::as_slice)));
            let data: &[u8] = if e.kind == b'0' { &e.data } else { b"" };
            // Header-only types claim the data's size, which must not count.
            let header = Header::ustar(b"ignored", e.kind, e.data.len() as u64).link(b"target");
            tar = tar.pax(&records).entry(header, data);
        }
        tar.finish()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn what_is_written_is_read(entries in prop::collection::vec(written(), 0..6)) {
            let got = read_all(&archive(&entries)).unwrap();
            prop_assert_eq!(got.len(), entries.len());
            for ((e, data), w) in got.iter().zip(&entries) {
                prop_assert_eq!(&e.path, &w.path);
                prop_assert_eq!(e.kind, Kind::of(w.kind));
                prop_assert_eq!((e.uid, e.mtime), (u64::from(w.uid), Timestamp::new(w.mtime, 0)));
                prop_assert_eq!(&e.xattrs, &w.xattrs);
                let want: &[u8] = if w.kind == b'0' { &w.data } else { b"" };
                prop_assert_eq!(data.as_slice(), want);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
            let _ = read_all(&bytes);
        }

        #[test]
        fn damaged_archives_never_panic(
            entries in prop::collection::vec(written(), 1..4),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = archive(&entries);
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = read_all(&bytes);
            let _ = read_all(&bytes[..cut.index(bytes.len())]);
        }
    }
}
