//! Runs one VM under QEMU and says how it ended: the guest program's exit status, a
//! `--timeout`, or a signal that stopped `diskc boot`.
//!
//! QEMU is a child that cannot outlive us: it gets `PR_SET_PDEATHSIG` (SIGKILL when the
//! thread that started it dies, which covers a SIGKILL of `diskc boot`) and a process group
//! of its own, so a terminal's Ctrl-C reaches only `diskc boot`, which then kills QEMU
//! itself and returns, so that the caller's temporary files go too.
//!
//! The guest talks to us on virtio-serial ports (see [`super::guest`]), each backed by one
//! end of a socket pair whose other end QEMU inherits: the run settings and stdin go in
//! (their end of file is the guest's end of file), stdout, stderr and the status line come
//! out. Reader threads drain every output at once, so QEMU never has to hold guest output
//! back, and the caller's writers get it in the order it arrived. The serial console (the
//! kernel's messages and the init's own) goes to stderr too, without the kernel's final
//! power-off line.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::guest::{RunConfig, ERROR_PREFIX, PORT_RUN, PORT_STATUS, PORT_STDERR, PORT_STDIN, PORT_STDOUT};
use super::qemu::{parse_exit_status, qemu_args, Machine};
use super::{BootError, RootDisk};

/// How often the loop looks at caught signals and the deadline while the guest is quiet.
const TICK: Duration = Duration::from_millis(50);
/// QEMU's own stderr kept for an error message.
const QEMU_STDERR_LIMIT: usize = 16 << 10;

/// How a boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The guest program's exit status (128+N after a death by signal N).
    Exited(u8),
    /// `--timeout` expired and the VM was killed.
    TimedOut(Duration),
    /// `diskc boot` got this signal and killed the VM.
    Stopped(i32),
}

impl Ended {
    /// The exit status of `diskc boot`: the program's; 124 after a timeout, as
    /// `timeout(1)` exits; 128+N after signal N, as a shell reports a process it killed.
    pub fn exit_code(self) -> u8 {
        match self {
            Ended::Exited(code) => code,
            Ended::TimedOut(_) => 124,
            Ended::Stopped(sig) => u8::try_from(128 + sig).unwrap_or(255),
        }
    }

    /// What to tell the user on stderr, if anything.
    pub fn message(self) -> Option<String> {
        match self {
            Ended::Exited(_) => None,
            Ended::TimedOut(t) => {
                Some(format!("the guest did not finish within {} s; the VM was killed", t.as_secs()))
            }
            Ended::Stopped(sig) => Some(format!("stopped by {}; the VM was killed", signal_name(sig))),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Where the guest program's output goes, and what it reads.
pub struct Streams<'a> {
    pub stdout: &'a mut dyn Write,
    /// The program's stderr, the serial console and `-p` mappings.
    pub stderr: &'a mut dyn Write,
    /// Sent on the stdin port when `RunConfig::stdin` asks for one (else the program's stdin
    /// is /dev/null); its end is the program's end of file.
    pub stdin: Option<Box<dyn Read + Send>>,
}

/// Sets `cmd` up to die with the calling thread and to run in a process group of its own,
/// with the descriptors in `keep` inherited (everything else of ours is close-on-exec).
pub(super) fn tie_to_parent(cmd: &mut Command, keep: Vec<RawFd>) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, setpgid, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nothing would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::other("diskc ended while starting its child"));
            }
            libc::setpgid(0, 0);
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_signal(sig: libc::c_int) {
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP recorded instead of ending the process, while it lives, so
/// that a boot stopped by one still removes what it made.
pub struct SignalGuard {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    pub fn install() -> SignalGuard {
        CAUGHT.store(0, Ordering::SeqCst);
        let mut previous = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: sigaction structs are plain data; the handler only stores to an atomic,
            // which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = record_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) == 0 {
                    previous.push((sig, old));
                }
            }
        }
        SignalGuard { previous }
    }

    /// The last signal caught since [`SignalGuard::install`].
    pub fn caught(&self) -> Option<i32> {
        Some(CAUGHT.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores the action saved by `install`.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Console,
    QemuStderr,
    Stdout,
    Stderr,
    Status,
}

/// A piece of output; a reader thread drops its sender at end of file.
type Event = (Source, Vec<u8>);

fn spawn_reader(source: Source, mut input: impl Read + Send + 'static, events: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match input.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if events.send((source, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    });
}

/// Gives the guest its run settings (one JSON line) and, once it has answered that it is
/// ready (one byte back on the same port), `stdin` and its end of file.
///
/// The order matters: a virtio-serial port reads as end of file while the host side is not
/// connected, so the init first waits until the stdin port is connected, then answers. Were
/// stdin sent at once, an empty one could be closed again before the guest ever saw it
/// connected, and the guest could not tell "closed" from "not yet open".
fn spawn_input(config: Vec<u8>, mut run_port: UnixStream, stdin: Option<(Box<dyn Read + Send>, UnixStream)>) {
    std::thread::spawn(move || {
        if run_port.write_all(&config).and_then(|()| run_port.write_all(b"\n")).is_err() {
            return;
        }
        let mut ready = [0u8; 1];
        if !matches!(run_port.read(&mut ready), Ok(1)) {
            return;
        }
        if let Some((mut input, mut socket)) = stdin {
            let _ = io::copy(&mut input, &mut socket);
            let _ = socket.shutdown(Shutdown::Write);
        }
    });
}

/// How a boot ended, and when the guest program first wrote (stdout or stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub ended: Ended,
    pub first_output: Option<Instant>,
}

/// Says why the root disk can no longer be read (its server is gone), if so; asked every
/// tick while the VM runs.
pub type DiskWatch<'a> = &'a mut dyn FnMut() -> Option<String>;

/// Boots `machine` running `run`, with the guest's stdio on `streams`; a signal `signals`
/// catches stops it, and so does a root disk `disk_gone` reports gone (an error, since a
/// guest whose disk vanished may hang or answer wrongly).
pub fn run(
    machine: Machine,
    run: &RunConfig,
    qemu: &Path,
    timeout: Option<Duration>,
    streams: Streams,
    signals: &SignalGuard,
    disk_gone: DiskWatch,
) -> Result<Finished, BootError> {
    let socket_error = |e: io::Error| BootError::Qemu(format!("cannot make a socket pair: {e}"));
    let mut names = vec![PORT_RUN, PORT_STATUS, PORT_STDOUT, PORT_STDERR];
    if run.stdin {
        names.push(PORT_STDIN);
    }
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for name in &names {
        let (host, guest) = UnixStream::pair().map_err(socket_error)?;
        ours.push(host);
        theirs.push((*name, guest));
    }
    let ports: Vec<(&'static str, RawFd)> = theirs.iter().map(|(n, s)| (*n, s.as_raw_fd())).collect();
    let machine = Machine { ports: &ports, ..machine };
    let args = qemu_args(&machine)?;
    let root = match &machine.spec.rootfs {
        RootDisk::File(path) | RootDisk::Nbd { socket: path, .. } => path,
    };
    for file in [&machine.spec.kernel, &machine.spec.initrd, root] {
        std::fs::metadata(file).map_err(|e| BootError::Read(file.clone(), e))?;
    }

    tracing::info!(qemu = %qemu.display(), kvm = machine.kvm, "booting");
    let mut cmd = Command::new(qemu);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    tie_to_parent(&mut cmd, ports.iter().map(|(_, fd)| *fd).collect());
    if let Some(sig) = signals.caught() {
        return Ok(Finished { ended: Ended::Stopped(sig), first_output: None });
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BootError::QemuMissing(qemu.display().to_string()),
        _ => BootError::Qemu(format!("cannot start {}: {e}", qemu.display())),
    })?;
    drop(theirs);

    let mut ours = ours.into_iter();
    let mut next = || ours.next().expect("one socket per port");
    let config = serde_json::to_vec(run).expect("a run config always serializes");
    let run_port = next();
    let (events, rx) = mpsc::channel();
    spawn_reader(Source::Status, next(), events.clone());
    spawn_reader(Source::Stdout, next(), events.clone());
    spawn_reader(Source::Stderr, next(), events.clone());
    // A stdin port with nothing to send still gets its end of file, after the answer.
    let stdin = run.stdin.then(|| (streams.stdin.unwrap_or_else(|| Box::new(io::empty())), next()));
    spawn_input(config, run_port, stdin);
    spawn_reader(Source::Console, child.stdout.take().expect("piped"), events.clone());
    spawn_reader(Source::QemuStderr, child.stderr.take().expect("piped"), events.clone());
    drop(events);

    let deadline = timeout.map(|t| Instant::now() + t);
    let mut stop: Option<Ended> = None;
    let mut output_error: Option<io::Error> = None;
    let mut console = Console::default();
    let mut status = Vec::new();
    let mut qemu_stderr = Vec::new();
    let mut first_output = None;
    let mut disk_lost: Option<String> = None;
    loop {
        match rx.recv_timeout(TICK) {
            Ok((source, bytes)) => {
                if matches!(source, Source::Stdout | Source::Stderr) {
                    first_output.get_or_insert_with(Instant::now);
                }
                // Output nobody reads any more ends the boot when it is the program's stdout
                // (as a pipeline's writer ends); a closed stderr only loses diagnostics.
                match source {
                    Source::Stdout => {
                        if let Err(e) = streams.stdout.write_all(&bytes).and_then(|()| streams.stdout.flush())
                        {
                            if output_error.is_none() && stop.is_none() {
                                let _ = child.kill();
                            }
                            output_error.get_or_insert(e);
                        }
                    }
                    Source::Stderr => {
                        let _ = streams.stderr.write_all(&bytes).and_then(|()| streams.stderr.flush());
                    }
                    Source::Console => {
                        let _ = console.push(&bytes, streams.stderr);
                    }
                    Source::Status => status.extend_from_slice(&bytes),
                    Source::QemuStderr => {
                        let room = QEMU_STDERR_LIMIT.saturating_sub(qemu_stderr.len());
                        qemu_stderr.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every reader has seen its end: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if disk_lost.is_none() {
            disk_lost = disk_gone();
            if disk_lost.is_some() && stop.is_none() && output_error.is_none() {
                let _ = child.kill();
            }
        }
        if stop.is_none() && output_error.is_none() && disk_lost.is_none() {
            if let Some(sig) = signals.caught() {
                stop = Some(Ended::Stopped(sig));
            } else if let (Some(deadline), Some(limit)) = (deadline, timeout) {
                if Instant::now() >= deadline {
                    stop = Some(Ended::TimedOut(limit));
                }
            }
            if stop.is_some() {
                let _ = child.kill();
            }
        }
    }
    let _ = console.finish(streams.stderr);
    let exit = child.wait().map_err(|e| BootError::Qemu(format!("waiting for qemu: {e}")))?;
    if let Some(e) = output_error {
        return Err(BootError::Output(e));
    }
    if let Some(stop) = stop {
        return Ok(Finished { ended: stop, first_output });
    }
    if let Some(code) = parse_exit_status(&status) {
        return Ok(Finished { ended: Ended::Exited(code), first_output });
    }
    // A VM that ended without a status after its disk server went (QEMU may end first).
    if let Some(reason) = disk_lost.or_else(disk_gone) {
        return Err(BootError::DiskServer(format!("{reason}; the VM was killed")));
    }
    let status = String::from_utf8_lossy(&status);
    if let Some(message) = status.strip_prefix(ERROR_PREFIX) {
        return Err(BootError::Guest(message.trim().to_string()));
    }
    if !exit.success() {
        return Err(BootError::Qemu(format!("{exit}: {}", String::from_utf8_lossy(&qemu_stderr).trim())));
    }
    Err(BootError::NoExitStatus)
}

/// The serial console, passed on line by line with the serial line's CR LF turned into LF
/// and without the kernel's `reboot: Power down`, which ends every boot.
#[derive(Default)]
struct Console {
    line: Vec<u8>,
}

impl Console {
    fn push(&mut self, bytes: &[u8], out: &mut dyn Write) -> io::Result<()> {
        for &b in bytes {
            if b == b'\n' {
                self.emit(out)?;
            } else {
                self.line.push(b);
            }
        }
        out.flush()
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if !self.line.is_empty() {
            self.emit(out)?;
        }
        out.flush()
    }

    fn emit(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let result =
            if is_power_off(line) { Ok(()) } else { out.write_all(line).and_then(|()| out.write_all(b"\n")) };
        self.line.clear();
        result
    }
}

/// `[    4.041246] reboot: Power down`.
fn is_power_off(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.strip_prefix('[').and_then(|rest| rest.split_once("] ")).is_some_and(|(stamp, message)| {
        stamp.trim_start().bytes().all(|b| b.is_ascii_digit() || b == b'.') && message == "reboot: Power down"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_turns_crlf_into_lf_and_drops_the_power_off_line() {
        let mut out = Vec::new();
        let mut console = Console::default();
        let input =
            b"diskc-init: warning: x\r\n[    4.041246] reboot: Power down\r\n[    1.0] other\r\npartial";
        // In 1-byte pieces, so CR LF pairs straddle reads.
        for b in input {
            console.push(std::slice::from_ref(b), &mut out).unwrap();
        }
        console.finish(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "diskc-init: warning: x\n[    1.0] other\npartial\n");
    }

    #[test]
    fn a_missing_qemu_is_an_environment_error_naming_the_package() {
        use crate::boot::{cmdline, BootSpec};
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
            rootfs: RootDisk::File(file("r")),
            cmdline: cmdline::base_cmdline(),
            kernel_version: "6.1.0-test".into(),
            kernel_digest: crate::digest::Digest::of(b"k"),
            config: Default::default(),
        };
        let machine = Machine {
            spec: &spec,
            memory_mib: 256,
            cpus: 1,
            kvm: false,
            read_only: false,
            modules_disk: None,
            network: None,
            volumes: &[],
            ports: &[],
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let streams = Streams { stdout: &mut out, stderr: &mut err, stdin: None };
        let qemu = Path::new("/nonexistent/qemu-system-x86_64");
        let e =
            run(machine, &RunConfig::default(), qemu, None, streams, &SignalGuard::install(), &mut || None)
                .unwrap_err();
        assert!(matches!(e, BootError::QemuMissing(_)), "{e}");
        assert!(e.to_string().contains("qemu-system-x86"));
        assert_eq!(e.error_kind(), ErrorKind::Environment);
    }

    #[test]
    fn exit_codes_follow_timeout_and_the_shell() {
        assert_eq!(Ended::Exited(5).exit_code(), 5);
        assert_eq!(Ended::TimedOut(Duration::from_secs(5)).exit_code(), 124);
        assert_eq!(Ended::Stopped(libc::SIGTERM).exit_code(), 143);
        assert!(Ended::TimedOut(Duration::from_secs(5)).message().unwrap().contains("within 5 s"));
        assert_eq!(Ended::Exited(0).message(), None);
        assert_eq!(Ended::Stopped(libc::SIGINT).message().unwrap(), "stopped by SIGINT; the VM was killed");
    }
}
