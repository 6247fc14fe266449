//! `diskc boot ID|NAME|OUTDIR [-- CMD...]`: runs a built image under QEMU with the guest
//! console on stdout, and exits with the guest program's exit status.
//!
//! A directory is an OUTDIR of `diskc build`/`convert`, booted in place. Anything else names
//! an image in the store; its rootfs, kernel and initrd are exported into a private
//! temporary directory (under `$TMPDIR`, removed after the boot) because QEMU needs files.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use diskc::boot::{BootError, BootSpec, RunOptions};
use diskc::error::{Error, ResultExt, UsageError};
use diskc::store::StoreError;

use super::store::StoreArgs;

#[derive(Args, Debug)]
pub struct BootArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// An image in the store (id, unambiguous id prefix or name), or the output directory of
    /// `diskc build`/`convert` (manifest.json, rootfs.ext4, vmlinuz, initrd.img).
    #[arg(value_name = "ID|NAME|OUTDIR")]
    pub image: String,
    /// Guest memory: MiB, or with a suffix M or G.
    #[arg(long, default_value = "256", value_name = "M")]
    pub memory: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Kill the guest after S seconds (exit code 3); 0 or none: no limit.
    #[arg(long, value_name = "S")]
    pub timeout: Option<u64>,
    /// Attach the root disk read-only and mount it so.
    #[arg(long)]
    pub read_only: bool,
    /// Replaces the image's CMD for this boot (the ENTRYPOINT stays).
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// MiB from `256`, `256M` or `2G`.
fn parse_memory(text: &str) -> Result<u32, UsageError> {
    let bad = || UsageError(format!("--memory {text:?}: expected MiB, e.g. 256, 256M or 2G"));
    let (digits, factor) = match text.as_bytes().last() {
        Some(b'M' | b'm') => (&text[..text.len() - 1], 1),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 1024),
        _ => (text, 1),
    };
    let n: u32 = digits.parse().map_err(|_| bad())?;
    let mib = n.checked_mul(factor).ok_or_else(bad)?;
    if mib < 64 {
        return Err(UsageError(format!("--memory {text:?}: the guest needs at least 64 MiB")));
    }
    Ok(mib)
}

pub fn run(args: BootArgs) -> Result<u8, Error> {
    let memory_mib = parse_memory(&args.memory)?;
    if args.cpus == 0 {
        return Err(UsageError("--cpus must be at least 1".into()).into());
    }
    let outdir = PathBuf::from(&args.image);
    // `_exported` lives until the boot has ended: a stored image's files are in it.
    let (spec, _exported) = if outdir.is_dir() {
        (BootSpec::from_outdir(&outdir)?, None)
    } else {
        let store = args.store.open()?;
        let dir = tempfile::Builder::new()
            .prefix("diskc-boot-")
            .tempdir()
            .context("cannot create a temporary directory for the image's files")?;
        let spec = BootSpec::from_store(&store, &args.image, dir.path()).map_err(|e| {
            let root = store.root().display();
            let context = match &e {
                BootError::Store(StoreError::NotFound(_)) => {
                    format!("{:?} is neither a directory nor an image in the store at {root}", args.image)
                }
                _ => format!("booting {} from the store at {root}", args.image),
            };
            Error::from(e).context(context)
        })?;
        (spec, Some(dir))
    };
    let opts = RunOptions {
        memory_mib,
        cpus: args.cpus,
        timeout: args.timeout.filter(|&s| s > 0).map(Duration::from_secs),
        read_only: args.read_only,
        cmd: (!args.cmd.is_empty()).then(|| args.cmd.into_iter().map(OsString::into_vec).collect()),
        ..RunOptions::default()
    };
    let status = diskc::boot::run(&spec, &opts, &mut std::io::stdout().lock())
        .with_context(|| format!("booting {}", args.image))?;
    Ok(u8::try_from(status).unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256").unwrap(), 256);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert!(parse_memory("32").is_err());
        assert!(parse_memory("lots").is_err());
    }
}
