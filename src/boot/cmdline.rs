//! The kernel command line diskc boots with, and the `diskc.*` keys `diskc-init` reads back
//! from `/proc/cmdline`. Both sides live here so that what the host writes is exactly what
//! the guest parses (see docs/boot.md for the keys).
//!
//! Only what the init needs before it can talk to the host stays here: which disk is the
//! root and whether to mount it read-only. Everything else about a boot (command,
//! environment, user, volumes, network) travels as a [`super::guest::RunConfig`] on a
//! virtio-serial port, where neither the kernel's word splitting nor its 2 KiB limit apply.

/// `COMMAND_LINE_SIZE` on x86: the kernel keeps this many bytes, including the final NUL.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// The block device holding the root filesystem: the first virtio disk.
pub const DEFAULT_ROOT: &str = "/dev/vda";

/// Key: the root block device.
pub const KEY_ROOT: &str = "diskc.root";

/// The line `diskc-init` prints on the console when the program has exited, followed by the
/// status (0-255; 128+N for a death by signal N) and a newline: the way back from the guest,
/// which the host's QEMU runner reads.
pub const EXIT_STATUS_PREFIX: &str = "diskc-init: exit status ";

/// The command line stored in the boot manifest: the serial console, no kernel chatter,
/// a panic ends the VM at once instead of hanging it (QEMU runs with `-no-reboot`), and
/// the checks that only slow an emulated boot down are skipped: the TSC watchdog and timer
/// checks (the monitor's clock is what it is) and the crypto self-tests.
pub fn base_cmdline() -> String {
    format!("console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check cryptomgr.notests rw {KEY_ROOT}={DEFAULT_ROOT}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("the kernel command line is {len} bytes, more than the kernel's limit of {max}: shorten it")]
    TooLong { len: usize, max: usize },
}

/// The command line for one boot: the manifest's, then `ro` when the root must stay
/// read-only. Fails when it does not fit the kernel's limit.
pub fn boot_cmdline(base: &str, read_only: bool) -> Result<String, CmdlineError> {
    let mut line = base.trim().to_string();
    if read_only {
        line.push_str(" ro");
    }
    if line.len() >= COMMAND_LINE_SIZE {
        return Err(CmdlineError::TooLong { len: line.len(), max: COMMAND_LINE_SIZE - 1 });
    }
    Ok(line)
}

/// What `diskc-init` takes from the kernel command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootArgs {
    pub root: String,
    pub read_only: bool,
}

impl BootArgs {
    /// Parses `/proc/cmdline`. Unknown words are the kernel's business and are skipped; of
    /// `ro` and `rw` the last one wins, as for the kernel.
    pub fn parse(cmdline: &str) -> BootArgs {
        let mut args = BootArgs { root: DEFAULT_ROOT.to_string(), read_only: false };
        for word in cmdline.split_ascii_whitespace() {
            match word.split_once('=') {
                Some((KEY_ROOT, v)) => args.root = v.to_string(),
                None if word == "ro" => args.read_only = true,
                None if word == "rw" => args.read_only = false,
                _ => {}
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_round_trips_through_boot_args() {
        let line = boot_cmdline(&base_cmdline(), true).unwrap();
        let args = BootArgs::parse(&line);
        assert!(args.read_only);
        assert_eq!(args.root, DEFAULT_ROOT);
        let plain = BootArgs::parse(&boot_cmdline(&base_cmdline(), false).unwrap());
        assert!(!plain.read_only);
        assert_eq!(BootArgs::parse("diskc.root=/dev/vdb ro rw").root, "/dev/vdb");
        assert!(!BootArgs::parse("ro rw").read_only);
    }

    #[test]
    fn a_line_over_the_kernels_limit_is_refused() {
        let long = "x".repeat(COMMAND_LINE_SIZE);
        assert!(matches!(boot_cmdline(&long, false), Err(CmdlineError::TooLong { .. })));
    }
}
