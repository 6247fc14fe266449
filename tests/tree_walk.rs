//! Walking a tree costs its size and depth: never the sum of its paths (quadratic in depth),
//! never a shift of the whole listing per directory (quadratic in siblings).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use diskc::tree::{Directory, FileData, FsTree, Metadata, Node, NodeId, NodeKind, Timestamp};

/// Counts the bytes each thread holds, and the most it held.
struct Counting;

thread_local! {
    static HELD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

fn track(delta: isize) {
    let _ = HELD.try_with(|h| {
        let (now, peak) = h.get();
        let now = now.saturating_add_signed(delta);
        h.set((now, peak.max(now)));
    });
}

// SAFETY: forwards to the system allocator; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: a block this allocator gave out, with its layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: as for alloc and dealloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most this thread held above what it held before, while `f` ran.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.with(|h| {
        let (now, _) = h.get();
        h.set((now, now));
        now
    });
    let out = f();
    (out, HELD.with(|h| h.get().1) - before)
}

fn meta() -> Metadata {
    Metadata::with_mode(0o755, Timestamp::default())
}

fn add_dir(t: &mut FsTree<Vec<u8>>, parent: NodeId, name: &[u8]) -> NodeId {
    let d = t.add(Node::new(NodeKind::Directory(Directory::default()), meta()));
    t.insert(parent, name, d).unwrap();
    d
}

/// A chain of `depth` directories named `dddd`, a file at its end.
fn deep(depth: usize) -> (FsTree<Vec<u8>>, NodeId, NodeId) {
    let mut t = FsTree::new(meta());
    let mut at = FsTree::<Vec<u8>>::ROOT;
    for _ in 0..depth {
        at = add_dir(&mut t, at, b"dddd");
    }
    let f = t.add(Node::new(NodeKind::File(FileData::from_bytes(b"x".to_vec())), meta()));
    t.insert(at, b"f", f).unwrap();
    (t, at, f)
}

#[test]
fn a_deep_tree_is_walked_without_a_copy_of_each_path() {
    // 20 000 levels: the paths together are a GB, the deepest 100 KB.
    let (t, last_dir, f) = deep(20_000);
    let (counts, peak) = peak_during(|| t.link_counts());
    assert_eq!((counts[f.0 as usize], counts[last_dir.0 as usize]), (1, 2));
    assert!(peak < 8 << 20, "counting links held {peak} bytes");
}

#[test]
fn sibling_directories_walk_in_linear_time() {
    let mut t = FsTree::new(meta());
    for i in 0..200_000u32 {
        let d = add_dir(&mut t, FsTree::<Vec<u8>>::ROOT, format!("d{i:07}").as_bytes());
        let f = t.add(Node::new(NodeKind::File(FileData::from_bytes(Vec::new())), meta()));
        t.insert(d, b"f", f).unwrap();
    }
    let started = Instant::now();
    let walk = t.walk();
    let counts = t.link_counts();
    let elapsed = started.elapsed();
    assert_eq!(walk.len(), 400_001);
    assert_eq!(walk[2].0, b"d0000000/f");
    assert_eq!(counts[0], 200_002);
    // Linear takes well under a second here; one shift of the listing per directory took
    // minutes.
    assert!(elapsed < Duration::from_secs(10), "walking took {elapsed:?}");
}
