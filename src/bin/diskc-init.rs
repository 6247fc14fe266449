//! `diskc-init`: PID 1 of every diskc VM, run by the kernel as `/init` from the initrd diskc
//! generates. It does what a container runtime would have done before starting the image's
//! program, then stands in for the VM's lifetime:
//!
//! 1. mounts /proc, /sys and /dev, loads the modules listed in the initrd, waits for the
//!    root disk and mounts it (read-only when the command line says `ro`);
//! 2. switches root into it (frees the initramfs, moves the mounts, `chroot`), mounts
//!    /dev/pts, /dev/shm, /run and /tmp, sets the hostname and brings up `lo`;
//! 3. runs ENTRYPOINT + CMD (or the command given on the kernel command line) with the
//!    image's ENV, in its WORKDIR, as its USER, on the console;
//! 4. reaps every orphan while it runs and forwards SIGTERM/SIGINT to it; when it exits,
//!    syncs, prints `diskc-init: exit status N` and powers the VM off.
//!
//! A failure before the program starts prints `diskc-init: error: ...` and powers off
//! without a status line, which `diskc boot` reports as an environment failure. The
//! protocol is documented in docs/boot.md. It is a static binary (see build.rs) that uses
//! only std, libc and the parsing shared with the host side in `diskc::boot`.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use diskc::boot::cmdline::{BootArgs, EXIT_STATUS_PREFIX};
use diskc::boot::initrd::{CONFIG_PATH, MODULES_LIST_PATH, NEW_ROOT};
use diskc::boot::passwd::{self, Identity};
use diskc::manifest::ImageConfig;

/// Docker's PATH for images that set none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long the root disk may take to appear after its driver loaded.
const ROOT_WAIT: Duration = Duration::from_secs(10);

type Result<T> = std::result::Result<T, String>;

fn main() {
    let outcome = boot();
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
    match outcome {
        Ok(status) => println!("{EXIT_STATUS_PREFIX}{status}"),
        Err(message) => eprintln!("diskc-init: error: {message}"),
    }
    let _ = std::io::stdout().flush();
    power_off();
}

/// Everything up to the program's exit; returns its exit status.
fn boot() -> Result<i32> {
    mount("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "")?;
    mount("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;

    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let args = BootArgs::parse(&cmdline).map_err(|e| e.to_string())?;
    let config_bytes = std::fs::read(CONFIG_PATH).map_err(|e| format!("reading {CONFIG_PATH}: {e}"))?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| format!("{CONFIG_PATH}: {e}"))?;

    load_modules()?;
    wait_for(&args.root)?;
    let ro = if args.read_only { libc::MS_RDONLY } else { 0 };
    mount(&args.root, NEW_ROOT, "ext4", ro, "")?;
    switch_root(args.read_only)?;
    mount_runtime_filesystems(args.read_only);
    set_hostname(&args.hostname)?;
    bring_up_loopback()?;

    let program = Program::new(&config, &args)?;
    program.run()
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

/// Loads the initrd's modules in the listed order (dependencies first).
fn load_modules() -> Result<()> {
    let list = std::fs::read_to_string(MODULES_LIST_PATH)
        .map_err(|e| format!("reading {MODULES_LIST_PATH}: {e}"))?;
    for path in list.lines().filter(|l| !l.is_empty()) {
        let file = std::fs::File::open(path).map_err(|e| format!("opening module {path}: {e}"))?;
        use std::os::fd::AsRawFd;
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

/// devtmpfs creates the disk's node once its driver has probed it.
fn wait_for(device: &str) -> Result<()> {
    let start = Instant::now();
    while !Path::new(device).exists() {
        if start.elapsed() > ROOT_WAIT {
            return Err(format!("root disk {device} did not appear within {} s", ROOT_WAIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
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
    ];
    for (source, target, fstype, flags, data) in mounts {
        // /dev is a devtmpfs, writable even when the root is not.
        if !Path::new(target).is_dir() && (!read_only || target.starts_with("/dev/")) {
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

/// Sets IFF_UP on `lo`, as the network namespace setup of a container runtime does.
fn bring_up_loopback() -> Result<()> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket for configuring lo: {}", last_os_error()));
    }
    // SAFETY: ifreq is plain old data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the `ifreq` we pass, which lives
    // across both calls; ifru_flags is the union member these requests use.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: `fd` is ours and no longer used.
    unsafe { libc::close(fd) };
    result.map_err(|e| format!("bringing up lo: {e}"))
}

/// The image's program, resolved inside the new root and ready to exec.
struct Program {
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Where to look for argv[0]: itself when it has a `/`, else each PATH entry.
    candidates: Vec<CString>,
    workdir: CString,
    identity: Identity,
}

impl Program {
    fn new(config: &ImageConfig, args: &BootArgs) -> Result<Program> {
        let mut argv: Vec<Vec<u8>> = config.entrypoint.iter().map(|s| s.as_bytes().to_vec()).collect();
        match &args.cmd {
            Some(cmd) => argv.extend(cmd.iter().cloned()),
            None => argv.extend(config.cmd.iter().map(|s| s.as_bytes().to_vec())),
        }
        if argv.is_empty() {
            return Err("the image has no ENTRYPOINT or CMD and no command was given".to_string());
        }
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let identity = passwd::resolve_user(
            &config.user,
            &passwd::parse_passwd(&read("/etc/passwd")),
            &passwd::parse_group(&read("/etc/group")),
        )
        .map_err(|e| e.to_string())?;

        let mut env: Vec<String> = config.env.clone();
        let has = |env: &[String], key: &str| {
            env.iter().any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == key))
        };
        if !has(&env, "PATH") {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        if !has(&env, "HOSTNAME") {
            env.push(format!("HOSTNAME={}", args.hostname));
        }
        if !has(&env, "HOME") {
            env.push(format!("HOME={}", identity.home));
        }
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

        let workdir = if config.working_dir.is_empty() { "/" } else { &config.working_dir };
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

    /// Starts the program and supervises it until it exits; returns its status.
    fn run(&self) -> Result<i32> {
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
            self.exec_in_child(&previous);
        }
        supervise(pid, &watched)
    }

    /// In the forked child: become the image's user in its WORKDIR and exec. Never returns.
    fn exec_in_child(&self, mask: &libc::sigset_t) -> ! {
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
