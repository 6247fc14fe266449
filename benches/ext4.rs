//! The ext4 writer alone, without reading a source: a synthetic tree (many small files in
//! nested directories, a few large ones, symlinks and hard links) written to a sparse file.
//! `scripts/bench-mkfs.sh` measures the whole `diskc mkfs` against its peers.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use diskc::ext4::{write_image, Options};
use diskc::tree::{Directory, FileData, FsTree, Metadata, Node, NodeKind, Timestamp};

type Tree = FsTree<Arc<[u8]>>;

/// 40 directories of 500 files (1 to 32 KiB, sharing one buffer so the bench holds little
/// memory), 4 files of 32 MiB, a symlink and a hard link per directory.
fn synthetic() -> (Tree, u64) {
    let t0 = Timestamp::new(1_700_000_000, 0);
    let m = |mode| Metadata::with_mode(mode, t0);
    let buffer: Arc<[u8]> = (0..(32usize << 20)).map(|i| (i % 251) as u8 + 1).collect::<Vec<u8>>().into();
    let mut tree = Tree::new(m(0o755));
    let mut bytes = 0;
    for d in 0..40 {
        let dir = tree.add(Node::new(NodeKind::Directory(Directory::default()), m(0o755)));
        tree.insert(Tree::ROOT, format!("dir{d:02}").as_bytes(), dir).unwrap();
        let mut last = None;
        for f in 0..500u64 {
            let size = 1024 + (f * 7919 % 32) * 1024;
            bytes += size;
            let id = tree.add(Node::new(NodeKind::File(FileData::dense(size, buffer.clone())), m(0o644)));
            tree.insert(dir, format!("file{f:04}").as_bytes(), id).unwrap();
            last = Some(id);
        }
        tree.insert(dir, b"hardlink", last.unwrap()).unwrap();
        let link = tree.add(Node::new(NodeKind::Symlink(b"file0001".to_vec()), m(0o777)));
        tree.insert(dir, b"symlink", link).unwrap();
    }
    for b in 0..4 {
        let id = tree.add(Node::new(NodeKind::File(FileData::dense(32 << 20, buffer.clone())), m(0o644)));
        tree.insert(Tree::ROOT, format!("big{b}").as_bytes(), id).unwrap();
        bytes += 32 << 20;
    }
    (tree, bytes)
}

fn bench(c: &mut Criterion) {
    let (tree, bytes) = synthetic();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("bench.ext4");
    let mut group = c.benchmark_group("ext4");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("write_image 20k files + 128 MiB", |b| {
        b.iter(|| {
            let file = std::fs::File::create(&path).unwrap();
            write_image(&tree, &Options::default(), &file).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
