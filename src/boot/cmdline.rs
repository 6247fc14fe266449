//! The kernel command line diskc boots with, and the `diskc.*` keys `diskc-init` reads back
//! from `/proc/cmdline`. Both sides live here so that what the host writes is exactly what
//! the guest parses (see docs/boot.md for the keys).
//!
//! A replacement command (`diskc boot -- CMD...`) travels on the command line too. Its
//! arguments may hold any bytes but NUL, and the kernel splits the line at spaces and
//! interprets quotes, so they are encoded: each argument followed by a NUL, the whole in
//! unpadded URL-safe base64, whose alphabet the kernel passes through untouched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// `COMMAND_LINE_SIZE` on x86: the kernel keeps this many bytes, including the final NUL.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// The block device holding the root filesystem: the first virtio disk.
pub const DEFAULT_ROOT: &str = "/dev/vda";

/// The hostname the guest gets unless `diskc.hostname=` says otherwise.
pub const DEFAULT_HOSTNAME: &str = "diskc";

/// Key: the argv that replaces the image's CMD for this boot (encoded, see the module doc).
pub const KEY_CMD: &str = "diskc.cmd";
/// Key: the root block device.
pub const KEY_ROOT: &str = "diskc.root";
/// Key: the guest's hostname.
pub const KEY_HOSTNAME: &str = "diskc.hostname";

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
    #[error(
        "the kernel command line is {len} bytes, more than the kernel's limit of {max}: shorten the command"
    )]
    TooLong { len: usize, max: usize },
    #[error("command argument {0} contains a NUL byte, which no argv can carry")]
    NulInArgument(usize),
    #[error("{KEY_CMD} is not valid base64url")]
    BadEncoding,
}

/// Encodes an argv for [`KEY_CMD`].
pub fn encode_argv(argv: &[Vec<u8>]) -> Result<String, CmdlineError> {
    let mut raw = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if arg.contains(&0) {
            return Err(CmdlineError::NulInArgument(i));
        }
        raw.extend_from_slice(arg);
        raw.push(0);
    }
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// Decodes what [`encode_argv`] made.
pub fn decode_argv(text: &str) -> Result<Vec<Vec<u8>>, CmdlineError> {
    let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| CmdlineError::BadEncoding)?;
    // Every argument ends with a NUL, so anything after the last NUL is corrupt.
    if raw.last().is_some_and(|&b| b != 0) {
        return Err(CmdlineError::BadEncoding);
    }
    let mut argv: Vec<Vec<u8>> = raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    // The empty piece after the final NUL.
    argv.pop();
    Ok(argv)
}

/// The command line for one boot: the manifest's, then `ro` when the root must stay
/// read-only, then the replacement command. Fails when it does not fit the kernel's limit.
pub fn boot_cmdline(base: &str, read_only: bool, cmd: Option<&[Vec<u8>]>) -> Result<String, CmdlineError> {
    let mut line = base.trim().to_string();
    if read_only {
        line.push_str(" ro");
    }
    if let Some(argv) = cmd {
        line.push_str(&format!(" {KEY_CMD}={}", encode_argv(argv)?));
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
    pub hostname: String,
    /// Replaces the image's CMD (the ENTRYPOINT stays), as `docker run IMAGE CMD...` does.
    pub cmd: Option<Vec<Vec<u8>>>,
}

impl BootArgs {
    /// Parses `/proc/cmdline`. Unknown words are the kernel's business and are skipped; of
    /// `ro` and `rw` the last one wins, as for the kernel.
    pub fn parse(cmdline: &str) -> Result<BootArgs, CmdlineError> {
        let mut args = BootArgs {
            root: DEFAULT_ROOT.to_string(),
            read_only: false,
            hostname: DEFAULT_HOSTNAME.to_string(),
            cmd: None,
        };
        for word in cmdline.split_ascii_whitespace() {
            match word.split_once('=') {
                Some((KEY_ROOT, v)) => args.root = v.to_string(),
                Some((KEY_HOSTNAME, v)) => args.hostname = v.to_string(),
                Some((KEY_CMD, v)) => args.cmd = Some(decode_argv(v)?),
                None if word == "ro" => args.read_only = true,
                None if word == "rw" => args.read_only = false,
                _ => {}
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trips_any_bytes() {
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![b"".to_vec()],
            vec![b"sh".to_vec(), b"-c".to_vec(), b"echo 'a b' \"c\" $HOME; exit 7".to_vec()],
            vec![(1u8..=255).collect(), b"".to_vec(), b"=x= y".to_vec()],
        ];
        for argv in cases {
            let text = encode_argv(&argv).unwrap();
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{text}");
            assert_eq!(decode_argv(&text).unwrap(), argv);
        }
    }

    #[test]
    fn cmdline_round_trips_through_boot_args() {
        let argv = vec![b"/bin/echo".to_vec(), b"hello world".to_vec()];
        let line = boot_cmdline(&base_cmdline(), true, Some(&argv)).unwrap();
        let args = BootArgs::parse(&line).unwrap();
        assert_eq!(args.cmd, Some(argv));
        assert!(args.read_only);
        assert_eq!(args.root, DEFAULT_ROOT);
        let plain = BootArgs::parse(&boot_cmdline(&base_cmdline(), false, None).unwrap()).unwrap();
        assert!(!plain.read_only);
        assert_eq!(plain.cmd, None);
    }

    #[test]
    fn rejects_what_cannot_travel() {
        assert_eq!(encode_argv(&[b"a\0b".to_vec()]), Err(CmdlineError::NulInArgument(0)));
        let long = vec![vec![b'x'; COMMAND_LINE_SIZE]];
        assert!(matches!(
            boot_cmdline("console=ttyS0", false, Some(&long)),
            Err(CmdlineError::TooLong { .. })
        ));
        assert_eq!(decode_argv("YQ"), Err(CmdlineError::BadEncoding), "'a' without its NUL");
        assert_eq!(decode_argv("!!"), Err(CmdlineError::BadEncoding));
    }
}
