//! Links `diskc-init` statically. It runs as PID 1 from the initrd, where there is neither a
//! dynamic loader nor a libc, and the toolchain has only the glibc target (no musl).
//!
//! `-C target-feature=+crt-static` cannot be given to one binary of a package, so the static
//! link is asked of the linker for that binary alone: `-static -no-pie`, and a search
//! directory holding only static archives under the names rustc asks for (`-lgcc_s`, `-lc`,
//! ...). The linker searches `-L` directories before its defaults, so even the libraries
//! rustc requests in dynamic mode resolve to these archives. `diskc` itself stays dynamic.
//! Symbols are stripped because the binary travels in every initrd.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What rustc's std asks the linker for on linux-gnu, and the archive that provides each
/// statically (libgcc_s's unwinder is libgcc_eh when linking statically).
const ARCHIVES: &[(&str, &str)] = &[
    ("libgcc_s.a", "libgcc_eh.a"),
    ("libc.a", "libc.a"),
    ("libm.a", "libm.a"),
    ("libpthread.a", "libpthread.a"),
    ("libdl.a", "libdl.a"),
    ("librt.a", "librt.a"),
    ("libutil.a", "libutil.a"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("diskc-init-static");
    std::fs::create_dir_all(&dir).expect("create the static archive directory");
    for (name, archive) in ARCHIVES {
        let found = compiler_file(archive);
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&found, &link)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), found.display()));
    }
    let search = format!("-L{}", dir.display());
    for arg in [search.as_str(), "-static", "-no-pie", "-Wl,--strip-all"] {
        println!("cargo:rustc-link-arg-bin=diskc-init={arg}");
    }
}

/// The path of a library file as the C compiler would find it; the static glibc archives
/// come with libc6-dev, libgcc_eh with gcc.
fn compiler_file(name: &str) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc} to find {name}: {e}"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // cc echoes the bare name back when it does not find the file.
    if !path.is_absolute() || !Path::new(&path).exists() {
        panic!("{name} not found by {cc}: install libc6-dev (static glibc) to build diskc-init");
    }
    path
}
