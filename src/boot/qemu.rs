//! Runs a prepared image under QEMU for `diskc boot`: the guest console on the caller's
//! writer, the guest program's exit status read back from the one fixed line `diskc-init`
//! prints before powering off.
//!
//! The machine is `pc` without the devices a diskc guest never uses (`-nodefaults`, no
//! i8042, SMBus, SATA, USB or vmport, whose probing costs boot time), qboot instead of
//! SeaBIOS as firmware (it only loads the kernel), and a virtio-pci disk. `microvm` would emulate less, but it has neither HPET nor ACPI PM timer:
//! under TCG on a loaded host the kernel's TSC calibration against the PIT fails and the
//! boot hangs with no clock source; `pc` boots as fast and always has a reference clock.
//! KVM is used when it can run a guest, TCG otherwise.
//!
//! Writes to the root disk go to a throwaway overlay (`snapshot=on`): the image file is
//! content-addressed and must not change by being booted. `--read-only` instead attaches
//! it read-only and tells the init to mount it so.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::{cmdline, BootError};

/// How long QEMU may take to end after SIGTERM before it is killed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The QEMU binary for x86-64 guests (Debian package qemu-system-x86).
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The files of a prepared image and the manifest's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

/// How to run one boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Kill the guest after this long.
    pub timeout: Option<Duration>,
    pub read_only: bool,
    /// Replaces the image's CMD for this boot.
    pub cmd: Option<Vec<Vec<u8>>>,
    pub qemu: PathBuf,
    /// `None`: KVM when it works, else TCG.
    pub kvm: Option<bool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            memory_mib: 256,
            cpus: 1,
            timeout: None,
            read_only: false,
            cmd: None,
            qemu: PathBuf::from(QEMU_BINARY),
            kvm: None,
        }
    }
}

/// Whether KVM can actually run a guest here. The device node may exist and even create a
/// VM while the CPU offers no virtualization (a nested VM without vmx/svm), and QEMU then
/// aborts on its first MSR write, so the CPU flags are checked too.
pub fn kvm_works() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virtualization = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_ascii_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virtualization {
        return false;
    }
    // ioctl numbers from <linux/kvm.h>: _IO(KVMIO = 0xAE, 0x01).
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let Ok(dev) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a new fd or -1;
    // it touches no memory of ours.
    let vm = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: `vm` is a file descriptor we own and use no more.
    unsafe { libc::close(vm) };
    true
}

/// QEMU's command line for a boot (without the binary).
pub fn qemu_args(spec: &BootSpec, opts: &RunOptions, kvm: bool) -> Result<Vec<OsString>, BootError> {
    let line = cmdline::boot_cmdline(&spec.cmdline, opts.read_only, opts.cmd.as_deref())?;
    let drive_mode = if opts.read_only { "readonly=on" } else { "snapshot=on" };
    let mut drive = OsString::from("id=root,if=none,format=raw,");
    drive.push(drive_mode);
    drive.push(",file=");
    drive.push(qemu_escape(&spec.rootfs));
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["-M", "pc,i8042=off,smbus=off,sata=off,usb=off,vmport=off", "-bios", "qboot.rom"]);
    if kvm {
        push(&["-accel", "kvm", "-cpu", "host"]);
    } else {
        push(&["-accel", "tcg"]);
    }
    push(&["-m", &opts.memory_mib.to_string(), "-smp", &opts.cpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-serial", "stdio"]);
    push(&["-device", "virtio-blk-pci,drive=root", "-append", &line]);
    args.extend([
        "-kernel".into(),
        spec.kernel.clone().into_os_string(),
        "-initrd".into(),
        spec.initrd.clone().into_os_string(),
    ]);
    args.extend(["-drive".into(), drive]);
    Ok(args)
}

/// QEMU option values end at a comma; a literal comma is written twice.
fn qemu_escape(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// The status in a console line, if it is the exit-status line.
pub fn parse_exit_status(line: &[u8]) -> Option<i32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(cmdline::EXIT_STATUS_PREFIX.as_bytes())?;
    let text = std::str::from_utf8(digits).ok()?;
    let status: i32 = text.parse().ok()?;
    (0..=255).contains(&status).then_some(status)
}

/// Boots the image and returns the guest program's exit status. The guest console (its
/// serial port) is copied to `console` as it arrives, with the serial line's CR LF turned
/// back into LF, up to and including the exit-status line (after it comes only the
/// kernel's power-off message).
pub fn run(spec: &BootSpec, opts: &RunOptions, console: &mut dyn Write) -> Result<i32, BootError> {
    let kvm = opts.kvm.unwrap_or_else(kvm_works);
    let args = qemu_args(spec, opts, kvm)?;
    for file in [&spec.kernel, &spec.initrd, &spec.rootfs] {
        std::fs::metadata(file).map_err(|e| BootError::Read(file.clone(), e))?;
    }
    tracing::info!(qemu = %opts.qemu.display(), kvm, "booting");
    let mut child = Command::new(&opts.qemu)
        .args(&args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BootError::QemuMissing(opts.qemu.display().to_string()),
            _ => BootError::Qemu(format!("cannot start {}: {e}", opts.qemu.display())),
        })?;

    let pid = child.id() as libc::pid_t;
    let timed_out = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = opts.timeout.map(|limit| {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
                timed_out.store(true, Ordering::SeqCst);
                // SIGTERM first: QEMU then restores a terminal it put in raw mode.
                // SAFETY: `pid` is our child, not yet waited for, so the id is still its.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(KILL_GRACE) {
                    // SAFETY: as above; the main thread has not waited for it yet.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        })
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut stdout = child.stdout.take().expect("stdout is piped");
    let copied = copy_console(&mut stdout, console);
    // Wait for QEMU to end without reaping it, and stop the watchdog before reaping: until
    // then the pid cannot be reused, so the watchdog never signals another process.
    // SAFETY: `info` is a valid out-parameter; WNOWAIT leaves the child waitable.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT);
    }
    drop(done_tx);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    let status = child.wait().map_err(|e| BootError::Qemu(format!("waiting for qemu: {e}")))?;
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    if timed_out.load(Ordering::SeqCst) {
        return Err(BootError::Timeout(opts.timeout.map_or(0, |t| t.as_secs())));
    }
    let exit_status = copied.map_err(|e| BootError::Qemu(format!("copying the console: {e}")))?;
    match exit_status {
        Some(code) => Ok(code),
        None if !status.success() => Err(BootError::Qemu(format!("{status}: {}", qemu_stderr.trim()))),
        None => Err(BootError::NoExitStatus),
    }
}

/// Copies the console stream up to the exit-status line, returning its status. The rest is
/// read and dropped so that QEMU never blocks on a full pipe.
fn copy_console(input: &mut dyn Read, output: &mut dyn Write) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let mut status = None;
    let mut pending_cr = false;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if status.is_some() {
            continue;
        }
        let mut out = Vec::with_capacity(n + 1);
        for &b in &buf[..n] {
            if status.is_some() {
                break;
            }
            if pending_cr && b != b'\n' {
                out.push(b'\r');
            }
            pending_cr = b == b'\r';
            if !pending_cr {
                out.push(b);
            }
            if b == b'\n' {
                if let Some(s) = parse_exit_status(&line) {
                    status = Some(s);
                }
                line.clear();
            } else if b != b'\r' && line.len() < 256 {
                line.push(b);
            }
        }
        output.write_all(&out)?;
        output.flush()?;
    }
    if pending_cr {
        output.write_all(b"\r")?;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_exact_status_line() {
        assert_eq!(parse_exit_status(b"diskc-init: exit status 7"), Some(7));
        assert_eq!(parse_exit_status(b"diskc-init: exit status 143\r"), Some(143));
        assert_eq!(parse_exit_status(b"diskc-init: exit status 256"), None);
        assert_eq!(parse_exit_status(b"diskc-init: exit status 7 "), None);
        assert_eq!(parse_exit_status(b"xdiskc-init: exit status 7"), None);
    }

    #[test]
    fn console_copy_turns_crlf_into_lf_and_stops_at_the_status() {
        let input = b"hello\r\nbare\rcr\r\ndiskc-init: exit status 9\r\n[ 4.1] reboot: Power down\r\n";
        // Read in 1-byte pieces so CR LF pairs straddle reads.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else { return Ok(0) };
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        let mut out = Vec::new();
        let status = copy_console(&mut OneByte(input), &mut out).unwrap();
        assert_eq!(status, Some(9));
        assert_eq!(out, b"hello\nbare\rcr\ndiskc-init: exit status 9\n");
    }

    #[test]
    fn args_carry_the_command_line_and_protect_the_image() {
        let spec = BootSpec {
            kernel: "/k".into(),
            initrd: "/i".into(),
            rootfs: "/images/a,b.ext4".into(),
            cmdline: cmdline::base_cmdline(),
        };
        let args = |opts: &RunOptions| -> Vec<String> {
            qemu_args(&spec, opts, false).unwrap().into_iter().map(|a| a.into_string().unwrap()).collect()
        };
        let rw = args(&RunOptions::default());
        assert!(
            rw.contains(&"id=root,if=none,format=raw,snapshot=on,file=/images/a,,b.ext4".to_string()),
            "{rw:?}"
        );
        let opts = RunOptions { read_only: true, cmd: Some(vec![b"id".to_vec()]), ..Default::default() };
        let ro = args(&opts);
        assert!(ro.iter().any(|a| a.contains("readonly=on")));
        let line = &ro[ro.iter().position(|a| a == "-append").unwrap() + 1];
        let boot = cmdline::BootArgs::parse(line).unwrap();
        assert!(boot.read_only);
        assert_eq!(boot.cmd, Some(vec![b"id".to_vec()]));
    }

    #[test]
    fn a_missing_qemu_is_an_environment_error_naming_the_package() {
        use crate::error::{Classify, ErrorKind};
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"").unwrap();
            p
        };
        let spec = BootSpec {
            kernel: file("k"),
            initrd: file("i"),
            rootfs: file("r"),
            cmdline: cmdline::base_cmdline(),
        };
        let opts = RunOptions {
            qemu: "/nonexistent/qemu-system-x86_64".into(),
            kvm: Some(false),
            ..Default::default()
        };
        let err = run(&spec, &opts, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, BootError::QemuMissing(_)), "{err}");
        assert!(err.to_string().contains("qemu-system-x86"));
        assert_eq!(err.error_kind(), ErrorKind::Environment);
    }
}
