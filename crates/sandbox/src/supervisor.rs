//! The exec supervisor: receives every `execve`/`execveat` of the sandbox through the seccomp
//! user-notification listener, opens the file the call names *inside the task's root*
//! (`openat2` with `RESOLVE_IN_ROOT`, so absolute symlinks cannot point at the host), and lets
//! the call continue only when the file is one of the verified image's executables.
//!
//! With an egress allow-list it also receives every `connect` (see [`crate::egress`]): for an
//! IPv4 or IPv6 socket it copies the address out once, checks it, and connects the task's
//! socket itself, so what the kernel connects is what was checked.
//!
//! The kernel re-reads the path after the supervisor answers, so a second thread of the task
//! could swap it in between (the user-notification man page warns of exactly this). That race
//! only ever reaches files the kernel itself will execute, and every such file is on the
//! read-only image root: `/tmp`, `/dev` and `/proc` are mounted `noexec`. The supervisor is
//! what names the refused file and reports it; the mounts are what make the guarantee hold.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ringfence_provenance::statement::Sha256;
use serde::Serialize;

use crate::egress::Egress;
use crate::image::ExecIndex;

/// Something the sandbox did that its operator should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An exec of a verified executable.
    ExecAllowed {
        /// Host pid of the caller.
        pid: u32,
        /// The image path of the executable.
        path: String,
    },
    /// A connection the egress allow-list let through (made by the supervisor).
    ConnectAllowed {
        /// Host pid of the caller.
        pid: u32,
        /// The destination.
        to: String,
    },
    /// A connection the egress allow-list refused.
    ConnectRefused {
        /// Host pid of the caller.
        pid: u32,
        /// The destination.
        to: String,
        /// Why.
        reason: String,
    },
    /// An exec refused: drift.
    ExecRefused {
        /// Host pid of the caller.
        pid: u32,
        /// The path the task asked for (as it wrote it).
        path: String,
        /// The content digest, when computed.
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Why.
        reason: String,
    },
}

impl Event {
    /// Whether this reports something refused (what an operator must see).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Event::ExecRefused { .. } | Event::ConnectRefused { .. }
        )
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::ConnectAllowed { to, .. } => write!(f, "egress: connect to {to}: allowed"),
            Event::ConnectRefused { to, reason, .. } => {
                write!(f, "egress: refused connect to {to}: {reason}")
            }
            Event::ExecAllowed { path, .. } => {
                write!(f, "exec {}: allowed (verified image)", path.escape_debug())
            }
            Event::ExecRefused {
                path,
                sha256,
                reason,
                ..
            } => {
                // Escaped: a path is the task's to choose, control characters included.
                write!(f, "drift: refused exec of {}", path.escape_debug())?;
                if let Some(s) = sha256 {
                    write!(f, " (sha256:{s})")?;
                }
                write!(f, ": {reason}")
            }
        }
    }
}

/// Takes the listener from the task (the supervisor is root in the initial namespaces).
pub fn fetch_listener(pid: u32, fd: RawFd) -> std::io::Result<OwnedFd> {
    let pidfd = crate::sys::pidfd_open(pid)?;
    // SAFETY: plain integer arguments; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor now owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Serves notifications until every task using the filter has gone (the listener hangs up)
/// or `stop` is set; calls `report` for each decision.
pub fn serve(
    listener: OwnedFd,
    index: Arc<ExecIndex>,
    egress: Option<Arc<Egress>>,
    stop: Arc<AtomicBool>,
    report: Report,
) {
    // Shared with the threads that finish blocking connects, which may outlive this loop.
    let listener = Arc::new(listener);
    let fd = listener.as_raw_fd();
    let workers = Workers::new();
    let _reap = ReapOnExit(&workers, fd);
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        workers.reap(fd, false);
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if n == 0 {
            continue;
        }
        if pfd.revents & libc::POLLIN == 0 {
            return; // POLLHUP: nothing left to supervise
        }
        // SAFETY: the kernel requires a zeroed struct; all-zero is a valid seccomp_notif.
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: `notif` is a writable seccomp_notif, the size the ioctl expects.
        let rc = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) };
        if rc != 0 {
            // ENOENT: the caller died before we read it. Anything else: keep serving.
            continue;
        }
        if i64::from(notif.data.nr) == libc::SYS_connect {
            match &egress {
                Some(egress) => connect(&listener, &notif, egress, &report, &workers),
                // A filter without an allow-list never sends connect here.
                None => respond(fd, notif.id, Reply::Return(libc::ENOSYS)),
            }
            continue;
        }
        let (errno, event) = decide(fd, &notif, &index);
        respond(
            fd,
            notif.id,
            if errno == 0 {
                Reply::Continue
            } else {
                Reply::Return(errno)
            },
        );
        if let Some(event) = event {
            report(event);
        }
    }
}

/// Where decisions are reported.
pub type Report = Arc<dyn Fn(Event) + Send + Sync>;

/// How a notification is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The kernel runs the call as the task made it.
    Continue,
    /// The call returns this errno (0: success) without running.
    Return(i32),
}

fn respond(listener: RawFd, id: u64, reply: Reply) {
    let (error, flags) = match reply {
        Reply::Continue => (0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32),
        Reply::Return(errno) => (-errno, 0),
    };
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error,
        flags,
    };
    // SAFETY: `resp` is a valid seccomp_notif_resp. Failure means the caller is gone.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
}

/// `connect(fd, addr, len)` under the egress allow-list. For an IPv4/IPv6 socket the
/// supervisor makes the connection itself, on its own duplicate of the task's socket, with
/// the bytes it copied and checked: the kernel never reads the task's memory again, so no
/// thread of the task can change the address after the check. Every connect runs on a
/// worker thread, so one slow peer does not hold up the task's execs.
fn connect(
    listener: &Arc<OwnedFd>,
    n: &libc::seccomp_notif,
    egress: &Egress,
    report: &Report,
    workers: &Workers,
) {
    let fd = listener.as_raw_fd();
    let prepared = match prepare_connect(fd, n, egress) {
        Ok(p) => p,
        Err((reply, event)) => {
            respond(fd, n.id, reply);
            if let Some(e) = event {
                report(e);
            }
            return;
        }
    };
    let (listener, report, id) = (Arc::clone(listener), Arc::clone(report), n.id);
    let (inflight, abort) = (Arc::clone(&workers.inflight), prepared.socket.try_clone());
    let finish = move || {
        let errno = prepared.connect();
        if let Ok(mut m) = inflight.lock() {
            m.remove(&id);
        }
        respond(listener.as_raw_fd(), id, Reply::Return(errno));
        // Reported as allowed once the kernel took the connection on.
        if matches!(errno, 0 | libc::EINPROGRESS)
            && let Some(e) = prepared.event
        {
            report(e);
        }
    };
    // Registered before it runs, so the serve loop can abort it once the call is gone.
    if let (Ok(abort), Ok(mut m)) = (abort, workers.inflight.lock()) {
        m.insert(id, abort);
    }
    // Never on this thread: the task can clear O_NONBLOCK at any time, and a connect can
    // then wait for hours.
    workers.run(Box::new(finish), || {
        if let Ok(mut m) = workers.inflight.lock() {
            m.remove(&id);
        }
        respond(fd, id, Reply::Return(libc::EAGAIN));
    });
}

/// Aborts every connect still under way when the serve loop ends.
struct ReapOnExit<'a>(&'a Workers, RawFd);

impl Drop for ReapOnExit<'_> {
    fn drop(&mut self) {
        self.0.reap(self.1, true);
    }
}

/// At most this many connects of one sandbox under way at once; beyond, `EAGAIN`.
const MAX_CONNECTS: usize = 32;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that make the checked connects: kept once started (starting one costs about
/// 0.1 ms here, more than the connect it serves), a new one only when none is idle, so one
/// slow peer never delays another connect; at most [`MAX_CONNECTS`]. A connect whose call is
/// gone (the task was interrupted or died) is aborted by the serve loop, so no thread is
/// left waiting on a peer nobody waits for. They end when the supervisor does.
struct Workers {
    tx: std::sync::mpsc::Sender<Job>,
    rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>,
    idle: Arc<std::sync::atomic::AtomicUsize>,
    started: std::sync::atomic::AtomicUsize,
    /// Connects under way: notification id and a duplicate of the socket, to shut it down.
    inflight: Arc<std::sync::Mutex<std::collections::HashMap<u64, File>>>,
}

impl Workers {
    fn new() -> Workers {
        let (tx, rx) = std::sync::mpsc::channel();
        Workers {
            tx,
            rx: Arc::new(std::sync::Mutex::new(rx)),
            idle: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            started: std::sync::atomic::AtomicUsize::new(0),
            inflight: Arc::default(),
        }
    }

    fn run(&self, job: Job, refused: impl FnOnce()) {
        // Claim an idle worker, or start one; either way exactly one worker takes this job.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
            if self.started.load(Ordering::Acquire) >= MAX_CONNECTS {
                refused();
                return;
            }
            let (rx, idle) = (Arc::clone(&self.rx), Arc::clone(&self.idle));
            let started = std::thread::Builder::new()
                .name("sandbox-connect".into())
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        job();
                        idle.fetch_add(1, Ordering::AcqRel);
                    }
                });
            if started.is_err() {
                refused();
                return;
            }
            self.started.fetch_add(1, Ordering::AcqRel);
        }
        if self.tx.send(job).is_err() {
            refused();
        }
    }

    /// Aborts the connects whose calls are gone (`all`: every one, the supervisor is ending).
    fn reap(&self, listener: RawFd, all: bool) {
        let Ok(mut m) = self.inflight.lock() else {
            return;
        };
        m.retain(|id, socket| {
            if !all && id_valid(listener, *id) {
                return true;
            }
            // SAFETY: `socket` is an open descriptor. Shutting down a connecting socket ends
            // the worker's connect with an error.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
            false
        });
    }
}

/// A checked connection, ready to be made.
struct Prepared {
    socket: File,
    addr: Vec<u8>,
    event: Option<Event>,
}

impl Prepared {
    /// Connects; the errno the task's call returns (0: connected).
    fn connect(&self) -> i32 {
        let len = libc::socklen_t::try_from(self.addr.len()).unwrap_or(0);
        // SAFETY: `socket` is an open descriptor; `addr` is readable for `len` bytes.
        let rc = unsafe { libc::connect(self.socket.as_raw_fd(), self.addr.as_ptr().cast(), len) };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        }
    }
}

type Answer = (Reply, Option<Event>);

fn prepare_connect(
    listener: RawFd,
    n: &libc::seccomp_notif,
    egress: &Egress,
) -> Result<Prepared, Answer> {
    let pid = n.pid;
    let errno = |e: &std::io::Error| Reply::Return(e.raw_os_error().unwrap_or(libc::EIO));
    let pinned = Pinned::open(pid).map_err(|e| (errno(&e), None))?;
    if !id_valid(listener, n.id) {
        return Err((Reply::Return(libc::ESRCH), None));
    }
    let (sockfd, ptr) = (n.data.args[0] as i32, n.data.args[1]);
    // `socklen_t` as the kernel reads it: an int, at most a sockaddr_storage.
    let len = n.data.args[2] as u32 as i32;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= std::mem::size_of::<libc::sockaddr_storage>())
        .ok_or((Reply::Return(libc::EINVAL), None))?;
    let socket = pinned.fd(sockfd).map_err(|e| (errno(&e), None))?;
    let domain = sockopt(&socket, libc::SO_DOMAIN).map_err(|e| (errno(&e), None))?;
    if domain == libc::AF_UNIX || domain == libc::AF_NETLINK {
        // Not network egress. Should another thread swap a TCP socket onto this descriptor
        // before the kernel runs the call, landlock refuses it: the task cannot connect a TCP
        // socket itself.
        return Err((Reply::Continue, None));
    }
    let tcp = (domain == libc::AF_INET || domain == libc::AF_INET6)
        && sockopt(&socket, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
        && sockopt(&socket, libc::SO_PROTOCOL).ok() == Some(libc::IPPROTO_TCP);
    if !tcp {
        // Whatever it is (a protocol the filter does not create, a socket turned into
        // another), it is not what landlock's TCP rule covers: never let it continue.
        return Err((
            Reply::Return(libc::EAFNOSUPPORT),
            Some(Event::ConnectRefused {
                pid,
                to: format!("a socket of family {domain}"),
                reason: "only TCP, unix and netlink sockets connect under an egress allow-list"
                    .into(),
            }),
        ));
    }
    let mut addr = vec![0u8; len];
    pinned
        .mem
        .read_exact_at(&mut addr, ptr)
        .map_err(|_| (Reply::Return(libc::EFAULT), None))?;
    let to = match crate::egress::decode(domain, &addr) {
        Ok(crate::egress::Target::Inet(to)) => to,
        // Dissolving an association reaches nobody.
        Ok(crate::egress::Target::Unspec) => {
            return Ok(Prepared {
                socket,
                addr,
                event: None,
            });
        }
        Err(e) => return Err((Reply::Return(e), None)),
    };
    if let Err(reason) = egress.check(to) {
        return Err((
            Reply::Return(libc::EACCES),
            Some(Event::ConnectRefused {
                pid,
                to: to.to_string(),
                reason,
            }),
        ));
    }
    Ok(Prepared {
        socket,
        addr,
        event: Some(Event::ConnectAllowed {
            pid,
            to: to.to_string(),
        }),
    })
}

/// An integer `SOL_SOCKET` option.
fn sockopt(f: &File, name: libc::c_int) -> std::io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `f` is open; `domain` and `len` are writable and sized for an int option.
    let rc = unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

fn refused(
    pid: u32,
    path: &str,
    sha256: Option<Sha256>,
    reason: impl Into<String>,
) -> (i32, Option<Event>) {
    (
        libc::EACCES,
        Some(Event::ExecRefused {
            pid,
            path: path.to_owned(),
            sha256: sha256.map(|s| s.hex().to_owned()),
            reason: reason.into(),
        }),
    )
}

/// The caller's `/proc` entries, opened before the notification is checked to be live, so
/// everything afterwards concerns that process even if its pid is reused meanwhile.
struct Pinned {
    dir: File,
    mem: File,
    root: File,
    pidfd: OwnedFd,
}

impl Pinned {
    fn open(pid: u32) -> std::io::Result<Pinned> {
        let dir = open_path(
            &format!("/proc/{pid}"),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )?;
        let mem = openat(&dir, "mem", libc::O_RDONLY | libc::O_CLOEXEC)?;
        let root = openat(
            &dir,
            "root",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )?;
        // The notification names the calling *thread*; a pidfd needs its thread group.
        let mut status = String::new();
        std::io::Read::read_to_string(
            &mut openat(&dir, "status", libc::O_RDONLY | libc::O_CLOEXEC)?,
            &mut status,
        )?;
        let tgid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:")?.trim().parse().ok())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        let pidfd = crate::sys::pidfd_open(tgid)?;
        Ok(Pinned {
            dir,
            mem,
            root,
            pidfd,
        })
    }

    /// A duplicate of the caller's descriptor `fd` (the file itself, no path involved).
    fn fd(&self, fd: i32) -> std::io::Result<File> {
        // SAFETY: plain integer arguments; returns a new fd or -1.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor now owned by the File.
        let file = unsafe { File::from_raw_fd(got as RawFd) };
        // The pidfd reaches the thread group's descriptor table; a thread made without
        // CLONE_FILES has its own. What the calling thread's `fd/N` shows must be this file.
        let here = file.metadata()?;
        let there = statat(&self.dir, &format!("fd/{fd}"))?;
        if (here.dev(), here.ino()) != there {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(file)
    }

    /// Where a link under the caller's `/proc/<pid>` points, as the caller sees it.
    fn link(&self, name: &str) -> std::io::Result<String> {
        let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: `dir` is an open directory fd, `c` NUL-terminated, `buf` writable for its len.
        let n = unsafe {
            libc::readlinkat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(usize::try_from(n).unwrap_or(0));
        String::from_utf8(buf).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// `(st_dev, st_ino)` of what `name` under `dir` points to (links followed).
fn statat(dir: &File, name: &str) -> std::io::Result<(u64, u64)> {
    let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `dir` is an open directory fd, `c` NUL-terminated, `st` a writable stat.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded and filled it.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

fn id_valid(listener: RawFd, id: u64) -> bool {
    // SAFETY: a valid u64 id for the ioctl.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
}

/// The errno to answer with (0: let the call continue) and what to report.
fn decide(listener: RawFd, n: &libc::seccomp_notif, index: &ExecIndex) -> (i32, Option<Event>) {
    let pid = n.pid;
    let nr = i64::from(n.data.nr);
    let (dirfd, ptr, flags) = if nr == libc::SYS_execve {
        (libc::AT_FDCWD, n.data.args[0], 0u64)
    } else if nr == libc::SYS_execveat {
        (n.data.args[0] as i32, n.data.args[1], n.data.args[4])
    } else {
        return refused(pid, "?", None, format!("unexpected syscall {nr}"));
    };
    let pinned = match Pinned::open(pid) {
        Ok(p) => p,
        Err(e) => return refused(pid, "?", None, format!("cannot inspect the caller: {e}")),
    };
    if !id_valid(listener, n.id) {
        return refused(pid, "?", None, "the caller went away");
    }
    let raw = match read_path(&pinned.mem, ptr) {
        Ok(p) => p,
        Err(e) => return refused(pid, "?", None, format!("cannot read the path: {e}")),
    };
    // What to call it in reports: the path, or the descriptor and what it refers to.
    let path = if raw.is_empty() {
        let target = pinned
            .link(&format!("fd/{dirfd}"))
            .unwrap_or_else(|_| "?".into());
        format!("fd {dirfd} ({target})")
    } else {
        raw.clone()
    };
    let target = match open_in_task(&pinned, dirfd, &raw, flags) {
        Ok(f) => f,
        // Nothing to run there: answer as the kernel would (shells search PATH this way).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return (e.raw_os_error().unwrap_or(libc::ENOENT), None);
        }
        Err(e) => {
            return refused(
                pid,
                &path,
                None,
                format!("cannot open it in the sandbox: {e}"),
            );
        }
    };
    // The image's root is the only mount in a sandbox where anything executes: a descriptor
    // of anything else (a log file the agent handed over as stdout, say) is refused before
    // the supervisor so much as inspects its filesystem.
    match (mount_id(&target), mount_id(&pinned.root)) {
        (Some(a), Some(b)) if a == b => {}
        (Some(_), Some(_)) => {
            return refused(
                pid,
                &path,
                None,
                "not on the image's root (written or brought in at run time)",
            );
        }
        _ => return refused(pid, &path, None, "cannot inspect its mount"),
    }
    let file = match readable_executable(&target) {
        Ok(f) => f,
        Err(why) => return refused(pid, &path, None, why),
    };
    match index.check(&file) {
        Ok(image_path) => (
            0,
            Some(Event::ExecAllowed {
                pid,
                path: image_path,
            }),
        ),
        Err(r) => refused(pid, &path, r.sha256, r.reason),
    }
}

/// The mount id of an open file (`statx` `STATX_MNT_ID`).
fn mount_id(f: &File) -> Option<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let empty = c"";
    // SAFETY: `f` is an open descriptor, `empty` NUL-terminated, `stx` a writable statx.
    let rc = unsafe {
        libc::statx(
            f.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: statx returned 0, so the struct is initialised.
    let stx = unsafe { stx.assume_init() };
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Checks what `target` (an `O_PATH` or other descriptor, already known to be on the image's
/// root mount — so not on procfs, sysfs or a `noexec` mount) is before reading a byte of it: a
/// regular file with an execute bit. Returns it opened for reading, without blocking and
/// without becoming a controlling terminal.
fn readable_executable(target: &File) -> Result<File, String> {
    let meta = target
        .metadata()
        .map_err(|e| format!("cannot inspect the file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0 {
        return Err("not executable (no x bit)".into());
    }
    open_path(
        &format!("/proc/self/fd/{}", target.as_raw_fd()),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
    )
    .map_err(|e| format!("cannot read the file: {e}"))
}

/// Reads a NUL-terminated path from the task's memory (at most `PATH_MAX`).
fn read_path(mem: &File, addr: u64) -> std::io::Result<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let mut got = 0usize;
    // Read page by page: the string may end right before an unmapped page.
    while got < buf.len() {
        let off = addr.saturating_add(got as u64);
        let to_page_end = 4096 - (off % 4096) as usize;
        let end = (got + to_page_end).min(buf.len());
        let chunk = buf.get_mut(got..end).unwrap_or_default();
        let n = mem.read_at(chunk, off)?;
        if n == 0 {
            break;
        }
        if let Some(z) = chunk.iter().take(n).position(|b| *b == 0) {
            got += z;
            buf.truncate(got);
            return String::from_utf8(buf).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "path is not UTF-8")
            });
        }
        got += n;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "path longer than PATH_MAX",
    ))
}

fn open_path(path: &str, flags: i32) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

fn openat(dir: &File, name: &str, flags: i32) -> std::io::Result<File> {
    let c = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `dir` is an open directory fd and `c` NUL-terminated.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor now owned by the File.
    Ok(unsafe { File::from_raw_fd(fd) })
}

use std::os::unix::fs::OpenOptionsExt;

/// Finds what an exec call names, as an `O_PATH` descriptor, without ever resolving a path
/// from the host's root: descriptors are taken from the caller itself, `/proc/self/exe` is the
/// caller's own executable, every other path is resolved inside the caller's root.
fn open_in_task(p: &Pinned, dirfd: i32, path: &str, flags: u64) -> std::io::Result<File> {
    let empty_path = flags & libc::AT_EMPTY_PATH as u64 != 0;
    if path.is_empty() {
        if !empty_path || dirfd < 0 {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
        // fexecve / execveat(fd, "", AT_EMPTY_PATH): the file behind the caller's descriptor.
        return p.fd(dirfd);
    }
    // The caller's own /proc entries: the supervisor's /proc/self would be itself.
    for prefix in ["/proc/self/", "/proc/thread-self/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest == "exe" {
                // busybox runs its applets this way: the caller's own, already verified, file.
                return openat(&p.dir, "exe", libc::O_PATH | libc::O_CLOEXEC);
            }
            if let Some(n) = rest.strip_prefix("fd/").and_then(|n| n.parse::<i32>().ok()) {
                return p.fd(n);
            }
            return Err(std::io::Error::from_raw_os_error(libc::EACCES));
        }
    }
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        let base = if dirfd == libc::AT_FDCWD {
            p.link("cwd")?
        } else {
            p.link(&format!("fd/{dirfd}"))?
        };
        // The directory as the task sees it (its root is the pivoted image root).
        if !base.starts_with('/') || base.ends_with(" (deleted)") {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
        format!("{}/{path}", base.trim_end_matches('/'))
    };
    let cpath = CString::new(full).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    if flags & libc::AT_SYMLINK_NOFOLLOW as u64 != 0 {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    // SAFETY: all-zero is a valid open_how; fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `root` is an open directory fd, `cpath` NUL-terminated, `how` a valid open_how of
    // the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            p.root.as_raw_fd(),
            cpath.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor now owned by the File.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}
