//! Reproducible from a directory (issue 11): reading a source tree does not change it, and
//! with a source date epoch a tree copied anew (new atimes and ctimes) gives the same bytes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{diskc, run_ok};

fn mkfs(source: &Path, out: &Path, epoch: Option<&str>) -> Vec<u8> {
    let mut cmd = diskc();
    cmd.env_remove("SOURCE_DATE_EPOCH").arg("mkfs").arg(source).arg("-o").arg(out);
    if let Some(epoch) = epoch {
        cmd.args(["--source-date-epoch", epoch]);
    }
    run_ok(&mut cmd);
    std::fs::read(out).unwrap()
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    std::fs::write(root.join("etc/conf.d/a.conf"), b"alpha\n").unwrap();
    std::fs::write(root.join("data.bin"), vec![3u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("etc/conf.d/a.conf", root.join("link")).unwrap();
}

/// Regression: the first read after a change moved atimes, so two runs in a row differed.
#[test]
fn two_mkfs_of_one_directory_in_a_row_give_the_same_bytes() {
    let dir = common::tempdir();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    // Make the atimes older than the mtimes, so that relatime would update them on a read.
    run_ok(Command::new("touch").args(["-a", "-d", "2001-01-01"]).arg(tree.join("data.bin")));
    run_ok(Command::new("touch").args(["-a", "-d", "2001-01-01"]).arg(tree.join("etc/conf.d")));
    // A symlink is the exception: readlink(2) moves its atime whatever the reader asks
    // (there is no O_NOATIME for it), unless relatime spares it because its atime is already
    // past its mtime. Put it there; otherwise whether the first run moves it depends on
    // whether a clock tick passed since the link was made.
    run_ok(Command::new("touch").args(["-h", "-a", "-d", "tomorrow"]).arg(tree.join("link")));
    let first = mkfs(&tree, &dir.path().join("1.ext4"), None);
    let second = mkfs(&tree, &dir.path().join("2.ext4"), None);
    assert!(first == second, "two runs over an unchanged directory differ");
}

#[test]
fn a_tree_copied_anew_gives_the_same_bytes_with_a_source_date_epoch() {
    let dir = common::tempdir();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let copy = dir.path().join("copy");
    // cp -r (not -a): new ctimes and atimes; mtimes kept so that the clamp has work to do.
    run_ok(Command::new("cp").args(["-r", "--preserve=mode,timestamps,links"]).arg(&tree).arg(&copy));
    run_ok(Command::new("touch").args(["-a", "-d", "1999-09-09"]).arg(copy.join("data.bin")));
    let epoch = "1700000000";
    let a = mkfs(&tree, &dir.path().join("a.ext4"), Some(epoch));
    let b = mkfs(&copy, &dir.path().join("b.ext4"), Some(epoch));
    assert!(a == b, "a copy of the tree gave other bytes under --source-date-epoch");
    // And the epoch is what the image says: mtimes clamped to it.
    let stat = run_ok(Command::new("debugfs").args(["-R", "stat /data.bin"]).arg(dir.path().join("a.ext4")));
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(text.contains("mtime: 0x6553f100"), "mtime not clamped to the epoch:\n{text}");
}
