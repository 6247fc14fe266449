//! `diskc-init`: PID 1 of every diskc VM, run by the kernel as `/init` from the initrd diskc
//! generates. It does what a container runtime would have done before starting the image's
//! program, then stands in for the VM's lifetime:
//!
//! 1. mounts /proc, /sys and /dev, loads the modules listed in the initrd, opens the
//!    virtio-serial ports of `diskc::boot::guest` and reads this boot's settings from one;
//! 2. waits for the root disk, mounts it (read-only when the command line says `ro`) and
//!    switches root into it (frees the initramfs, moves the mounts, `chroot`);
//! 3. mounts /dev/pts, /dev/shm, /run, /tmp and cgroup2, sets the hostname, brings up `lo`
//!    and the NIC of QEMU's user-mode network (with a resolv.conf when the image has none),
//!    mounts the kernel's modules disk at `/lib/modules/<release>` and the host directories;
//! 4. runs ENTRYPOINT + CMD with the boot's overrides applied, with the image's ENV, in its
//!    WORKDIR, as its USER, with stdin, stdout and stderr on their ports;
//! 5. reaps every orphan while it runs and forwards SIGTERM/SIGINT to it; when it exits,
//!    syncs, writes `diskc-init: exit status N` on the status port and powers the VM off.
//!
//! A failure before the program starts writes `diskc-init: error: ...` on the status port
//! (and the console) instead. The protocol is documented in docs/boot.md. It is a static
//! binary (see build.rs) that uses only std, libc and the code shared with the host side in
//! `diskc::boot`.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diskc::boot::cmdline::BootArgs;
use diskc::boot::guest::{
    self, net, RunConfig, DEFAULT_PATH, ERROR_PREFIX, GATEWAY, GUEST_ADDRESS, NETWORK_PREFIX_LEN, PORT_RUN,
    PORT_STATUS, PORT_STDERR, PORT_STDIN, PORT_STDOUT,
};
use diskc::boot::initrd::{CONFIG_PATH, MODULES_LIST_PATH, NEW_ROOT, VOLUME_MODULES_LIST_PATH};
use diskc::boot::passwd::{self, Identity};
use diskc::boot::qemu::EXIT_STATUS_PREFIX;
use diskc::manifest::ImageConfig;

/// How long a device (a disk, a port, the NIC) may take to appear after its driver loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

type Result<T> = std::result::Result<T, String>;

fn main() {
    let mut status_port: Option<File> = None;
    let outcome = boot(&mut status_port);
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
    let line = match outcome {
        Ok(status) => format!("{EXIT_STATUS_PREFIX}{status}\n"),
        Err(message) => {
            eprintln!("diskc-init: error: {message}");
            format!("{ERROR_PREFIX}{message}\n")
        }
    };
    if let Some(port) = status_port.as_mut() {
        let _ = port.write_all(line.as_bytes());
    }
    power_off();
}

/// The program's stdio in the guest.
struct Stdio {
    stdin: File,
    stdout: File,
    stderr: File,
}

/// Everything up to the program's exit; returns its exit status. The status port is handed
/// back through `status_port` as soon as it is open, so that even a later failure reaches
/// the host.
fn boot(status_port: &mut Option<File>) -> Result<i32> {
    mount("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "")?;
    mount("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;

    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let args = BootArgs::parse(&cmdline);
    let config_bytes = std::fs::read(CONFIG_PATH).map_err(|e| format!("reading {CONFIG_PATH}: {e}"))?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| format!("{CONFIG_PATH}: {e}"))?;
    load_modules(MODULES_LIST_PATH)?;

    let ports = wait_for_ports(&[PORT_STATUS, PORT_RUN, PORT_STDOUT, PORT_STDERR])?;
    *status_port = Some(open_port(&ports, PORT_STATUS, Access::Write)?);
    let mut run_port = open_port(&ports, PORT_RUN, Access::ReadWrite)?;
    let run = read_run_config(&mut run_port)?;
    let stdin = if run.stdin {
        let port = open_port(&wait_for_ports(&[PORT_STDIN])?, PORT_STDIN, Access::Read)?;
        wait_until("the host side of stdin", || host_connected(&port).then_some(()))?;
        port
    } else {
        File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?
    };
    run_port.write_all(b"\n").map_err(|e| format!("answering the host: {e}"))?;
    drop(run_port);
    let stdio = Stdio {
        stdin,
        stdout: open_port(&ports, PORT_STDOUT, Access::Write)?,
        stderr: open_port(&ports, PORT_STDERR, Access::Write)?,
    };
    if !run.volumes.is_empty() {
        load_modules(VOLUME_MODULES_LIST_PATH)?;
    }

    wait_for(&args.root)?;
    let ro = if args.read_only { libc::MS_RDONLY } else { 0 };
    mount(&args.root, NEW_ROOT, "ext4", ro, "")?;
    switch_root(args.read_only)?;
    mount_runtime_filesystems(args.read_only);
    set_hostname(&run.hostname)?;
    net::disable_ipv6();
    net::bring_up("lo").map_err(|e| format!("bringing up lo: {e}"))?;
    if run.network {
        let nic = net::wait_for_nic(DEVICE_WAIT).map_err(|e| format!("the network: {e}"))?;
        net::configure(&nic, GUEST_ADDRESS, NETWORK_PREFIX_LEN, GATEWAY)
            .map_err(|e| format!("configuring {nic}: {e}"))?;
        if let Err(e) = net::provide_resolv_conf(args.read_only) {
            eprintln!("diskc-init: warning: no resolv.conf for the network: {e}");
        }
    }
    if let Some(device) = &run.modules_device {
        mount_modules(device, args.read_only)?;
    }
    for volume in &run.volumes {
        if !Path::new(&volume.target).is_dir() {
            std::fs::create_dir_all(&volume.target)
                .map_err(|e| format!("creating the mount point {}: {e}", volume.target))?;
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | if volume.read_only { libc::MS_RDONLY } else { 0 };
        mount(&volume.tag, &volume.target, "virtiofs", flags, "")?;
    }

    let program = Program::new(&config, &run)?;
    program.run(&stdio)
}

fn cstr(s: impl AsRef<OsStr>) -> Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| format!("{:?} contains a NUL byte", s.as_ref()))
}

fn last_os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let (src, tgt, fs, dat) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, dat.as_ptr().cast()) };
    if rc != 0 {
        return Err(format!("mounting {source} ({fstype}) on {target}: {}", last_os_error()));
    }
    Ok(())
}

fn move_mount(from: &str, to: &str) -> Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: NUL-terminated strings that outlive the call; MS_MOVE ignores type and data.
    let rc =
        unsafe { libc::mount(f.as_ptr(), t.as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) };
    if rc != 0 {
        return Err(format!("moving the mount {from} to {to}: {}", last_os_error()));
    }
    Ok(())
}

/// Loads the initrd's modules listed in `list`, in order (dependencies first).
fn load_modules(list: &str) -> Result<()> {
    let text = std::fs::read_to_string(list).map_err(|e| format!("reading {list}: {e}"))?;
    for path in text.lines().filter(|l| !l.is_empty()) {
        let file = File::open(path).map_err(|e| format!("opening module {path}: {e}"))?;
        // SAFETY: finit_module reads the module from an open fd; the parameter string is a
        // static empty C string.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
        if rc != 0 {
            let err = last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading module {path}: {err}"));
            }
        }
    }
    Ok(())
}

/// Polls `ready` until it gives a value or [`DEVICE_WAIT`] has passed.
fn wait_until<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if start.elapsed() > DEVICE_WAIT {
            return Err(format!("{what} did not appear within {} s", DEVICE_WAIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The device nodes of the named virtio-serial ports, once the driver has registered all
/// of them (`/sys/class/virtio-ports/vportNpM/name`) and devtmpfs has made their nodes.
fn wait_for_ports(names: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    wait_until(&format!("the virtio-serial ports {names:?}"), || {
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
            let Ok(name) = std::fs::read_to_string(entry.path().join("name")) else { continue };
            let node = Path::new("/dev").join(entry.file_name());
            if names.contains(&name.trim()) && node.exists() {
                found.insert(name.trim().to_string(), node);
            }
        }
        (found.len() == names.len()).then_some(found)
    })
}

enum Access {
    Read,
    Write,
    ReadWrite,
}

/// Opens a port close-on-exec: the program gets only the ones the init hands it, and the
/// kernel lets one opener at a time hold a port, so it can never open the status port.
fn open_port(ports: &BTreeMap<String, PathBuf>, name: &str, access: Access) -> Result<File> {
    let path = &ports[name];
    let (read, write) = match access {
        Access::Read => (true, false),
        Access::Write => (false, true),
        Access::ReadWrite => (true, true),
    };
    File::options()
        .read(read)
        .write(write)
        .open(path)
        .map_err(|e| format!("opening the port {name} ({}): {e}", path.display()))
}

/// Whether the host end of a port is connected: until it is, reads return end of file at
/// once, and poll says POLLHUP.
fn host_connected(port: &File) -> bool {
    let mut fd = libc::pollfd { fd: port.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a zero timeout only samples the state.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n >= 0 && (fd.revents & libc::POLLHUP == 0 || fd.revents & libc::POLLIN != 0)
}

/// The host's one line of JSON on the run port.
fn read_run_config(port: &mut File) -> Result<RunConfig> {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    wait_until("the run settings from the host", || {
        if host_connected(port) {
            match port.read(&mut buf) {
                Ok(n) => line.extend_from_slice(&buf[..n]),
                Err(e) => eprintln!("diskc-init: warning: reading the run settings: {e}"),
            }
        }
        line.ends_with(b"\n").then_some(())
    })?;
    serde_json::from_slice(&line).map_err(|e| format!("the run settings from the host: {e}"))
}

/// devtmpfs creates the disk's node once its driver has probed it.
fn wait_for(device: &str) -> Result<()> {
    wait_until(&format!("the disk {device}"), || Path::new(device).exists().then_some(()))
}

/// Makes the mounted root disk `/`, as switch_root does: the initramfs cannot be unmounted,
/// so its files are deleted to free their memory, the early mounts move along, and the new
/// root is moved over `/`.
fn switch_root(read_only: bool) -> Result<()> {
    let root_dev = std::fs::metadata("/").map_err(|e| format!("stat /: {e}"))?.dev();
    remove_same_device(Path::new("/"), root_dev);
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        if !Path::new(&target).is_dir() && !read_only {
            let _ = std::fs::create_dir(&target);
        }
        if Path::new(&target).is_dir() {
            move_mount(dir, &target)?;
        } else {
            eprintln!("diskc-init: warning: the image has no {dir} directory; not mounted");
        }
    }
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    move_mount(".", "/")?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot into the root disk: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Deletes what lies on the initramfs below `dir`, leaving other filesystems (mount points)
/// alone. Failures only cost memory, so they are ignored.
fn remove_same_device(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_same_device(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The filesystems a container gets besides its root, and tmpfs on /run and (when the image
/// leaves it empty) /tmp, so that even a read-only root has writable scratch space. Missing
/// mount points are created on a writable root and skipped on a read-only one.
fn mount_runtime_filesystems(read_only: bool) {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mounts = [
        ("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"),
        ("shm", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
        // sysfs provides the mount point whenever the kernel has cgroups.
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_nodev | libc::MS_NOEXEC, ""),
    ];
    for (source, target, fstype, flags, data) in mounts {
        // /dev is a devtmpfs, writable even when the root is not; sysfs makes its own.
        if !Path::new(target).is_dir()
            && (!read_only || target.starts_with("/dev/"))
            && !target.starts_with("/sys/")
        {
            let _ = std::fs::create_dir(target);
        }
        if !Path::new(target).is_dir() {
            continue;
        }
        // Docker mounts nothing over /tmp: a tmpfs there must not hide what the image keeps.
        if target == "/tmp" && std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some()) {
            continue;
        }
        if let Err(e) = mount(source, target, fstype, flags, data) {
            eprintln!("diskc-init: warning: {e}");
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlink(target, link);
    }
}

fn set_hostname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(format!("setting the hostname {name:?}: {}", last_os_error()));
    }
    Ok(())
}

/// Mounts the modules disk at `/lib/modules/<release>`, where modprobe looks. The mount point
/// is created on a writable root; on a read-only one a tmpfs over /lib/modules makes room.
fn mount_modules(device: &str, read_only: bool) -> Result<()> {
    wait_for(device)?;
    // SAFETY: utsname is plain data, filled in by uname.
    let release = unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        libc::uname(&mut uts);
        CStr::from_ptr(uts.release.as_ptr()).to_string_lossy().into_owned()
    };
    let target = format!("/lib/modules/{release}");
    if !Path::new(&target).is_dir() {
        if read_only {
            if !Path::new("/lib/modules").is_dir() {
                eprintln!("diskc-init: warning: the read-only image has no /lib/modules: the kernel's modules are not mounted");
                return Ok(());
            }
            mount("tmpfs", "/lib/modules", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=0755")?;
        }
        std::fs::create_dir_all(&target).map_err(|e| format!("creating {target}: {e}"))?;
    }
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(device, &target, "ext4", flags, "")
}

/// The image's program, resolved inside the new root and ready to exec.
struct Program {
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Where to look for `argv[0]`: itself when it has a `/`, else each PATH entry.
    candidates: Vec<CString>,
    workdir: CString,
    identity: Identity,
}

impl Program {
    fn new(config: &ImageConfig, run: &RunConfig) -> Result<Program> {
        let effective = run.apply(config);
        let argv = effective.argv;
        if argv.is_empty() {
            return Err("the image has no ENTRYPOINT or CMD and no command was given".to_string());
        }
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let identity = passwd::resolve_user(
            &effective.user,
            &passwd::parse_passwd(&read("/etc/passwd")),
            &passwd::parse_group(&read("/etc/group")),
        )
        .map_err(|e| e.to_string())?;

        let env = guest::program_env(&effective.env, &run.hostname, &identity.home);
        let path_var =
            env.iter().rev().find_map(|kv| kv.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH).to_string();

        let name = &argv[0];
        let candidates: Vec<Vec<u8>> = if name.contains(&b'/') {
            vec![name.clone()]
        } else {
            path_var
                .split(':')
                .map(|dir| if dir.is_empty() { "." } else { dir })
                .map(|dir| [dir.as_bytes(), b"/", name].concat())
                .collect()
        };

        let workdir = if effective.workdir.is_empty() { "/" } else { &effective.workdir };
        // Docker creates a missing WORKDIR; a read-only root cannot.
        if !Path::new(workdir).is_dir() {
            std::fs::create_dir_all(workdir).map_err(|e| format!("creating WORKDIR {workdir}: {e}"))?;
        }
        Ok(Program {
            argv: argv.into_iter().map(cstr_bytes).collect::<Result<_>>()?,
            env: env.iter().map(cstr).collect::<Result<_>>()?,
            candidates: candidates.into_iter().map(cstr_bytes).collect::<Result<_>>()?,
            workdir: cstr(workdir)?,
            identity,
        })
    }

    /// Starts the program with `stdio` and supervises it until it exits; returns its status.
    fn run(&self, stdio: &Stdio) -> Result<i32> {
        // SAFETY: sigset operations on a local set; sigprocmask changes only our mask.
        let (watched, previous) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
                libc::sigaddset(&mut set, sig);
            }
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, &set, &mut previous);
            (set, previous)
        };
        // SAFETY: this process has one thread, so the child may run any code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", last_os_error()));
        }
        if pid == 0 {
            let fds = [stdio.stdin.as_raw_fd(), stdio.stdout.as_raw_fd(), stdio.stderr.as_raw_fd()];
            self.exec_in_child(&previous, fds);
        }
        supervise(pid, &watched)
    }

    /// In the forked child: take `stdio` as fds 0, 1 and 2, become the image's user in its
    /// WORKDIR and exec. Never returns.
    fn exec_in_child(&self, mask: &libc::sigset_t, stdio: [RawFd; 3]) -> ! {
        let fail = |what: &str, code: i32| -> ! {
            eprintln!("diskc-init: {what}: {}", last_os_error());
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        };
        let id = &self.identity;
        // SAFETY: each call gets valid pointers to data owned by `self` or the stack, and
        // the child is single-threaded.
        unsafe {
            // Dispositions and the mask survive exec: hand the program the defaults (Rust's
            // runtime ignores SIGPIPE, and the supervisor blocks the signals it waits for).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
            libc::setsid();
            // dup2 clears close-on-exec on the copies; the originals go at exec.
            for (target, fd) in stdio.into_iter().enumerate() {
                if libc::dup2(fd, target as RawFd) < 0 {
                    fail("dup2", 126);
                }
            }
            if libc::chdir(self.workdir.as_ptr()) != 0 {
                fail(&format!("cannot enter WORKDIR {:?}", self.workdir), 126);
            }
            if libc::setgroups(id.groups.len(), id.groups.as_ptr()) != 0 {
                fail("setgroups", 126);
            }
            if libc::setgid(id.gid) != 0 {
                fail(&format!("setgid {}", id.gid), 126);
            }
            if libc::setuid(id.uid) != 0 {
                fail(&format!("setuid {}", id.uid), 126);
            }
            let argv: Vec<*const libc::c_char> =
                self.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
            let envp: Vec<*const libc::c_char> =
                self.env.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
            // As execvp: ENOENT moves on to the next PATH entry; any other failure is kept,
            // and a program found but not runnable exits 126, one not found 127.
            let mut found_but_failed = false;
            for candidate in &self.candidates {
                libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
                let errno = last_os_error().raw_os_error();
                if errno != Some(libc::ENOENT) && errno != Some(libc::ENOTDIR) {
                    found_but_failed = true;
                    eprintln!("diskc-init: cannot run {:?}: {}", candidate, last_os_error());
                }
            }
            if found_but_failed {
                libc::_exit(126);
            }
            eprintln!("diskc-init: {:?}: command not found", self.argv[0]);
            libc::_exit(127)
        }
    }
}

fn cstr_bytes(bytes: Vec<u8>) -> Result<CString> {
    CString::new(bytes)
        .map_err(|e| format!("argument {:?} contains a NUL byte", String::from_utf8_lossy(&e.into_vec())))
}

/// PID 1's loop: reap every child (orphans are reparented to us), pass SIGTERM/SIGINT on to
/// the program, and return when the program itself has exited.
fn supervise(program: libc::pid_t, watched: &libc::sigset_t) -> Result<i32> {
    loop {
        // SAFETY: `info` is a valid out-parameter; the signals in `watched` are blocked.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(watched, &mut info)
        };
        match sig {
            libc::SIGCHLD => {
                if let Some(status) = reap(program) {
                    return Ok(status);
                }
            }
            libc::SIGTERM | libc::SIGINT => {
                // SAFETY: plain kill of our child.
                unsafe { libc::kill(program, sig) };
            }
            _ => {}
        }
    }
}

/// Reaps every exited child; the program's status when it was among them (128+N for a
/// death by signal N, as a shell reports it).
fn reap(program: libc::pid_t) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-parameter.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == program {
            result = Some(if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            });
        }
    }
}

fn power_off() -> ! {
    loop {
        // SAFETY: reboot(2) with RB_POWER_OFF stops the machine; as PID 1 we may call it.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        std::thread::sleep(Duration::from_secs(1));
    }
}
