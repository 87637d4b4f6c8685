//! The sandbox's init: the program the supervisor starts (`ringfence __sandbox-init`). It
//! enters new user, mount, network, UTS, IPC and pid namespaces and says `unshared`; reads its
//! configuration from fd 3 once the supervisor has written its uid/gid maps and placed it in
//! its cgroup; enters a new cgroup namespace; forks the task (pid 1 of the new pid namespace);
//! and reports on fd 4: `pid N`, `landlock ...`, `listener N`, then `exit N` or `signal N` —
//! or `error STEP: WHY` if a step fails.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seccomp::Profile;
use crate::setup::{Plan, enter};
use crate::sys::LinuxSyscall;

/// The argument that makes the Ringfence binary run this init.
pub const INIT_ARG: &str = "__sandbox-init";
/// The fd the configuration arrives on.
pub const CONFIG_FD: i32 = 3;
/// The fd the init reports on.
pub const STATUS_FD: i32 = 4;
/// The init's third argument: the network namespace is made with the others, at start.
pub const NET_AT_START: &str = "net-at-start";
/// The init's third argument: the network namespace is made after the task is forked and
/// handed to it (see `net::send_new_netns`); only for a loopback-only network.
pub const NET_LATE: &str = "net-late";

/// What the supervisor tells the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// Root filesystem (host path, visible in the new mount namespace).
    pub rootfs: PathBuf,
    /// Host name.
    pub hostname: String,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Environment (`K=V`).
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Syscall profile name.
    pub profile: String,
    /// `/tmp` size in bytes.
    pub tmp_size: u64,
    /// Open-file limit.
    pub nofile: u64,
    /// Process (and thread) limit for the task's uid: a fork bomb stops even without a
    /// pids cgroup.
    pub nproc: u64,
    /// Network inside.
    pub network: crate::net::Network,
    /// Host directories bound inside.
    pub volumes: Vec<crate::setup::Volume>,
    /// An egress allow-list is in force: `connect` goes to the supervisor, and landlock
    /// refuses the task's own TCP connects.
    pub mediate_connect: bool,
}

fn report(status: &mut File, line: &str) {
    let _ = status.write_all(format!("{line}\n").as_bytes());
}

/// Moves the calling thread into the v1 cgroup whose `tasks` file is `path`.
fn join_cgroup(path: &Path) -> std::io::Result<()> {
    if !path.is_absolute() || path.file_name() != Some(std::ffi::OsStr::new("tasks")) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a cgroup v1 tasks file",
        ));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(b"0")
}

/// Runs the init started as a program (`PROGRAM __sandbox-init UID GID NET [TASKS...]`);
/// returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(2).collect();
    run(&args)
}

/// The init's work, given the arguments after `__sandbox-init`: the host uid and gid, when
/// to make the network namespace ([`NET_AT_START`] or [`NET_LATE`]), then the v1 `tasks`
/// files to join. Fds 3 and 4 must be the configuration and status pipes.
/// The calling process must be single-threaded.
pub(crate) fn run(args: &[String]) -> i32 {
    // Die with the supervisor from here on (a started init gets no parent-death signal from
    // posix_spawn). If the supervisor is already gone, the configuration pipe ends empty and
    // the init stops there.
    // SAFETY: plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: the supervisor hands over fds 3 and 4 (dup2'd before exec or in the forked
    // child) and nothing else in this process uses them; each is owned by exactly one File
    // from here on.
    let (mut config_pipe, mut status) =
        unsafe { (File::from_raw_fd(CONFIG_FD), File::from_raw_fd(STATUS_FD)) };
    // The task must not inherit the status pipe past its exec.
    // SAFETY: plain integer arguments on an fd this process owns.
    unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    // Become the task's unprivileged host ids *before* making the user namespace: the
    // namespace's owner is then that uid, and the kernel charges what the sandbox uses
    // against per-user limits (inotify instances, user namespaces...) to it, not to root.
    let ids: Vec<u32> = args.iter().take(2).filter_map(|a| a.parse().ok()).collect();
    let (uid, gid) = match ids.as_slice() {
        [u, g] if *u != 0 && *g != 0 => (*u, *g),
        _ => {
            report(
                &mut status,
                "error ids: expected the host uid and gid as arguments",
            );
            return 125;
        }
    };
    // Join the sandbox's v1 cgroups while still root, before anything else, so the task is
    // forked inside them. Writing `0` to `tasks` moves the calling thread only, which spares
    // the kernel's global threadgroup lock and its RCU grace period; this process is
    // single-threaded, so the thread is the whole process.
    let late_net = match args.get(2).map(String::as_str) {
        Some(NET_AT_START) => false,
        Some(NET_LATE) => true,
        _ => {
            report(
                &mut status,
                &format!(
                    "error network: expected {NET_AT_START} or {NET_LATE} as the third argument"
                ),
            );
            return 125;
        }
    };
    for path in args.iter().skip(3) {
        if let Err(e) = join_cgroup(Path::new(path)) {
            report(&mut status, &format!("error cgroup {path}: {e}"));
            return 125;
        }
    }
    // SAFETY: getppid has no preconditions.
    let supervisor = unsafe { libc::getppid() };
    // SAFETY: plain integer arguments; setgroups with a zero length reads no memory.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setresgid(gid, gid, gid) == 0
            && libc::setresuid(uid, uid, uid) == 0
    };
    if !dropped {
        report(
            &mut status,
            &format!("error ids: {}", std::io::Error::last_os_error()),
        );
        return 125;
    }
    // Changing ids cleared the parent-death signal: set it again, and make sure the
    // supervisor did not die in between.
    // SAFETY: plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != supervisor {
        return 125;
    }
    // New namespaces, owned by a new user namespace in which this process holds every
    // capability until it execs; the supervisor maps uid/gid 0 to its unprivileged host ids
    // once told. The pid namespace is entered by this process's first child.
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC;
    if !late_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: plain integer argument; this process is single-threaded, as unshare requires.
    if unsafe { libc::unshare(flags) } != 0 {
        report(
            &mut status,
            &format!(
                "error namespaces: {} (are unprivileged user namespaces allowed? see \
                 user.max_user_namespaces and, on Ubuntu, \
                 kernel.apparmor_restrict_unprivileged_userns)",
                std::io::Error::last_os_error()
            ),
        );
        return 125;
    }
    report(&mut status, "unshared");
    let mut text = Vec::new();
    if let Err(e) = config_pipe.read_to_end(&mut text) {
        report(&mut status, &format!("error config: {e}"));
        return 125;
    }
    drop(config_pipe);
    let config: InitConfig = match serde_json::from_slice(&text) {
        Ok(c) => c,
        Err(e) => {
            report(&mut status, &format!("error config: {e}"));
            return 125;
        }
    };
    // The maps are written: become the namespace's root (the same unprivileged host uid, now
    // mapped), so files it creates have a mapped owner.
    if let Err(e) = crate::sys::Syscall::become_ns_root(&LinuxSyscall) {
        report(&mut status, &format!("error ids: {e}"));
        return 125;
    }
    // Changing ids cleared the parent-death signal the supervisor set: set it again, and
    // make sure the supervisor did not die in between.
    // SAFETY: plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != supervisor {
        return 125;
    }
    // SAFETY: plain integer argument.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        report(
            &mut status,
            &format!(
                "error cgroup namespace: {}",
                std::io::Error::last_os_error()
            ),
        );
        return 125;
    }
    // SAFETY: getpid has no preconditions; pidfd_open takes plain integers (close-on-exec by
    // default; the task closes it with every other descriptor before it execs).
    let init_pidfd =
        unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as libc::c_int;
    if late_net && config.network != crate::net::Network::None {
        report(
            &mut status,
            "error network: a veth needs the network namespace from the start",
        );
        return 125;
    }
    let net_pair = match late_net.then(crate::net::socket_pair).transpose() {
        Ok(p) => p,
        Err(e) => {
            report(&mut status, &format!("error network: {e}"));
            return 125;
        }
    };
    // SAFETY: this process is single-threaded (a fresh exec, or a fork of a single-threaded
    // supervisor, that started no threads), so the child may run arbitrary code.
    let child = unsafe { libc::fork() };
    if child < 0 {
        report(
            &mut status,
            &format!("error fork: {}", std::io::Error::last_os_error()),
        );
        return 125;
    }
    if child == 0 {
        // The task keeps its end only: with the init's end closed here, an init that dies
        // before sending is an end of file, not a wait forever.
        let net_from = net_pair.map(|(init_end, task_end)| {
            drop(init_end);
            std::os::fd::IntoRawFd::into_raw_fd(task_end)
        });
        task(&config, &mut status, init_pidfd, net_from);
    }
    report(&mut status, &format!("pid {child}"));
    if let Some((init_end, task_end)) = net_pair {
        drop(task_end);
        let sent = if init_pidfd < 0 {
            Err(std::io::Error::other("no pidfd for the init"))
        } else {
            // SAFETY: `init_pidfd` (not -1) is this process's own pidfd, open until the
            // process ends; the borrow lasts only for the clone.
            let me = unsafe { std::os::fd::BorrowedFd::borrow_raw(init_pidfd) };
            me.try_clone_to_owned()
                .and_then(|me| crate::net::send_new_netns(&init_end, &me))
        };
        if let Err(e) = sent {
            // The task sees its socket close and stops; this says why.
            report(&mut status, &format!("error network namespace: {e}"));
        }
        drop(init_end);
    }
    let mut wstatus = 0;
    loop {
        // SAFETY: `wstatus` is a writable int.
        let rc = unsafe { libc::waitpid(child, &mut wstatus, 0) };
        if rc == child {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            report(&mut status, "error wait: lost the task");
            return 125;
        }
    }
    if libc::WIFEXITED(wstatus) {
        let code = libc::WEXITSTATUS(wstatus);
        report(&mut status, &format!("exit {code}"));
        code
    } else {
        let sig = libc::WTERMSIG(wstatus);
        report(&mut status, &format!("signal {sig}"));
        128 + sig
    }
}

/// The task: pid 1 of the new pid namespace. Never returns.
fn task(
    config: &InitConfig,
    status: &mut File,
    init_pidfd: libc::c_int,
    net_from: Option<i32>,
) -> ! {
    // Die with the init (and so with the supervisor); if the init is already gone, now. (From
    // inside the new pid namespace the parent is invisible, so ask the init's pidfd.)
    // SAFETY: plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut pfd = libc::pollfd {
        fd: init_pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if init_pidfd < 0 || n != 0 {
        // SAFETY: ends this process at once.
        unsafe { libc::_exit(125) }
    }
    reset_signals();
    let code = match run_task(config, status, net_from) {
        Ok(never) => match never {},
        Err(line) => {
            report(status, &line);
            127
        }
    };
    // SAFETY: ends this process without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}

/// Every signal back to its default action, none blocked: ignored signals and the mask
/// survive exec, and the Rust runtime that started this process ignores SIGPIPE (a task
/// would then never die of a closed pipe).
pub(crate) fn reset_signals() {
    // The kernel's struct sigaction (glibc's `signal` refuses the two real-time signals it
    // reserves, which a caller may still have ignored). This layout (handler, flags, restorer,
    // 8-byte mask) is x86-64's, the one architecture the sandbox supports.
    #[cfg(not(target_arch = "x86_64"))]
    compile_error!("the sandbox's kernel sigaction layout is x86-64's");
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: `default` is a valid kernel sigaction of the size passed (8 bytes of
            // mask); SIG_DFL installs no handler; the old action is not read.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &raw const default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8,
                )
            };
        }
    }
    let empty: u64 = 0;
    // SAFETY: an 8-byte mask, as the size says; the old mask is not read.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            std::ptr::null_mut::<u64>(),
            8,
        )
    };
}

enum Never {}

fn run_task(
    config: &InitConfig,
    status: &mut File,
    net_from: Option<i32>,
) -> Result<Never, String> {
    let mut profile = Profile::named(&config.profile).map_err(|e| format!("error profile: {e}"))?;
    if config.mediate_connect {
        profile = profile
            .with_egress_mediation()
            .map_err(|e| format!("error profile: {e}"))?;
    }
    let plan = Plan {
        rootfs: config.rootfs.clone(),
        hostname: config.hostname.clone(),
        tmp_size: config.tmp_size,
        rlimits: vec![
            (libc::RLIMIT_CORE, 0, 0),
            (libc::RLIMIT_NOFILE, config.nofile, config.nofile),
            (libc::RLIMIT_NPROC, config.nproc, config.nproc),
        ],
        status_fd: STATUS_FD,
        filter: profile.compile(),
        network: config.network.clone(),
        netns_from: net_from,
        landlock_writes: profile.landlock_writes,
        deny_tcp_connect: config.mediate_connect,
        volumes: config.volumes.clone(),
    };
    // Resolve the program and build exec's arguments before the filter exists.
    let program = resolve(&config.argv, &config.rootfs)?;
    let cstrings = |v: &[String]| -> Result<Vec<CString>, String> {
        v.iter()
            .map(|s| {
                CString::new(s.as_str()).map_err(|_| format!("error exec: {s:?} contains NUL"))
            })
            .collect()
    };
    let argv = cstrings(&config.argv)?;
    let envp = cstrings(&config.env)?;
    let program = CString::new(program).map_err(|_| "error exec: path contains NUL".to_owned())?;
    let cwd =
        CString::new(config.cwd.as_str()).map_err(|_| "error cwd: contains NUL".to_owned())?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    let entered = enter(&LinuxSyscall, &plan).map_err(|e| format!("error setup: {e}"))?;
    // SAFETY: `cwd` is NUL-terminated.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return Err(format!(
            "error cwd {}: {}",
            config.cwd,
            std::io::Error::last_os_error()
        ));
    }
    report(status, &format!("landlock {}", entered.landlock));
    report(status, &format!("listener {}", entered.listener));
    // The exec blocks until the supervisor, holding a copy of the listener, decides.
    // SAFETY: all three pointers are NUL-terminated strings / NULL-terminated arrays of them
    // that outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    let e = std::io::Error::last_os_error();
    Err(format!("error exec {}: {e}", program.to_string_lossy()))
}

/// Finds `argv[0]` in the rootfs: as given if it contains a slash, else in the usual
/// directories. Returns the path as seen inside the sandbox.
fn resolve(argv: &[String], rootfs: &Path) -> Result<String, String> {
    let Some(cmd) = argv.first() else {
        return Err("error exec: no command given".into());
    };
    if cmd.contains('/') {
        return Ok(cmd.clone());
    }
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let inside = format!("{dir}/{cmd}");
        let host = rootfs.join(inside.trim_start_matches('/'));
        if std::fs::symlink_metadata(&host).is_ok() {
            return Ok(inside);
        }
    }
    Err(format!(
        "error exec {cmd}: not found in /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin, /sbin or /bin of the image"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_absolute_v1_tasks_file_is_joined() {
        for bad in ["tasks", "/sys/fs/cgroup/pids/x/cgroup.procs", "/etc/passwd"] {
            let e = join_cgroup(Path::new(bad)).err().map(|e| e.to_string());
            assert_eq!(e.as_deref(), Some("not a cgroup v1 tasks file"), "{bad}");
        }
        // A tasks file that is not there is an I/O error, not a silent success.
        let missing = join_cgroup(Path::new("/nonexistent/ringfence/tasks"));
        assert!(missing.is_err());
    }
}
