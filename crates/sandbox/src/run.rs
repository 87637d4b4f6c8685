//! Starting a sandbox and supervising it to the end.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ringfence_provenance::statement::Sha256;
use serde::Serialize;

use crate::cgroup::{Cgroup, CgroupError, Limits};
use crate::image::{ExecIndex, ImageError};
use crate::init::{CONFIG_FD, INIT_ARG, InitConfig, STATUS_FD};
use crate::seccomp::Profile;
use crate::supervisor::{Event, fetch_listener, serve};

/// Where the root filesystem comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory used as it is (its executables are indexed at start).
    Rootfs(PathBuf),
    /// An OCI image layout, verified and unpacked under the work directory.
    Image(PathBuf),
}

/// Everything a sandbox run needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The root filesystem.
    pub source: Source,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Extra environment (`K=V`), on top of `PATH`, `HOME` and `TERM`.
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Syscall profile.
    pub profile: Profile,
    /// Resource limits.
    pub limits: Limits,
    /// The unprivileged host uid and gid the task's root maps to.
    pub host_uid: u32,
    /// See `host_uid`.
    pub host_gid: u32,
    /// Host name inside.
    pub hostname: String,
    /// The program that runs [`crate::init::main`] when given `__sandbox-init`.
    pub init_program: PathBuf,
    /// Fork the init from this process instead of starting `init_program`, when this process
    /// is single-threaded at the time (checked; otherwise `init_program` is started). It
    /// spares an exec and a dynamic loader (about a millisecond); a multi-threaded process
    /// cannot fork safely, since the child could inherit a lock another thread held.
    pub fork_init: bool,
    /// Where images are unpacked.
    pub work_dir: PathBuf,
    /// The cgroup filesystem root.
    pub cgroup_root: PathBuf,
    /// Network: loopback only, or a veth pair to the host.
    pub network: crate::net::Network,
    /// An egress allow-list: when set, every TCP connection the task opens is checked
    /// against it and made by the supervisor (see [`crate::egress`]); `None`: not mediated.
    pub egress: Option<crate::egress::Egress>,
    /// Host directories bound inside (never executable).
    pub volumes: Vec<crate::setup::Volume>,
    /// For `Source::Image`: the manifest digest the image must have (checked at every start,
    /// so a layout replaced after admission is refused).
    pub expect_digest: Option<Sha256>,
    /// Files the task's stdout and stderr are appended to (inherited when `None`).
    pub stdout: Option<PathBuf>,
    /// See `stdout`.
    pub stderr: Option<PathBuf>,
}

/// Why a sandbox could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The rootfs or image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Limits.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Starting the init.
    #[error("cannot start the sandbox: {0}")]
    Start(String),
    /// The sandbox needs root on the host.
    #[error(
        "the sandbox needs root on the host (to map the task to an unprivileged uid and to create its cgroups); run it as root"
    )]
    NotRoot,
    /// The setup inside failed.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The egress allow-list cannot be enforced.
    #[error("cannot enforce the egress allow-list: {0}")]
    Egress(String),
}

/// How the task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Exit {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// How the task ended.
    pub exit: Exit,
    /// The OOM killer acted.
    pub oom_killed: bool,
    /// Forks refused by the pids limit.
    pub pids_refused: u64,
    /// Peak memory, where known.
    pub memory_peak: Option<u64>,
    /// Exec decisions and other events.
    pub events: Vec<Event>,
    /// Events beyond the first `MAX_EVENTS`, counted only.
    pub events_dropped: u64,
    /// Landlock status.
    pub landlock: String,
    /// The image digest, for `--image`.
    pub image: Option<String>,
    /// How many executables the verified image has.
    pub executables: usize,
}

impl Outcome {
    /// The exit code to pass on: the task's code, or 128 + signal.
    pub fn code(&self) -> u8 {
        match self.exit {
            Exit::Code(c) => u8::try_from(c).unwrap_or(1),
            Exit::Signal(s) => u8::try_from(128 + s).unwrap_or(255),
        }
    }

    /// A line explaining an abnormal end, if any.
    pub fn explanation(&self) -> Option<String> {
        if self.oom_killed {
            return Some("killed: out of memory (the sandbox's memory limit was reached)".into());
        }
        match self.exit {
            Exit::Signal(libc::SIGSYS) => Some(
                "killed by the syscall filter (SIGSYS): a call from another ABI (ia32 int 0x80 or x32)".into(),
            ),
            Exit::Signal(s) => Some(format!("killed by signal {s}")),
            Exit::Code(_) if self.pids_refused > 0 => Some(format!(
                "the pids limit refused {} fork(s)",
                self.pids_refused
            )),
            Exit::Code(_) => None,
        }
    }
}

/// Processes and threads a sandbox's uid may have when no pids limit is given.
pub const DEFAULT_NPROC: u64 = 1024;

/// Exec refusals, and separately allowed execs, kept per sandbox; later ones are only counted.
pub const MAX_EVENTS: usize = 1000;

/// A prepared root filesystem and its executable index.
struct Prepared {
    rootfs: PathBuf,
    index: Arc<ExecIndex>,
    image: Option<Sha256>,
    _unpacked: Option<Unpacked>,
}

struct Unpacked(PathBuf);

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn prepare(cfg: &Config, id: &str) -> Result<Prepared, SandboxError> {
    match &cfg.source {
        Source::Rootfs(dir) => {
            let rootfs = crate::image::prepare_rootfs(dir)?;
            private_work_dir(&cfg.work_dir)?;
            let index =
                ExecIndex::build_cached(&rootfs, Some(&cfg.work_dir.join("exec-digests.json")))?;
            Ok(Prepared {
                rootfs,
                index: Arc::new(index),
                image: None,
                _unpacked: None,
            })
        }
        Source::Image(layout) => {
            let dir = cfg.work_dir.join(id);
            private_work_dir(&cfg.work_dir)?;
            let guard = Unpacked(dir.clone());
            let digest = crate::image::unpack(layout, &dir)?;
            if let Some(want) = &cfg.expect_digest
                && *want != digest
            {
                return Err(SandboxError::Start(format!(
                    "image {} is {digest}, not the admitted {want}",
                    layout.display()
                )));
            }
            let rootfs = crate::image::prepare_rootfs(&dir)?;
            let index = ExecIndex::build(&rootfs)?;
            Ok(Prepared {
                rootfs,
                index: Arc::new(index),
                image: Some(digest),
                _unpacked: Some(guard),
            })
        }
    }
}

/// Creates the work directory (root's, mode 0711: the sandbox uid may pass through to an
/// unpacked root, nobody else may list or change it) or checks an existing one.
fn private_work_dir(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(|e| SandboxError::Start(format!("work dir {}: {e}", dir.display())))?;
    }
    crate::image::check_private_dir(dir)?;
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 returned two fresh descriptors owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Kills a sandbox through pidfds of its init and its task, so a recycled pid is never hit.
#[derive(Debug, Clone, Default)]
pub struct Killer(Arc<Mutex<Vec<OwnedFd>>>);

impl Killer {
    fn add(&self, pid: u32) {
        if let Ok(fd) = crate::sys::pidfd_open(pid) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(fd);
        }
    }

    /// SIGKILL to the task (pid 1 of its namespace: everything inside dies with it) and to the
    /// init. Safe after they have exited and been reaped.
    pub fn kill(&self) {
        for fd in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: `fd` is an open pidfd; a null siginfo is allowed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

/// A running sandbox.
pub struct Running {
    killer: Killer,
    child: InitProcess,
    status: BufReader<std::fs::File>,
    prepared: Prepared,
    cgroup: Option<Cgroup>,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<(Vec<Event>, u64)>>,
    report: Arc<dyn Fn(&Event) + Send + Sync>,
    landlock: String,
    egress: Option<Arc<crate::egress::Egress>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    /// Hands the seccomp listener to the supervisor thread, started before the init's setup
    /// so that its start-up does not delay the task's first exec.
    listener_tx: Option<std::sync::mpsc::SyncSender<OwnedFd>>,
    host_link: Option<crate::net::HostLink>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("pid", &self.child.id())
            .finish()
    }
}

/// The sandbox's init (spawned or forked): a child of this process, reaped once.
struct InitProcess {
    pid: libc::pid_t,
    reaped: bool,
}

impl InitProcess {
    fn id(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    fn kill(&mut self) {
        if !self.reaped {
            // Not yet reaped, so the pid cannot have been reused.
            // SAFETY: plain integer arguments.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn wait(&mut self) -> std::io::Result<Exit> {
        if self.reaped {
            return Err(std::io::Error::other("the init was already reaped"));
        }
        let mut wstatus = 0;
        loop {
            // SAFETY: `wstatus` is a writable int; `pid` is our unreaped child.
            if unsafe { libc::waitpid(self.pid, &mut wstatus, 0) } == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        self.reaped = true;
        Ok(if libc::WIFEXITED(wstatus) {
            Exit::Code(libc::WEXITSTATUS(wstatus))
        } else if libc::WIFSIGNALED(wstatus) {
            Exit::Signal(libc::WTERMSIG(wstatus))
        } else {
            Exit::Code(125)
        })
    }
}

/// Whether this process has one thread (then only the caller could start another).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.take(2).count() == 1)
}

/// Forks the init from this (single-threaded) process: the child puts the configuration and
/// status pipes at fds 3 and 4 and the log files at 1 and 2, closes every other descriptor,
/// and runs [`crate::init::run`] with the arguments the started init would get.
fn fork_init(
    args: &[String],
    pipes: (i32, i32),
    logs: (Option<i32>, Option<i32>),
) -> std::io::Result<libc::pid_t> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the caller checked that this process has a single thread, so no lock in the
    // child can be held by a thread that does not exist there: the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // The child must never return into the caller's frames: a panic ends it like an error.
    let code = std::panic::catch_unwind(|| forked_init(parent, args, pipes, logs)).unwrap_or(125);
    // SAFETY: ends the child without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

fn forked_init(
    parent: libc::pid_t,
    args: &[String],
    (cfg_r, st_w): (i32, i32),
    (stdout, stderr): (Option<i32>, Option<i32>),
) -> i32 {
    // The child is this process's copy, memory included, until the init's task execs; it
    // stays unreadable to the sandbox's uid because changing uid away from root makes it
    // non-dumpable (see `init::run`).
    // What an exec would have given it: every signal at its default action and none blocked
    // (a caller's handler could otherwise run here, on renumbered descriptors), SIGPIPE
    // ignored as the Rust runtime of a started init has it.
    crate::init::reset_signals();
    // SAFETY: plain integer arguments; SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // SAFETY: plain integer arguments on descriptors this child inherited; nothing in the
    // child uses the numbers being replaced or closed.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
            || libc::getppid() != parent
        {
            return 125;
        }
        // Move everything out of the way first (one could sit on another's target number).
        let moved = |fd: i32| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
        let (a, b) = (moved(cfg_r), moved(st_w));
        let (o, e) = (stdout.map(moved), stderr.map(moved));
        if a < 0 || b < 0 || o.is_some_and(|o| o < 0) || e.is_some_and(|e| e < 0) {
            return 125;
        }
        for (from, to) in [(Some(a), CONFIG_FD), (Some(b), STATUS_FD), (o, 1), (e, 2)] {
            if let Some(from) = from
                && libc::dup2(from, to) < 0
            {
                return 125;
            }
        }
        // Every other descriptor of the supervisor goes (the config pipe's write end among
        // them: the init reads the configuration to its end). A close-on-exec descriptor on
        // 0, 1 or 2 (a caller that had closed its standard streams gets its pipes there) goes
        // too, as an exec would close it.
        if libc::syscall(libc::SYS_close_range, STATUS_FD + 1, u32::MAX, 0) != 0 {
            return 125;
        }
        for (fd, replaced) in [(0, false), (1, o.is_some()), (2, e.is_some())] {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if !replaced && flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::close(fd);
            }
        }
    }
    crate::init::run(args)
}

/// Whether this process may start sandboxes (each maps the task's root to a host uid of its
/// own, which needs root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts a sandbox: prepares the rootfs, creates the cgroups, starts the init in new
/// namespaces, maps its uid/gid, and waits until the task is about to exec (its exec is the
/// supervisor's first decision). `report` sees every event as it happens.
pub fn start(
    cfg: &Config,
    report: Arc<dyn Fn(&Event) + Send + Sync>,
) -> Result<Running, SandboxError> {
    if !is_root() {
        return Err(SandboxError::NotRoot);
    }
    if cfg.host_uid == 0 || cfg.host_gid == 0 {
        return Err(SandboxError::Start(
            "the task's root must map to an unprivileged host uid and gid, not 0".into(),
        ));
    }
    if cfg.egress.is_some() {
        check_egress(&cfg.profile)?;
    }
    let id = format!(
        "sbx-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let prepared = prepare(cfg, &id)?;
    let mut volumes = Vec::with_capacity(cfg.volumes.len());
    for v in &cfg.volumes {
        v.check()
            .map_err(|why| SandboxError::Start(format!("volume {}: {why}", v.inside)))?;
        let host = std::fs::canonicalize(&v.host)
            .map_err(|e| SandboxError::Start(format!("volume {}: {e}", v.host.display())))?;
        if !host.is_dir() {
            return Err(SandboxError::Start(format!(
                "volume {}: not a directory",
                host.display()
            )));
        }
        if host.starts_with(&prepared.rootfs) || prepared.rootfs.starts_with(&host) {
            return Err(SandboxError::Start(format!(
                "volume {}: overlaps the rootfs {}; a file could then be both writable and \
                 executable",
                host.display(),
                prepared.rootfs.display()
            )));
        }
        crate::image::volume_target(&prepared.rootfs, &v.inside)?;
        volumes.push(crate::setup::Volume { host, ..v.clone() });
    }
    // Limits are opt-in: moving a process into a cgroup costs an RCU grace period on most
    // kernels (milliseconds), so a sandbox without limits has no cgroup of its own.
    let cgroup = if cfg.limits == Limits::default() {
        None
    } else {
        Some(Cgroup::create(&cfg.cgroup_root, &id, cfg.limits)?)
    };
    let start_err = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| SandboxError::Start(format!("{what}: {e}"))
    };
    let (cfg_r, cfg_w) = pipe().map_err(start_err("pipe"))?;
    let (st_r, st_w) = pipe().map_err(start_err("pipe"))?;
    let (cfg_r_fd, st_w_fd) = (cfg_r.as_raw_fd(), st_w.as_raw_fd());
    // On v1 the init, single-threaded, moves itself into the cgroups before anything else
    // (see `Cgroup::self_join_files`); on v2 this process moves it below.
    let self_join = cgroup.as_ref().and_then(Cgroup::self_join_files);
    // Loopback only: the init makes the network namespace while the task pivots (see
    // `net::send_new_netns`), where the kernel can hand it over.
    let net = if cfg.network == crate::net::Network::None && crate::net::late_netns_supported() {
        crate::init::NET_LATE
    } else {
        crate::init::NET_AT_START
    };
    let mut init_args = vec![
        cfg.host_uid.to_string(),
        cfg.host_gid.to_string(),
        net.to_owned(),
    ];
    init_args.extend(
        self_join
            .iter()
            .flatten()
            .map(|f| f.to_string_lossy().into_owned()),
    );
    let append = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| SandboxError::Start(format!("log file {}: {e}", p.display())))
            })
            .transpose()
    };
    let (stdout, stderr) = (append(&cfg.stdout)?, append(&cfg.stderr)?);
    let child = if cfg.fork_init && single_threaded() {
        let fd = |f: &Option<std::fs::File>| f.as_ref().map(AsRawFd::as_raw_fd);
        let pid = fork_init(&init_args, (cfg_r_fd, st_w_fd), (fd(&stdout), fd(&stderr)))
            .map_err(start_err("starting the sandbox init"))?;
        InitProcess { pid, reaped: false }
    } else {
        let pid = spawn_init(
            cfg,
            &init_args,
            (cfg_r_fd, st_w_fd),
            stdout.as_ref(),
            stderr.as_ref(),
        )?;
        InitProcess { pid, reaped: false }
    };
    drop((stdout, stderr));
    drop(cfg_r);
    drop(st_w);
    let pid = child.id();
    let killer = Killer::default();
    killer.add(pid);
    let mut running = Running {
        killer,
        child,
        status: BufReader::new(std::fs::File::from(st_r)),
        prepared,
        cgroup,
        stop: Arc::new(AtomicBool::new(false)),
        events: Arc::new(Mutex::new((Vec::new(), 0))),
        report,
        landlock: String::new(),
        egress: cfg.egress.clone().map(Arc::new),
        supervisor: None,
        listener_tx: None,
        host_link: None,
    };
    running.spawn_supervisor();
    finish_start(cfg, &id, &volumes, self_join.is_some(), &mut running, cfg_w)?;
    Ok(running)
}

/// An egress allow-list needs sockets in the profile and landlock's TCP rules in the kernel:
/// without them the task could connect on its own, so the sandbox does not start.
fn check_egress(profile: &Profile) -> Result<(), SandboxError> {
    profile
        .clone()
        .with_egress_mediation()
        .map_err(|e| SandboxError::Egress(e.to_owned()))?;
    let abi = crate::landlock::abi();
    if abi < 4 {
        return Err(SandboxError::Egress(format!(
            "an egress allow-list needs landlock's TCP rules (ABI 4, Linux 6.7); this kernel has ABI {abi}"
        )));
    }
    Ok(())
}

/// Starts `init_program` as the init with `posix_spawn`, which glibc makes a `vfork`-style
/// clone: no copy of this (possibly large, multi-threaded) process's page tables, and nothing
/// of this process runs in the child. The pipes go to fds 3 and 4 and the log files to 1 and
/// 2 through file actions; every signal starts at its default action, none blocked; the
/// environment is empty. (The init sets its parent-death signal itself, first thing; if this
/// process dies before, the configuration pipe's end of file stops the init.)
fn spawn_init(
    cfg: &Config,
    args: &[String],
    (cfg_r_fd, st_w_fd): (i32, i32),
    stdout: Option<&std::fs::File>,
    stderr: Option<&std::fs::File>,
) -> Result<libc::pid_t, SandboxError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let fail = |what: &str, rc: i32| {
        let e = std::io::Error::from_raw_os_error(rc);
        let p = cfg.init_program.display();
        SandboxError::Start(if what.is_empty() {
            format!("starting the sandbox init {p}: {e}")
        } else {
            format!("starting the sandbox init {p} ({what}): {e}")
        })
    };
    let nul = |_| SandboxError::Start("starting the sandbox init: an argument contains NUL".into());
    let program = CString::new(cfg.init_program.as_os_str().as_bytes()).map_err(nul)?;
    let mut argv = vec![program.clone(), CString::new(INIT_ARG).map_err(nul)?];
    for a in args {
        argv.push(CString::new(a.as_str()).map_err(nul)?);
    }
    let mut argv_ptrs: Vec<*mut libc::c_char> =
        argv.iter().map(|c| c.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    // Out of the way first (one could sit on another's target number), then into place. The
    // temporary numbers are the lowest above the targets that no source uses (in the child a
    // dup2 onto an fd of this process only closes the child's copy), closed before the exec.
    let logs = [
        stdout.map(AsRawFd::as_raw_fd),
        stderr.map(AsRawFd::as_raw_fd),
    ];
    let moves: Vec<(i32, i32)> = [
        Some((cfg_r_fd, CONFIG_FD)),
        Some((st_w_fd, STATUS_FD)),
        logs[0].map(|fd| (fd, 1)),
        logs[1].map(|fd| (fd, 2)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let temps: Vec<i32> = (STATUS_FD + 1..)
        .filter(|n| !moves.iter().any(|(from, _)| from == n))
        .take(moves.len())
        .collect();
    // SAFETY: `actions` and `attr` are initialised by their init functions before use and
    // destroyed once; every pointer passed (program, argv, envp) is NUL-terminated, and they
    // and the CStrings they point into outlive the posix_spawn call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let rc = libc::posix_spawn_file_actions_init(&mut actions);
        if rc != 0 {
            return Err(fail("file actions", rc));
        }
        let rc = libc::posix_spawnattr_init(&mut attr);
        if rc != 0 {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(fail("attributes", rc));
        }
        let mut rc = 0;
        for ((from, _), temp) in moves.iter().zip(&temps) {
            rc |= libc::posix_spawn_file_actions_adddup2(&mut actions, *from, *temp);
        }
        for ((_, to), temp) in moves.iter().zip(&temps) {
            rc |= libc::posix_spawn_file_actions_adddup2(&mut actions, *temp, *to);
            rc |= libc::posix_spawn_file_actions_addclose(&mut actions, *temp);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigfillset(&mut all);
        rc |= libc::posix_spawnattr_setsigmask(&mut attr, &none);
        rc |= libc::posix_spawnattr_setsigdefault(&mut attr, &all);
        rc |= libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
        );
        let mut pid: libc::pid_t = 0;
        if rc == 0 {
            rc = libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                envp.as_ptr(),
            );
        } else {
            rc = libc::EINVAL;
        }
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        if rc != 0 {
            return Err(fail("", rc));
        }
        Ok(pid)
    }
}

/// The rest of the start, once the init runs: uid/gid maps, network, cgroup, configuration,
/// and the seccomp listener. On error the sandbox is killed and reaped.
fn finish_start(
    cfg: &Config,
    id: &str,
    volumes: &[crate::setup::Volume],
    self_join: bool,
    running: &mut Running,
    cfg_w: OwnedFd,
) -> Result<(), SandboxError> {
    let pid = running.child.id();
    let cgroup = running.cgroup.take();
    let setup = std::thread::scope(|scope| -> Result<(), SandboxError> {
        // On v2, moving a process into a cgroup waits for an RCU grace period (milliseconds):
        // start it now, while the init starts, and wait for it only before the task can be
        // forked.
        let mut attach = cgroup
            .as_ref()
            .filter(|_| !self_join)
            .map(|cg| scope.spawn(move || cg.add(pid)));
        running.expect_line("unshared")?;
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/{pid}/{file}"), text)
                .map_err(|e| SandboxError::Start(format!("writing {file}: {e}")))
        };
        write("uid_map", format!("0 {} 1\n", cfg.host_uid))?;
        write("gid_map", format!("0 {} 1\n", cfg.host_gid))?;
        if let crate::net::Network::Veth(v) = &cfg.network {
            let link = crate::net::create_veth(&crate::net::host_if_name(id), pid, v)
                .map_err(|e| SandboxError::Start(format!("network: {e}")))?;
            running.host_link = Some(link);
        }
        if let Some(handle) = attach.take() {
            handle
                .join()
                .map_err(|_| SandboxError::Start("the cgroup thread panicked".into()))??;
        }
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            "HOME=/".to_owned(),
        ];
        env.extend(cfg.env.iter().cloned());
        let init = InitConfig {
            rootfs: running.prepared.rootfs.clone(),
            hostname: cfg.hostname.clone(),
            argv: cfg.argv.clone(),
            env,
            cwd: cfg.cwd.clone(),
            profile: cfg.profile.name.to_owned(),
            tmp_size: 64 << 20,
            nofile: nofile_limit(),
            // With a pids cgroup, that is the limit; the rlimit stays out of its way.
            nproc: cfg
                .limits
                .pids
                .map_or(DEFAULT_NPROC, |p| p.saturating_add(8).max(DEFAULT_NPROC)),
            network: cfg.network.clone(),
            volumes: volumes.to_vec(),
            mediate_connect: cfg.egress.is_some(),
        };
        let text = serde_json::to_vec(&init).map_err(|e| SandboxError::Start(e.to_string()))?;
        let mut w = std::fs::File::from(cfg_w);
        w.write_all(&text)
            .map_err(|e| SandboxError::Start(format!("sending the configuration: {e}")))?;
        drop(w);
        running.await_listener()
    });
    running.cgroup = cgroup;
    if let Err(e) = setup {
        running.killer.kill();
        running.child.kill();
        let _ = running.child.wait();
        return Err(e);
    }
    Ok(())
}

fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_max.min(4096)
}

impl Running {
    /// The init's host pid (killing it kills the whole sandbox).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A handle that kills this sandbox, usable from any thread, even after it ended.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }

    /// The verified image's executables.
    pub fn index(&self) -> &ExecIndex {
        &self.prepared.index
    }

    /// Starts the supervisor thread; it serves the listener once `await_listener` sends it,
    /// and ends at once if none comes (the start failed).
    fn spawn_supervisor(&mut self) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<OwnedFd>(1);
        let index = Arc::clone(&self.prepared.index);
        let egress = self.egress.clone();
        let stop = Arc::clone(&self.stop);
        let events = Arc::clone(&self.events);
        let report = Arc::clone(&self.report);
        self.listener_tx = Some(tx);
        self.supervisor = Some(std::thread::spawn(move || {
            let Ok(listener) = rx.recv() else {
                return;
            };
            // Bounded: a task looping on refused execs cannot grow the supervisor's memory or
            // flood its log; the rest are counted. Refusals and allowed execs are capped
            // apart, so a task running /bin/true in a loop cannot hide a later refusal.
            let sink = move |e: Event| {
                let mut ev = events.lock().unwrap_or_else(|p| p.into_inner());
                let refused = e.is_refusal();
                let kept = ev.0.iter().filter(|k| k.is_refusal() == refused).count();
                if kept < MAX_EVENTS {
                    report(&e);
                    ev.0.push(e);
                } else {
                    ev.1 += 1;
                }
            };
            serve(listener, index, egress, stop, Arc::new(sink));
        }));
    }

    fn expect_line(&mut self, want: &str) -> Result<(), SandboxError> {
        let mut line = String::new();
        self.status
            .read_line(&mut line)
            .map_err(|e| SandboxError::Start(format!("reading the init's status: {e}")))?;
        let line = line.trim_end();
        if line == want {
            return Ok(());
        }
        Err(match line.strip_prefix("error ") {
            Some(e) => SandboxError::Setup(e.to_owned()),
            None if line.is_empty() => {
                SandboxError::Setup("the sandbox init exited before the task started".into())
            }
            None => SandboxError::Setup(format!("unexpected status {line:?}")),
        })
    }

    fn await_listener(&mut self) -> Result<(), SandboxError> {
        let mut task_pid = None;
        let mut listener_fd: Option<i32> = None;
        loop {
            let mut line = String::new();
            let n = self
                .status
                .read_line(&mut line)
                .map_err(|e| SandboxError::Start(format!("reading the init's status: {e}")))?;
            if n == 0 {
                return Err(SandboxError::Setup(
                    "the sandbox init exited before the task started".into(),
                ));
            }
            let line = line.trim_end();
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "pid" => task_pid = rest.parse::<u32>().ok(),
                "landlock" => self.landlock = rest.to_owned(),
                "listener" => {
                    listener_fd =
                        Some(rest.parse().map_err(|_| {
                            SandboxError::Setup(format!("bad status line {line:?}"))
                        })?)
                }
                "error" => return Err(SandboxError::Setup(rest.to_owned())),
                _ => {}
            }
            // The init's "pid" and the task's "listener" race to the pipe: take them in
            // either order.
            if let (Some(pid), Some(fd)) = (task_pid, listener_fd) {
                self.killer.add(pid);
                let listener = fetch_listener(pid, fd).map_err(|e| {
                    SandboxError::Setup(format!("taking the seccomp listener: {e}"))
                })?;
                let sent = self
                    .listener_tx
                    .take()
                    .is_some_and(|tx| tx.send(listener).is_ok());
                if !sent {
                    return Err(SandboxError::Start(
                        "the exec supervisor thread is gone".into(),
                    ));
                }
                return Ok(());
            }
        }
    }

    /// Waits for the task to end and collects what happened.
    pub fn wait(mut self) -> Result<Outcome, SandboxError> {
        let mut exit = None;
        let mut errors = Vec::new();
        let mut line = String::new();
        while self.status.read_line(&mut line).unwrap_or(0) > 0 {
            let l = line.trim_end();
            let (key, rest) = l.split_once(' ').unwrap_or((l, ""));
            match key {
                "exit" => exit = rest.parse().ok().map(Exit::Code),
                "signal" => exit = rest.parse().ok().map(Exit::Signal),
                "error" => errors.push(rest.to_owned()),
                _ => {}
            }
            line.clear();
        }
        let status = self
            .child
            .wait()
            .map_err(|e| SandboxError::Start(format!("waiting for the sandbox: {e}")))?;
        drop(self.host_link.take());
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        let exit = exit.unwrap_or(status);
        if let Some(e) = errors.first() {
            return Err(SandboxError::Setup(e.clone()));
        }
        let (events, events_dropped) =
            std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Outcome {
            exit,
            oom_killed: self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0),
            pids_refused: self.cgroup.as_ref().map_or(0, Cgroup::pids_refused),
            memory_peak: self.cgroup.as_ref().and_then(Cgroup::memory_peak),
            events,
            events_dropped,
            landlock: std::mem::take(&mut self.landlock),
            image: self.prepared.image.as_ref().map(|d| d.to_string()),
            executables: self.prepared.index.len(),
        })
    }
}

/// Starts a sandbox and waits for it.
pub fn run(
    cfg: &Config,
    report: Arc<dyn Fn(&Event) + Send + Sync>,
) -> Result<Outcome, SandboxError> {
    start(cfg, report)?.wait()
}

/// Default work directory for unpacked images and the digest cache: root's, on tmpfs.
pub fn default_work_dir() -> PathBuf {
    PathBuf::from("/run/ringfence/sandbox")
}

/// The default cgroup root.
pub fn default_cgroup_root() -> &'static Path {
    Path::new("/sys/fs/cgroup")
}

/// Why `uid` may not be private to a sandbox: a user of that id in `passwd`, or a subordinate
/// id range in `subuid` that contains it (processes of that user's containers would own the
/// sandbox's user namespace too). Pure: the caller passes the files' text.
pub fn uid_conflicts(uid: u32, passwd: &str, subuid: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(id)) = (f.first(), f.get(2))
            && id.parse::<u32>().ok() == Some(uid)
        {
            out.push(format!("uid {uid} is the user {name} in /etc/passwd"));
        }
    }
    for line in subuid.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(start), Some(count)) = (f.first(), f.get(1), f.get(2))
            && let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>())
            && (start..start.saturating_add(count)).contains(&u64::from(uid))
        {
            out.push(format!(
                "uid {uid} is in {name}'s subordinate range {start}+{count} in /etc/subuid"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_a_second_thread_is_not_single_threaded() {
        // The test harness runs this on a thread of its own: never one thread, so a library
        // caller in a multi-threaded process gets the started init, not a fork.
        assert!(!single_threaded());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        assert!(!single_threaded());
        drop(tx);
        let _ = t.join();
    }

    #[test]
    fn uid_conflicts_name_passwd_users_and_subuid_ranges() {
        let passwd = "root:x:0:0::/root:/bin/sh\nsvc:x:100000:100000::/:/bin/false\n";
        let subuid = "alice:100000:65536\nbob:300000:65536\n";
        assert_eq!(
            uid_conflicts(100_000, passwd, subuid),
            [
                "uid 100000 is the user svc in /etc/passwd",
                "uid 100000 is in alice's subordinate range 100000+65536 in /etc/subuid",
            ]
        );
        assert!(uid_conflicts(900_000, passwd, subuid).is_empty());
        assert!(uid_conflicts(5, "garbage\n::\n", "x:y:z\n").is_empty());
    }
}
