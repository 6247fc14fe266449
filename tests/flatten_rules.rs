//! Every flattening rule on small in-memory layers (see `src/tree/flatten.rs`).

use diskc::tree::flatten::{flatten, Entry, EntryKind, FlattenError, LayerChanges};
use diskc::tree::{DeviceNumber, FileData, FsTree, Metadata, NodeKind, Timestamp};
use proptest::prelude::*;

fn meta(mode: u16) -> Metadata {
    Metadata::with_mode(mode, Timestamp::new(1_700_000_000, 0))
}

fn dir(p: &str) -> Entry<Vec<u8>> {
    Entry { path: p.as_bytes().to_vec(), kind: EntryKind::Directory, meta: meta(0o755) }
}

fn file(p: &str, text: &str) -> Entry<Vec<u8>> {
    Entry {
        path: p.as_bytes().to_vec(),
        kind: EntryKind::File(FileData::from_bytes(text.as_bytes().to_vec())),
        meta: meta(0o644),
    }
}

fn symlink(p: &str, target: &str) -> Entry<Vec<u8>> {
    Entry {
        path: p.as_bytes().to_vec(),
        kind: EntryKind::Symlink(target.as_bytes().to_vec()),
        meta: meta(0o777),
    }
}

fn link(p: &str, target: &str) -> Entry<Vec<u8>> {
    Entry {
        path: p.as_bytes().to_vec(),
        kind: EntryKind::HardLink(target.as_bytes().to_vec()),
        meta: meta(0o644),
    }
}

fn flat(layers: &[Vec<Entry<Vec<u8>>>]) -> Result<FsTree<Vec<u8>>, FlattenError> {
    let names: Vec<String> = (0..layers.len()).map(|i| format!("layer{i}")).collect();
    let changes: Vec<_> =
        layers.iter().zip(&names).map(|(l, n)| LayerChanges { name: n, entries: l }).collect();
    flatten(&changes)
}

fn paths(t: &FsTree<Vec<u8>>) -> Vec<String> {
    t.walk().into_iter().skip(1).map(|(p, _)| String::from_utf8(p).unwrap()).collect()
}

fn text(t: &FsTree<Vec<u8>>, p: &str) -> String {
    match &t.get(t.lookup(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing"))).kind {
        NodeKind::File(f) => String::from_utf8(f.content.clone()).unwrap(),
        other => panic!("{p} is {other:?}"),
    }
}

fn base() -> Vec<Entry<Vec<u8>>> {
    vec![dir("a"), file("a/f", "lower"), dir("a/sub"), file("a/sub/g", "deep"), file("top", "t")]
}

#[test]
fn whiteouts_delete_files_and_whole_directories() {
    let t = flat(&[base(), vec![file("a/.wh.f", ""), file(".wh.top", "")]]).unwrap();
    assert_eq!(paths(&t), ["a", "a/sub", "a/sub/g"]);
    let t = flat(&[base(), vec![file("a/.wh.sub", "")]]).unwrap();
    assert_eq!(paths(&t), ["a", "a/f", "top"]);
    // A whiteout of something absent, and in an absent directory, is no error.
    assert!(flat(&[base(), vec![file("a/.wh.nothing", ""), file("none/.wh.x", "")]]).is_ok());
}

#[test]
fn a_whiteout_acts_on_lower_layers_only_wherever_it_comes() {
    for layer in
        [vec![file(".wh.top", ""), file("top", "new")], vec![file("top", "new"), file(".wh.top", "")]]
    {
        let t = flat(&[base(), layer]).unwrap();
        assert_eq!(text(&t, "top"), "new");
    }
}

#[test]
fn opaque_directories_keep_entries_of_their_own_layer() {
    let orders = [
        vec![dir("a"), file("a/.wh..wh..opq", ""), file("a/new", "n")],
        vec![dir("a"), file("a/new", "n"), file("a/.wh..wh..opq", "")],
        vec![file("a/new", "n"), file("a/.wh..wh..opq", ""), dir("a")],
    ];
    let trees: Vec<_> = orders.into_iter().map(|l| flat(&[base(), l]).unwrap()).collect();
    assert_eq!(paths(&trees[0]), ["a", "a/new", "top"]);
    assert_eq!(trees[0], trees[1], "the order inside the layer does not matter");
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn aufs_metadata_names_are_ignored() {
    let t = flat(&[base(), vec![file(".wh..wh.plnk", ""), dir(".wh..wh.orph")]]).unwrap();
    assert_eq!(paths(&t), paths(&flat(&[base()]).unwrap()));
}

#[test]
fn aufs_link_and_metadata_directories_never_reach_the_tree() {
    let layer = vec![
        dir(".wh..wh.plnk"),
        file(".wh..wh.plnk/1234.5678", "kept for links"),
        dir(".wh..wh.orph/"),
        file(".wh..wh.orph/x", ""),
        file("a/sub/.wh..wh..opq/inner", ""),
        file("a/.wh..wh.aufs", ""),
        link("bin/tool", ".wh..wh.plnk/1234.5678"),
        link("bin/tool2", "./.wh..wh.plnk/1234.5678"),
    ];
    let t = flat(&[base(), layer]).unwrap();
    assert_eq!(paths(&t), ["a", "a/f", "a/sub", "a/sub/g", "bin", "bin/tool", "bin/tool2", "top"]);
    // A link into the AUFS directory is a copy of the file kept there, as Docker makes it.
    assert_eq!(text(&t, "bin/tool"), "kept for links");
    assert_ne!(t.lookup(b"bin/tool"), t.lookup(b"bin/tool2"));
    let missing = flat(&[vec![link("x", ".wh..wh.plnk/none")]]).unwrap_err();
    assert!(matches!(missing, FlattenError::MissingLinkTarget { .. }), "{missing}");
}

#[test]
fn symlinks_are_0777_whatever_the_layer_or_a_link_header_says() {
    let mut odd = symlink("s", "target");
    odd.meta.mode = 0o644;
    let mut hard = link("s2", "s");
    hard.meta = Metadata::with_mode(0o600, Timestamp::new(5, 0));
    hard.meta.uid = 7;
    let mut to_file = link("f2", "f");
    to_file.meta = Metadata::with_mode(0o600, Timestamp::new(5, 0));
    let t = flat(&[vec![odd, hard, file("f", "x"), to_file]]).unwrap();
    let s = &t.get(t.lookup(b"s").unwrap()).meta;
    assert_eq!((s.mode, s.uid, s.mtime), (0o777, 7, Timestamp::new(1_700_000_000, 0)));
    assert_eq!(t.lookup(b"s"), t.lookup(b"s2"));
    // A link header's mode and times do reach a file.
    let f = &t.get(t.lookup(b"f").unwrap()).meta;
    assert_eq!((f.mode, f.mtime), (0o600, Timestamp::new(5, 0)));
}

#[test]
fn directory_over_directory_merges_with_the_upper_metadata() {
    let mut upper = dir("a");
    upper.meta = Metadata { uid: 7, gid: 8, ..meta(0o700) };
    upper.meta.xattrs.insert(b"user.x".to_vec(), b"1".to_vec());
    let t = flat(&[base(), vec![upper.clone(), file("a/h", "added")]]).unwrap();
    assert_eq!(paths(&t), ["a", "a/f", "a/h", "a/sub", "a/sub/g", "top"]);
    assert_eq!(t.get(t.lookup(b"a").unwrap()).meta, upper.meta);
}

#[test]
fn anything_else_replaces() {
    // file → directory, directory → file, directory → symlink, file → device.
    let t = flat(&[
        base(),
        vec![dir("top"), file("top/in", "i"), file("a/sub", "now a file"), symlink("a", "/elsewhere")],
    ])
    .unwrap();
    assert_eq!(paths(&t), ["a", "top", "top/in"]);
    assert!(matches!(&t.get(t.lookup(b"a").unwrap()).kind, NodeKind::Symlink(s) if s == b"/elsewhere"));
    let dev = Entry {
        path: b"top".to_vec(),
        kind: EntryKind::CharDevice(DeviceNumber { major: 1, minor: 3 }),
        meta: meta(0o666),
    };
    let t = flat(&[base(), vec![dev]]).unwrap();
    assert!(matches!(t.get(t.lookup(b"top").unwrap()).kind, NodeKind::CharDevice(_)));
    let t = flat(&[base(), vec![file("a/sub", "now a file")]]).unwrap();
    assert_eq!(text(&t, "a/sub"), "now a file");
    assert!(t.lookup(b"a/sub/g").is_none());
}

#[test]
fn a_later_duplicate_entry_wins() {
    let t = flat(&[vec![file("x", "first"), file("x", "second")]]).unwrap();
    assert_eq!(text(&t, "x"), "second");
    let t = flat(&[vec![file("x", "first"), dir("x"), file("x/y", "")]]).unwrap();
    assert_eq!(paths(&t), ["x", "x/y"]);
}

#[test]
fn hard_links_share_a_node_across_layers() {
    let t = flat(&[base(), vec![link("a/f2", "a/f"), link("l", "/top")]]).unwrap();
    assert_eq!(t.lookup(b"a/f2"), t.lookup(b"a/f"));
    assert_eq!(t.lookup(b"l"), t.lookup(b"top"));
    assert_eq!(t.link_counts()[t.lookup(b"top").unwrap().0 as usize], 2);
    // Within one layer, to an entry before it.
    let t = flat(&[vec![file("p", "x"), link("q", "p")]]).unwrap();
    assert_eq!(t.lookup(b"p"), t.lookup(b"q"));
}

#[test]
fn a_hard_link_whose_partner_is_deleted_keeps_its_content() {
    let t = flat(&[vec![file("p", "partner"), link("q", "p")], vec![file(".wh.p", "")]]).unwrap();
    assert_eq!(paths(&t), ["q"]);
    assert_eq!(text(&t, "q"), "partner");
    assert_eq!(t.link_counts()[t.lookup(b"q").unwrap().0 as usize], 1);
    // Replacing the partner (a copy-up in the layer above) breaks the link too.
    let t = flat(&[vec![file("p", "old"), link("q", "p")], vec![file("p", "new")]]).unwrap();
    assert_eq!((text(&t, "p").as_str(), text(&t, "q").as_str()), ("new", "old"));
}

#[test]
fn a_hard_link_to_nothing_or_a_directory_is_an_error() {
    let e = flat(&[base(), vec![link("x", "a/missing")]]).unwrap_err();
    assert!(matches!(e, FlattenError::MissingLinkTarget { .. }), "{e}");
    assert!(e.to_string().contains("layer1") && e.to_string().contains("a/missing"), "{e}");
    let e = flat(&[base(), vec![link("x", "a")]]).unwrap_err();
    assert!(matches!(e, FlattenError::LinkToDirectory { .. }), "{e}");
    // Deleted in an earlier layer: gone.
    let e = flat(&[base(), vec![file(".wh.top", "")], vec![link("x", "top")]]).unwrap_err();
    assert!(matches!(e, FlattenError::MissingLinkTarget { .. }), "{e}");
}

#[test]
fn names_that_climb_out_of_the_root_are_rejected() {
    for bad in ["../../etc/passwd", "a/../../x", "/../etc/shadow"] {
        let e = flat(&[vec![file(bad, "evil")]]).unwrap_err();
        assert!(matches!(e, FlattenError::Escapes { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(bad), "the error names the entry: {e}");
        assert_eq!(diskc::error::Classify::error_kind(&e), diskc::error::ErrorKind::BadInput);
    }
    let e = flat(&[base(), vec![link("x", "../../etc/passwd")]]).unwrap_err();
    assert!(matches!(e, FlattenError::Escapes { .. }), "{e}");
}

#[test]
fn absolute_and_dotted_names_are_taken_inside_the_root() {
    let t = flat(&[vec![file("/abs/x", "1"), file("./dot/./y", "2"), file("a/../b", "3")]]).unwrap();
    assert_eq!(paths(&t), ["abs", "abs/x", "b", "dot", "dot/y"]);
}

#[test]
fn symlinks_on_the_way_are_followed_inside_the_root() {
    let lower = vec![
        dir("usr"),
        dir("usr/lib"),
        symlink("lib", "/usr/lib"),
        symlink("up", "../../../.."),
        symlink("rel", "usr"),
    ];
    let t = flat(&[
        lower.clone(),
        vec![file("lib/x", "via abs"), file("up/etc/passwd", "confined"), file("rel/lib/y", "via rel")],
    ])
    .unwrap();
    assert_eq!(text(&t, "usr/lib/x"), "via abs");
    assert_eq!(text(&t, "usr/lib/y"), "via rel");
    assert_eq!(text(&t, "etc/passwd"), "confined", "`..` stops at the root");
    // The last component is replaced, not followed.
    let t = flat(&[lower.clone(), vec![file("lib", "replaced")]]).unwrap();
    assert_eq!(text(&t, "lib"), "replaced");
    assert!(t.lookup(b"usr/lib").is_some());
    // Whiteouts and link targets resolve the same way.
    let t = flat(&[lower.clone(), vec![file("usr/lib/z", "z")], vec![file("lib/.wh.z", "")]]).unwrap();
    assert!(t.lookup(b"usr/lib/z").is_none());
    let t = flat(&[lower, vec![file("usr/lib/z", "z"), link("zz", "lib/z")]]).unwrap();
    assert_eq!(t.lookup(b"zz"), t.lookup(b"usr/lib/z"));
}

#[test]
fn symlink_loops_and_files_on_the_way_are_errors() {
    let e = flat(&[vec![symlink("a", "b"), symlink("b", "a"), file("a/x", "")]]).unwrap_err();
    assert!(matches!(e, FlattenError::SymlinkLoop { .. }), "{e}");
    let e = flat(&[vec![file("f", ""), file("f/x", "")]]).unwrap_err();
    assert!(matches!(e, FlattenError::NotADirectory { .. }), "{e}");
}

#[test]
fn missing_parents_are_made_and_the_root_keeps_its_metadata() {
    let mut root = dir(".");
    root.meta = meta(0o700);
    let t = flat(&[vec![root, file("x/y/z", "")]]).unwrap();
    assert_eq!(paths(&t), ["x", "x/y", "x/y/z"]);
    assert_eq!(t.get(t.lookup(b"x/y").unwrap()).meta, Metadata::with_mode(0o755, Timestamp::default()));
    assert_eq!(t.get(FsTree::<Vec<u8>>::ROOT).meta.mode, 0o755);
    let e = flat(&[vec![file("./", "")]]).unwrap_err();
    assert!(matches!(e, FlattenError::RootNotDirectory { .. }), "{e}");
}

#[test]
fn the_result_depends_on_the_result_not_on_the_history() {
    // Nodes created and later deleted leave no trace: the arenas are equal.
    let direct = flat(&[vec![dir("a"), file("a/keep", "k")]]).unwrap();
    let roundabout = flat(&[
        vec![dir("a"), file("a/gone", "g"), dir("junk"), file("junk/x", "")],
        vec![file("a/keep", "k"), file(".wh.junk", ""), file("a/.wh.gone", "")],
    ])
    .unwrap();
    assert_eq!(direct, roundabout);
    assert_eq!(direct.arena_len(), 3);
}

/// Operations for random layers: names from a small set so that they collide.
fn entry_strategy() -> impl Strategy<Value = Entry<Vec<u8>>> {
    let name = prop::sample::select(vec![
        "a",
        "b",
        "a/b",
        "a/c",
        "b/a",
        "a/b/c",
        ".wh.a",
        "a/.wh.b",
        "a/.wh..wh..opq",
        "../x",
        "/a",
    ]);
    (0u8..5, name, prop::sample::select(vec!["a", "b", "a/b", "/a/c", "../b", "c"])).prop_map(
        |(kind, name, target)| match kind {
            0 => dir(name),
            1 => file(name, "data"),
            2 => symlink(name, target),
            3 => link(name, target),
            _ => Entry { path: name.as_bytes().to_vec(), kind: EntryKind::Fifo, meta: meta(0o644) },
        },
    )
}

proptest! {
    #[test]
    fn random_layers_never_panic_and_flatten_deterministically(
        layers in prop::collection::vec(prop::collection::vec(entry_strategy(), 0..8), 1..4)
    ) {
        let first = flat(&layers);
        let second = flat(&layers);
        prop_assert_eq!(first, second);
    }
}
