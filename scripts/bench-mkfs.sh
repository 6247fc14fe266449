#!/usr/bin/env bash
# diskc mkfs side by side with mkfs.ext4 -d and arcbox-ext4 0.1.2 (the pure-Rust peer on
# crates.io) on one large tree (scripts/make-bench-tree.sh): wall time and peak RSS from
# /usr/bin/time -v, and each peer's ratio to diskc. Every image is checked with e2fsck -fn.
#
#   scripts/bench-mkfs.sh [TREE]     (default: the tree make-bench-tree.sh makes)
#
# The arcbox-ext4 driver is built in a scratch project outside the repository
# ($BENCH_SCRATCH, default /tmp/diskc-bench-arcbox); it is never a dependency of diskc.
set -euo pipefail

cd "$(dirname "$0")/.."
TREE=${1:-$(scripts/make-bench-tree.sh)}
OUT=${BENCH_OUT:-target/bench-mkfs}
SCRATCH=${BENCH_SCRATCH:-/tmp/diskc-bench-arcbox}
mkdir -p "$OUT"

cargo build --release --quiet --bin diskc
DISKC=target/release/diskc

# The arcbox-ext4 driver: walk the tree, create each entry with its owner, mode, times and
# data, hard links as links.
mkdir -p "$SCRATCH/src"
cat > "$SCRATCH/Cargo.toml" <<'TOML'
[package]
name = "arcbox-mkfs"
version = "0.0.0"
edition = "2021"
[dependencies]
arcbox-ext4 = "=0.1.2"
walkdir = "2"
[profile.release]
debug = false
TOML
cat > "$SCRATCH/src/main.rs" <<'RUST'
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arcbox_ext4::{FileTimestamps, Formatter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (src, out, size): (&str, &str, u64) = (&args[1], &args[2], args[3].parse().unwrap());
    let mut fmt = Formatter::new(Path::new(out), 4096, size).expect("formatter");
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut skipped = 0;
    for entry in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let Some(rel) = entry.path().strip_prefix(src).unwrap().to_str() else { skipped += 1; continue };
        let path = format!("/{rel}");
        let meta = entry.path().symlink_metadata().unwrap();
        let ts = FileTimestamps {
            access_lo: meta.atime() as u32,
            modification_lo: meta.mtime() as u32,
            creation_lo: meta.ctime() as u32,
            now_lo: meta.mtime() as u32,
            ..FileTimestamps::default()
        };
        let mode = meta.mode() as u16;
        let (uid, gid) = (Some(meta.uid()), Some(meta.gid()));
        if meta.file_type().is_file() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                fmt.link(&path, first).expect("link");
                continue;
            }
            links.insert((meta.dev(), meta.ino()), path.clone());
        }
        let result = if meta.file_type().is_file() {
            let mut f = std::fs::File::open(entry.path()).unwrap();
            fmt.create(&path, mode, None, Some(ts), Some(&mut f), uid, gid, None)
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path()).unwrap();
            fmt.create(&path, mode, target.to_str(), Some(ts), None, uid, gid, None)
        } else {
            fmt.create(&path, mode, None, Some(ts), None, uid, gid, None)
        };
        if result.is_err() {
            skipped += 1;
        }
    }
    fmt.close().expect("close");
    eprintln!("arcbox-mkfs: skipped {skipped} entries");
}
RUST
(cd "$SCRATCH" && cargo build --release --quiet)
ARCBOX="$SCRATCH/target/release/arcbox-mkfs"

# Warm the page cache so every tool reads the tree from memory. Through a pipe: GNU tar
# writing to /dev/null itself does not read the files' contents.
tar -C "$TREE" -cf - . | cat >/dev/null

# measure NAME CMD...: runs CMD under /usr/bin/time -v; sets SECS and RSS_MB.
measure() {
  local name=$1; shift
  sync
  local log="$OUT/$name.time"
  /usr/bin/time -v "$@" >"$OUT/$name.out" 2>"$log" || { echo "$name failed:"; tail -20 "$log"; exit 1; }
  SECS=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$log")
  RSS_MB=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$log")
}

files=$(find "$TREE" | wc -l)
bytes=$(du -sb "$TREE" | cut -f1)
echo "tree: $TREE ($((bytes >> 20)) MiB, $files entries)"

rm -f "$OUT/diskc.ext4"
measure diskc "$DISKC" --quiet mkfs "$TREE" -o "$OUT/diskc.ext4"
d_secs=$SECS d_rss=$RSS_MB
size=$(stat -c %s "$OUT/diskc.ext4")
e2fsck -fn "$OUT/diskc.ext4" >/dev/null

# mkfs.ext4 -d into a file of the same size, same features. mke2fs fsyncs its output and
# diskc does not, so mke2fs runs under eatmydata (when installed) to compare like with like.
rm -f "$OUT/mkfs.ext4"
truncate -s "$size" "$OUT/mkfs.ext4"
nosync=()
if command -v eatmydata >/dev/null; then nosync=(eatmydata); else echo "(eatmydata missing: mkfs.ext4 includes its fsync)"; fi
measure mkfs-ext4 "${nosync[@]}" mkfs.ext4 -q -F -b 4096 -I 256 -O metadata_csum,64bit,extent,flex_bg,huge_file,dir_nlink,extra_isize \
  -E root_owner=0:0 -d "$TREE" "$OUT/mkfs.ext4"
m_secs=$SECS m_rss=$RSS_MB
e2fsck -fn "$OUT/mkfs.ext4" >/dev/null

rm -f "$OUT/arcbox.ext4"
measure arcbox "$ARCBOX" "$TREE" "$OUT/arcbox.ext4" "$size"
a_secs=$SECS a_rss=$RSS_MB
arcbox_fsck=clean
e2fsck -fn "$OUT/arcbox.ext4" >/dev/null 2>&1 || arcbox_fsck="NOT clean"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
printf '\n%-16s %10s %12s %16s\n' tool seconds "peak RSS MiB" "time vs diskc"
printf '%-16s %10s %12s %16s\n' "diskc mkfs" "$d_secs" "$d_rss" 1.00
printf '%-16s %10s %12s %16s\n' "mkfs.ext4 -d" "$m_secs" "$m_rss" "$(ratio "$m_secs" "$d_secs")"
printf '%-16s %10s %12s %16s   (e2fsck: %s)\n' "arcbox-ext4" "$a_secs" "$a_rss" "$(ratio "$a_secs" "$d_secs")" "$arcbox_fsck"
