//! Syscall filter profiles and their compilation to classic BPF (pure: no syscalls here).
//!
//! A profile is an allow-list: every system call not named is refused with `EPERM`. Every
//! compiled program checks the architecture first (anything but x86-64 kills the process, so
//! the ia32 `int 0x80` entry and its different numbering are unreachable) and refuses the x32
//! ABI (bit 30 of the number) the same way. `execve` and `execveat` are never simply allowed:
//! they go to the user-notification supervisor, which lets through only executables of the
//! verified image (drift prevention). `clone` is allowed only without namespace flags, and
//! `clone3`, whose flags live in memory a filter cannot read, answers `ENOSYS` so that libc
//! falls back to `clone`.
//!
//! The decision on the syscall number is a balanced binary search over runs of equal
//! verdicts, and apart from `clone` it depends on the number only, so the kernel's seccomp
//! action cache answers allowed calls without running the filter at all.

use std::collections::BTreeMap;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// The x32 ABI marks its syscall numbers with this bit.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Filter return values (`SECCOMP_RET_*`).
pub mod ret {
    /// Kill the whole process.
    pub const KILL_PROCESS: u32 = 0x8000_0000;
    /// Fail the call with the errno in the low 16 bits.
    pub const ERRNO: u32 = 0x0005_0000;
    /// Hand the call to the user-space supervisor.
    pub const USER_NOTIF: u32 = 0x7fc0_0000;
    /// Allow the call.
    pub const ALLOW: u32 = 0x7fff_0000;
}

// Classic BPF opcodes used here.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;
const OFF_ARG0_HI: u32 = 20;

/// The low word of argument `i`.
const fn off_arg_lo(i: u8) -> u32 {
    OFF_ARG0_LO + 8 * i as u32
}

/// `MSG_FASTOPEN`: a `sendto`/`sendmsg` that opens a TCP connection.
pub const MSG_FASTOPEN: u32 = 0x2000_0000;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// What the filter does with one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Let it run.
    Allow,
    /// Fail it with this errno.
    Errno(u16),
    /// Ask the supervisor (exec checks).
    Notify,
    /// Allow only when none of these bits is set in the first argument (`clone` flags).
    AllowIfArg0Clear(u64),
    /// Allow only when the first argument (a 32-bit `int`) is one of these (`socket` domains).
    AllowIfArg0In(&'static [u32]),
    /// Allow unless the first argument (a 32-bit `int`) is this (`prctl` options).
    AllowUnlessArg0Is(u32),
    /// Ask the supervisor, which connects the socket itself (the egress allow-list).
    Mediate,
    /// `socket` under an egress allow-list: the domains of [`SOCKET_DOMAINS`], and for IPv4
    /// and IPv6 only TCP (`SOCK_STREAM`, protocol 0 or `IPPROTO_TCP`).
    SocketTcpOnly,
    /// Allow unless argument `.0` (a 32-bit `int`) has any of the bits `.1` (send flags).
    AllowUnlessArgBits(u8, u32),
    /// `setsockopt` refusing these `(level, optname)` pairs.
    SetsockoptExcept(&'static [(u32, u32)]),
}

/// The socket options refused under an egress allow-list, each a way to make a connection go
/// somewhere other than the address checked: `TCP_ULP` (a TCP socket turned into another
/// protocol, outside landlock's TCP rules), `SO_BINDTODEVICE` and `SO_BINDTOIFINDEX` (a
/// loopback address sent out of `eth0`), `IP_OPTIONS` (source routing) and the IPv6 routing
/// headers.
pub const EGRESS_REFUSED_SOCKOPTS: &[(u32, u32)] = &[
    (libc::IPPROTO_TCP as u32, 31),  // TCP_ULP
    (libc::SOL_SOCKET as u32, 25),   // SO_BINDTODEVICE
    (libc::SOL_SOCKET as u32, 62),   // SO_BINDTOIFINDEX
    (libc::IPPROTO_IP as u32, 4),    // IP_OPTIONS
    (libc::IPPROTO_IPV6 as u32, 57), // IPV6_RTHDR
    (libc::IPPROTO_IPV6 as u32, 5),  // IPV6_2292RTHDR
    (libc::IPPROTO_IPV6 as u32, 6),  // IPV6_2292PKTOPTIONS
];

/// The socket domains the default profile allows: unix, IPv4, IPv6, netlink (no vsock,
/// packet, bluetooth...: some are not confined by the network namespace).
pub const SOCKET_DOMAINS: &[u32] = &[
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];

impl Action {
    fn describe(self) -> String {
        match self {
            Action::Allow => "allow".into(),
            Action::Errno(e) => format!("refuse ({})", errno_name(e)),
            Action::Notify => "supervised (exec must be in the verified image)".into(),
            Action::AllowIfArg0Clear(_) => "allow without namespace flags".into(),
            Action::AllowIfArg0In(_) => "allow for unix, inet, inet6 and netlink only".into(),
            Action::AllowUnlessArg0Is(_) => {
                "allow except PR_SET_PDEATHSIG (the task dies with its sandbox)".into()
            }
            Action::Mediate => "supervised (egress allow-list; the supervisor connects)".into(),
            Action::SocketTcpOnly => {
                "allow for unix and netlink, and TCP only over inet and inet6".into()
            }
            Action::AllowUnlessArgBits(..) => "allow without MSG_FASTOPEN".into(),
            Action::SetsockoptExcept(_) => {
                "allow except TCP_ULP, SO_BINDTODEVICE/IFINDEX, IP_OPTIONS, IPv6 routing headers"
                    .into()
            }
        }
    }
}

fn errno_name(e: u16) -> &'static str {
    match i32::from(e) {
        libc::EPERM => "EPERM",
        libc::ENOSYS => "ENOSYS",
        libc::EACCES => "EACCES",
        _ => "errno",
    }
}

/// The namespace flags `clone` may not carry inside a sandbox.
pub const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP
    | 0x80) as u64; // CLONE_NEWTIME

/// A named syscall profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `default` or `strict`.
    pub name: &'static str,
    /// One line on what it is for.
    pub summary: &'static str,
    /// Whether landlock also confines writes to the writable paths (see `landlock`).
    pub landlock_writes: bool,
    rules: BTreeMap<u32, (&'static str, Action)>,
}

/// Profile names accepted on the command line.
pub const PROFILE_NAMES: &[&str] = &["default", "strict"];

/// Why a profile is refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not a known profile.
    #[error("unknown sandbox profile {0:?}: use one of default, strict")]
    Unknown(String),
}

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as u32)),*]
    };
}

/// Calls both profiles allow: what a static program, a libc and busybox need to start,
/// compute, read and write files, wait for children and exit.
const BASE: &[(&str, u32)] = syscalls![
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_open,
    SYS_openat,
    SYS_close,
    SYS_fstat,
    SYS_stat,
    SYS_lstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_lseek,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_brk,
    SYS_madvise,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_ioctl,
    SYS_access,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_getpid,
    SYS_getppid,
    SYS_gettid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getcwd,
    SYS_chdir,
    SYS_fchdir,
    SYS_getdents64,
    SYS_readlink,
    SYS_readlinkat,
    SYS_fcntl,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_pipe,
    SYS_pipe2,
    SYS_futex,
    SYS_set_tid_address,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_arch_prctl,
    SYS_prlimit64,
    SYS_getrlimit,
    SYS_getrandom,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettimeofday,
    SYS_uname,
    SYS_exit,
    SYS_exit_group,
    SYS_wait4,
    SYS_fork,
    SYS_vfork,
    SYS_kill,
    SYS_tgkill,
    SYS_poll,
    SYS_ppoll,
    SYS_select,
    SYS_pselect6,
    SYS_unlink,
    SYS_unlinkat,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_rmdir,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_umask,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_getpgrp,
    SYS_setpgid,
    SYS_getpgid,
    SYS_getsid,
    SYS_setsid,
    SYS_times,
    SYS_sysinfo,
    SYS_ftruncate,
    SYS_fsync,
    SYS_fdatasync,
    SYS_restart_syscall,
];

/// What the default profile adds: the ordinary life of a network service (sockets, epoll,
/// threads, timers, IPC, file metadata), following the container runtimes' default
/// allow-lists minus everything that administers the machine.
const DEFAULT_EXTRA: &[(&str, u32)] = syscalls![
    SYS_accept,
    SYS_accept4,
    SYS_alarm,
    SYS_bind,
    SYS_capget,
    SYS_chmod,
    SYS_chown,
    SYS_clock_getres,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_creat,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_epoll_wait,
    SYS_eventfd,
    SYS_eventfd2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstatfs,
    SYS_futex_waitv,
    SYS_futimesat,
    SYS_getcpu,
    SYS_getdents,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpriority,
    SYS_getresgid,
    SYS_getresuid,
    SYS_get_robust_list,
    SYS_getrusage,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_io_setup,
    SYS_io_submit,
    SYS_ioprio_get,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lchown,
    SYS_lgetxattr,
    SYS_link,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lsetxattr,
    SYS_membarrier,
    SYS_mincore,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_openat2,
    SYS_pause,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_prctl,
    SYS_preadv,
    SYS_preadv2,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_readahead,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_removexattr,
    SYS_rt_sigpending,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_seccomp,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_setsockopt,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_signalfd,
    SYS_signalfd4,
    SYS_socket,
    SYS_socketpair,
    SYS_splice,
    SYS_statfs,
    SYS_symlink,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_tee,
    SYS_time,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_tkill,
    SYS_truncate,
    SYS_utime,
    SYS_utimensat,
    SYS_utimes,
    SYS_waitid,
];

impl Profile {
    /// The profile named `name`.
    pub fn named(name: &str) -> Result<Profile, ProfileError> {
        match name {
            "default" => Ok(Profile::default_profile()),
            "strict" => Ok(Profile::strict()),
            other => Err(ProfileError::Unknown(other.to_owned())),
        }
    }

    fn build(name: &'static str, summary: &'static str, lists: &[&[(&'static str, u32)]]) -> Self {
        let mut rules = BTreeMap::new();
        for list in lists {
            for (sys, nr) in list.iter() {
                let name = sys.trim_start_matches("SYS_");
                rules.insert(*nr, (name, Action::Allow));
            }
        }
        rules.insert(
            libc::SYS_clone as u32,
            ("clone", Action::AllowIfArg0Clear(CLONE_NAMESPACE_FLAGS)),
        );
        rules.insert(
            libc::SYS_clone3 as u32,
            ("clone3", Action::Errno(libc::ENOSYS as u16)),
        );
        if rules.contains_key(&(libc::SYS_socket as u32)) {
            rules.insert(
                libc::SYS_socket as u32,
                ("socket", Action::AllowIfArg0In(SOCKET_DOMAINS)),
            );
        }
        if rules.contains_key(&(libc::SYS_prctl as u32)) {
            rules.insert(
                libc::SYS_prctl as u32,
                (
                    "prctl",
                    Action::AllowUnlessArg0Is(libc::PR_SET_PDEATHSIG as u32),
                ),
            );
        }
        rules.insert(libc::SYS_execve as u32, ("execve", Action::Notify));
        rules.insert(libc::SYS_execveat as u32, ("execveat", Action::Notify));
        Profile {
            name,
            summary,
            landlock_writes: name == "strict",
            rules,
        }
    }

    /// The default profile: what ordinary services need. Not `memfd_create`: a memfd is
    /// executable, and with none the only executable files in a sandbox are the image's.
    pub fn default_profile() -> Self {
        Profile::build(
            "default",
            "ordinary services: files, sockets, threads, timers, IPC; nothing that administers the machine",
            &[BASE, DEFAULT_EXTRA],
        )
    }

    /// The strict profile: compute and files only; no sockets, no IPC, no `prctl`.
    pub fn strict() -> Self {
        Profile::build(
            "strict",
            "compute and files only: no sockets, IPC, prctl or xattrs",
            &[BASE],
        )
    }

    /// The profile with an egress allow-list in force: `connect` goes to the supervisor, IP
    /// sockets are TCP only, and TCP Fast Open (a send that connects) is refused. Errors for
    /// a profile without sockets.
    pub fn with_egress_mediation(mut self) -> Result<Self, &'static str> {
        if !self.rules.contains_key(&(libc::SYS_socket as u32)) {
            return Err(
                "the strict profile has no sockets; an egress allow-list needs the default profile",
            );
        }
        self.rules
            .insert(libc::SYS_connect as u32, ("connect", Action::Mediate));
        self.rules
            .insert(libc::SYS_socket as u32, ("socket", Action::SocketTcpOnly));
        self.rules.insert(
            libc::SYS_setsockopt as u32,
            (
                "setsockopt",
                Action::SetsockoptExcept(EGRESS_REFUSED_SOCKOPTS),
            ),
        );
        for (nr, name, arg) in [
            (libc::SYS_sendto, "sendto", 3),
            (libc::SYS_sendmsg, "sendmsg", 2),
            (libc::SYS_sendmmsg, "sendmmsg", 3),
        ] {
            if self.rules.contains_key(&(nr as u32)) {
                self.rules.insert(
                    nr as u32,
                    (name, Action::AllowUnlessArgBits(arg, MSG_FASTOPEN)),
                );
            }
        }
        Ok(self)
    }

    /// Whether `connect` goes to the supervisor.
    pub fn mediates_connect(&self) -> bool {
        self.action(libc::SYS_connect as u32) == Action::Mediate
    }

    /// The action for syscall number `nr` on x86-64.
    pub fn action(&self, nr: u32) -> Action {
        self.rules
            .get(&nr)
            .map(|(_, a)| *a)
            .unwrap_or(Action::Errno(libc::EPERM as u16))
    }

    /// The rules, by syscall number: `(nr, name, action)`.
    pub fn rules(&self) -> impl Iterator<Item = (u32, &'static str, Action)> + '_ {
        self.rules.iter().map(|(nr, (name, a))| (*nr, *name, *a))
    }

    /// A human-readable listing for `ringfence sandbox profile show`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "profile {}: {}\n\
             architecture: x86-64 only (ia32 and x32 calls kill the process)\n\
             every call not listed: refused (EPERM)\n\n",
            self.name, self.summary
        );
        let width = self.rules.values().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (nr, (name, action)) in &self.rules {
            out.push_str(&format!("{nr:>4}  {name:<width$}  {}\n", action.describe()));
        }
        out
    }

    /// Compiles the profile to a classic BPF program for `seccomp(SECCOMP_SET_MODE_FILTER)`.
    pub fn compile(&self) -> Vec<SockFilter> {
        let mut prog = vec![
            stmt(BPF_LD_W_ABS, OFF_ARCH),
            jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET_K, ret::KILL_PROCESS),
            stmt(BPF_LD_W_ABS, OFF_NR),
            jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, ret::KILL_PROCESS),
        ];
        // Runs of equal verdicts over the whole u32 range.
        let default = Action::Errno(libc::EPERM as u16);
        let mut runs: Vec<(u32, Action)> = vec![(0, default)];
        let mut next = 0u32;
        for (nr, (_, action)) in &self.rules {
            if *nr > next {
                push_run(&mut runs, next, default);
            }
            push_run(&mut runs, *nr, *action);
            next = nr.saturating_add(1);
        }
        push_run(&mut runs, next, default);
        prog.extend(tree(&runs));
        prog
    }
}

fn push_run(runs: &mut Vec<(u32, Action)>, start: u32, action: Action) {
    match runs.last_mut() {
        Some((_, last)) if *last == action => {}
        Some((s, last)) if *s == start => *last = action,
        _ => runs.push((start, action)),
    }
}

/// The code for a verdict, with the syscall number in the accumulator.
fn leaf(action: Action) -> Vec<SockFilter> {
    match action {
        Action::Allow => vec![stmt(BPF_RET_K, ret::ALLOW)],
        Action::Errno(e) => vec![stmt(BPF_RET_K, ret::ERRNO | u32::from(e))],
        Action::Notify | Action::Mediate => vec![stmt(BPF_RET_K, ret::USER_NOTIF)],
        Action::SocketTcpOnly => {
            let deny = ret::ERRNO | libc::EPERM as u32;
            let inet = [libc::AF_INET as u32, libc::AF_INET6 as u32];
            let others: Vec<u32> = SOCKET_DOMAINS
                .iter()
                .copied()
                .filter(|d| !inet.contains(d))
                .collect();
            // [ld arg0] [inet4? inet6? -> tcp checks] [others -> allow] [deny]
            // [tcp: ld arg1, jset 0xe -> deny, jset 0x1 -> next else deny,
            //       ld arg2, jeq 0 -> allow, jeq IPPROTO_TCP -> allow, deny] [allow]
            let n_others = others.len();
            let mut out = vec![stmt(BPF_LD_W_ABS, OFF_ARG0_LO)];
            // Distances counted from the instruction after each jump.
            let to_tcp = |i: usize| u8::try_from(1 - i + n_others + 1).unwrap_or(u8::MAX);
            for (i, d) in inet.iter().enumerate() {
                out.push(jump(BPF_JMP_JEQ_K, *d, to_tcp(i), 0));
            }
            for (i, d) in others.iter().enumerate() {
                // To the final allow: the rest of these, the deny, the 8 TCP instructions.
                let skip = u8::try_from(n_others - 1 - i + 1 + 8).unwrap_or(u8::MAX);
                out.push(jump(BPF_JMP_JEQ_K, *d, skip, 0));
            }
            out.push(stmt(BPF_RET_K, deny));
            out.extend([
                stmt(BPF_LD_W_ABS, off_arg_lo(1)),
                jump(BPF_JMP_JSET_K, 0xe, 5, 0),
                jump(BPF_JMP_JSET_K, 0x1, 0, 4),
                stmt(BPF_LD_W_ABS, off_arg_lo(2)),
                jump(BPF_JMP_JEQ_K, 0, 3, 0),
                jump(BPF_JMP_JEQ_K, libc::IPPROTO_TCP as u32, 2, 0),
                stmt(BPF_RET_K, deny),
                stmt(BPF_RET_K, deny),
                stmt(BPF_RET_K, ret::ALLOW),
            ]);
            out
        }
        Action::SetsockoptExcept(pairs) => {
            // Per pair: [ld level, jeq level else next pair, ld optname, jeq optname -> deny];
            // then [allow, deny].
            let n = pairs.len();
            let mut out = Vec::with_capacity(4 * n + 2);
            for (i, (level, name)) in pairs.iter().enumerate() {
                let to_deny = u8::try_from(4 * (n - i) - 3).unwrap_or(u8::MAX);
                out.extend([
                    stmt(BPF_LD_W_ABS, off_arg_lo(1)),
                    jump(BPF_JMP_JEQ_K, *level, 0, 2),
                    stmt(BPF_LD_W_ABS, off_arg_lo(2)),
                    jump(BPF_JMP_JEQ_K, *name, to_deny, 0),
                ]);
            }
            out.push(stmt(BPF_RET_K, ret::ALLOW));
            out.push(stmt(BPF_RET_K, ret::ERRNO | libc::EPERM as u32));
            out
        }
        Action::AllowUnlessArgBits(arg, bits) => vec![
            stmt(BPF_LD_W_ABS, off_arg_lo(arg)),
            jump(BPF_JMP_JSET_K, bits, 0, 1),
            stmt(BPF_RET_K, ret::ERRNO | libc::EPERM as u32),
            stmt(BPF_RET_K, ret::ALLOW),
        ],
        Action::AllowIfArg0Clear(mask) => {
            let lo = (mask & 0xffff_ffff) as u32;
            let hi = (mask >> 32) as u32;
            let deny = ret::ERRNO | libc::EPERM as u32;
            vec![
                stmt(BPF_LD_W_ABS, OFF_ARG0_LO),
                jump(BPF_JMP_JSET_K, lo, 0, 1),
                stmt(BPF_RET_K, deny),
                stmt(BPF_LD_W_ABS, OFF_ARG0_HI),
                jump(BPF_JMP_JSET_K, hi, 0, 1),
                stmt(BPF_RET_K, deny),
                stmt(BPF_RET_K, ret::ALLOW),
            ]
        }
        Action::AllowIfArg0In(values) => {
            let deny = ret::ERRNO | libc::EPERM as u32;
            let mut out = vec![stmt(BPF_LD_W_ABS, OFF_ARG0_LO)];
            let n = values.len();
            for (i, v) in values.iter().enumerate() {
                // On a match, jump over the remaining comparisons and the deny.
                let skip = u8::try_from(n - i).unwrap_or(u8::MAX);
                out.push(jump(BPF_JMP_JEQ_K, *v, skip, 0));
            }
            out.push(stmt(BPF_RET_K, deny));
            out.push(stmt(BPF_RET_K, ret::ALLOW));
            out
        }
        Action::AllowUnlessArg0Is(value) => vec![
            stmt(BPF_LD_W_ABS, OFF_ARG0_LO),
            jump(BPF_JMP_JEQ_K, value, 0, 1),
            stmt(BPF_RET_K, ret::ERRNO | libc::EPERM as u32),
            stmt(BPF_RET_K, ret::ALLOW),
        ],
    }
}

/// A binary search over `runs` (sorted by start, the first starting at 0).
fn tree(runs: &[(u32, Action)]) -> Vec<SockFilter> {
    match runs {
        [] => vec![stmt(BPF_RET_K, ret::ERRNO | libc::EPERM as u32)],
        [(_, action)] => leaf(*action),
        _ => {
            let mid = runs.len() / 2;
            let (left, right) = runs.split_at(mid);
            let boundary = right.first().map(|(s, _)| *s).unwrap_or(u32::MAX);
            let left_code = tree(left);
            let right_code = tree(right);
            let mut out = Vec::with_capacity(left_code.len() + right_code.len() + 2);
            match u8::try_from(left_code.len()) {
                Ok(skip) => out.push(jump(BPF_JMP_JGE_K, boundary, skip, 0)),
                Err(_) => {
                    out.push(jump(BPF_JMP_JGE_K, boundary, 0, 1));
                    out.push(stmt(BPF_JMP_JA, left_code.len() as u32));
                }
            }
            out.extend(left_code);
            out.extend(right_code);
            out
        }
    }
}

/// The fields a filter reads (`struct seccomp_data`), for evaluating a program in tests and
/// in `profile show --check`.
#[derive(Debug, Clone, Copy)]
pub struct SeccompData {
    /// Syscall number.
    pub nr: u32,
    /// `AUDIT_ARCH_*`.
    pub arch: u32,
    /// Arguments.
    pub args: [u64; 6],
}

/// Runs a classic BPF program the way the kernel would; `None` if it is malformed (jumps
/// out of the program, reads outside `seccomp_data`, falls off the end, an unknown opcode).
pub fn evaluate(prog: &[SockFilter], data: &SeccompData) -> Option<u32> {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    let load = |off: u32| -> Option<u32> {
        match off {
            OFF_NR => Some(data.nr),
            OFF_ARCH => Some(data.arch),
            16..=63 if off.is_multiple_of(4) => {
                let i = ((off - 16) / 8) as usize;
                let word = data.args.get(i)?;
                Some(if (off - 16).is_multiple_of(8) {
                    (*word & 0xffff_ffff) as u32
                } else {
                    (*word >> 32) as u32
                })
            }
            _ => None,
        }
    };
    loop {
        let ins = prog.get(pc)?;
        let branch = |cond: bool| pc + 1 + usize::from(if cond { ins.jt } else { ins.jf });
        pc = match ins.code {
            BPF_LD_W_ABS => {
                acc = load(ins.k)?;
                pc + 1
            }
            BPF_RET_K => return Some(ins.k),
            BPF_JMP_JA => pc + 1 + ins.k as usize,
            BPF_JMP_JEQ_K => branch(acc == ins.k),
            BPF_JMP_JGE_K => branch(acc >= ins.k),
            BPF_JMP_JSET_K => branch(acc & ins.k != 0),
            _ => return None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(nr: i64) -> SeccompData {
        SeccompData {
            nr: nr as u32,
            arch: AUDIT_ARCH_X86_64,
            args: [0; 6],
        }
    }

    #[test]
    fn foreign_architectures_and_x32_are_killed_before_anything_else() {
        for profile in [Profile::default_profile(), Profile::strict()] {
            let prog = profile.compile();
            let mut ia32 = call(libc::SYS_getpid);
            ia32.arch = 0x4000_0003; // AUDIT_ARCH_I386
            assert_eq!(evaluate(&prog, &ia32), Some(ret::KILL_PROCESS));
            let x32 = call(libc::SYS_getpid | i64::from(X32_SYSCALL_BIT));
            assert_eq!(evaluate(&prog, &x32), Some(ret::KILL_PROCESS));
        }
    }

    #[test]
    fn exec_is_supervised_and_clone3_falls_back() {
        let prog = Profile::strict().compile();
        assert_eq!(
            evaluate(&prog, &call(libc::SYS_execve)),
            Some(ret::USER_NOTIF)
        );
        assert_eq!(
            evaluate(&prog, &call(libc::SYS_execveat)),
            Some(ret::USER_NOTIF)
        );
        assert_eq!(
            evaluate(&prog, &call(libc::SYS_clone3)),
            Some(ret::ERRNO | libc::ENOSYS as u32)
        );
    }

    #[test]
    fn clone_with_a_namespace_flag_is_refused() {
        let prog = Profile::default_profile().compile();
        let mut c = call(libc::SYS_clone);
        c.args[0] = libc::SIGCHLD as u64;
        assert_eq!(evaluate(&prog, &c), Some(ret::ALLOW));
        c.args[0] |= libc::CLONE_NEWUSER as u64;
        assert_eq!(evaluate(&prog, &c), Some(ret::ERRNO | libc::EPERM as u32));
    }

    #[test]
    fn under_an_egress_allow_list_connect_is_supervised_and_ip_is_tcp_only() {
        let profile = Profile::default_profile().with_egress_mediation().unwrap();
        assert!(profile.mediates_connect());
        assert!(!Profile::default_profile().mediates_connect());
        let prog = profile.compile();
        let with = |nr: i64, args: [u64; 3]| {
            let mut c = call(nr);
            c.args[..3].copy_from_slice(&args);
            evaluate(&prog, &c)
        };
        let deny = Some(ret::ERRNO | libc::EPERM as u32);
        let allow = Some(ret::ALLOW);
        assert_eq!(with(libc::SYS_connect, [3, 0, 16]), Some(ret::USER_NOTIF));
        let (inet, inet6) = (libc::AF_INET as u64, libc::AF_INET6 as u64);
        let stream = libc::SOCK_STREAM as u64;
        let flags = (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
        for d in [inet, inet6] {
            assert_eq!(with(libc::SYS_socket, [d, stream, 0]), allow);
            assert_eq!(with(libc::SYS_socket, [d, stream | flags, 6]), allow);
            for t in [
                libc::SOCK_DGRAM,
                libc::SOCK_RAW,
                libc::SOCK_SEQPACKET,
                10,
                15,
            ] {
                assert_eq!(with(libc::SYS_socket, [d, t as u64, 0]), deny, "type {t}");
            }
            // SCTP and MPTCP speak stream too, outside landlock's TCP rules.
            for proto in [libc::IPPROTO_SCTP as u64, 262, 17] {
                assert_eq!(with(libc::SYS_socket, [d, stream, proto]), deny, "{proto}");
            }
        }
        // Unix and netlink sockets of every type, as before; other domains still refused.
        for t in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
            assert_eq!(
                with(libc::SYS_socket, [libc::AF_UNIX as u64, t as u64, 0]),
                allow
            );
            assert_eq!(
                with(libc::SYS_socket, [libc::AF_NETLINK as u64, t as u64, 0]),
                allow
            );
        }
        for d in [libc::AF_PACKET, libc::AF_VSOCK, libc::AF_BLUETOOTH] {
            assert_eq!(with(libc::SYS_socket, [d as u64, stream, 0]), deny);
        }
        // TCP Fast Open connects from a send: refused in each of the three sends.
        let mut c = call(libc::SYS_sendto);
        c.args[3] = u64::from(MSG_FASTOPEN);
        assert_eq!(evaluate(&prog, &c), deny);
        c.args[3] = libc::MSG_NOSIGNAL as u64;
        assert_eq!(evaluate(&prog, &c), allow);
        assert_eq!(
            with(libc::SYS_sendmsg, [3, 0, u64::from(MSG_FASTOPEN)]),
            deny
        );
        assert_eq!(with(libc::SYS_sendmsg, [3, 0, 0]), allow);
        let mut c = call(libc::SYS_sendmmsg);
        c.args[3] = u64::from(MSG_FASTOPEN | libc::MSG_DONTWAIT as u32);
        assert_eq!(evaluate(&prog, &c), deny);
        // Options that reroute a checked connection, refused; ordinary ones allowed.
        for (level, name) in EGRESS_REFUSED_SOCKOPTS {
            assert_eq!(
                with(
                    libc::SYS_setsockopt,
                    [3, u64::from(*level), u64::from(*name)]
                ),
                deny,
                "{level}/{name}"
            );
        }
        for (level, name) in [
            (libc::SOL_SOCKET, libc::SO_REUSEADDR),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY),
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            (libc::IPPROTO_IP, 31), // level IP, TCP_ULP's number: another option
        ] {
            assert_eq!(
                with(libc::SYS_setsockopt, [3, level as u64, name as u64]),
                allow,
                "{level}/{name}"
            );
        }
        // exec stays supervised.
        assert_eq!(with(libc::SYS_execve, [0, 0, 0]), Some(ret::USER_NOTIF));
        assert!(profile.render().contains("supervised (egress allow-list"));
        assert!(
            Profile::strict()
                .with_egress_mediation()
                .unwrap_err()
                .contains("needs the default profile")
        );
    }

    #[test]
    fn socket_domains_and_pdeathsig_are_filtered_by_argument() {
        let prog = Profile::default_profile().compile();
        let with = |nr: i64, arg0: u64| {
            let mut c = call(nr);
            c.args[0] = arg0;
            evaluate(&prog, &c)
        };
        let deny = Some(ret::ERRNO | libc::EPERM as u32);
        for ok in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(with(libc::SYS_socket, ok as u64), Some(ret::ALLOW));
        }
        for bad in [
            libc::AF_VSOCK,
            libc::AF_PACKET,
            libc::AF_BLUETOOTH,
            libc::AF_ALG,
        ] {
            assert_eq!(with(libc::SYS_socket, bad as u64), deny, "{bad}");
        }
        // The upper half of a 32-bit int argument is ignored, as the kernel ignores it.
        assert_eq!(
            with(libc::SYS_socket, (1u64 << 32) | libc::AF_INET as u64),
            Some(ret::ALLOW)
        );
        assert_eq!(with(libc::SYS_prctl, libc::PR_SET_PDEATHSIG as u64), deny);
        assert_eq!(
            with(libc::SYS_prctl, libc::PR_GET_PDEATHSIG as u64),
            Some(ret::ALLOW)
        );
        assert_eq!(
            with(libc::SYS_prctl, libc::PR_SET_NAME as u64),
            Some(ret::ALLOW)
        );
    }

    #[test]
    fn dangerous_calls_are_refused_in_both_profiles() {
        for profile in [Profile::default_profile(), Profile::strict()] {
            let prog = profile.compile();
            for nr in [
                libc::SYS_mount,
                libc::SYS_ptrace,
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_bpf,
                libc::SYS_keyctl,
                libc::SYS_userfaultfd,
                libc::SYS_perf_event_open,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_open_by_handle_at,
                libc::SYS_pivot_root,
                libc::SYS_kexec_load,
                libc::SYS_process_vm_writev,
                libc::SYS_pidfd_getfd,
                libc::SYS_io_uring_setup,
            ] {
                assert_eq!(
                    evaluate(&prog, &call(nr)),
                    Some(ret::ERRNO | libc::EPERM as u32),
                    "{} nr {nr}",
                    profile.name
                );
            }
        }
    }

    #[test]
    fn strict_is_a_strict_subset_of_default() {
        let d = Profile::default_profile();
        let s = Profile::strict();
        for (nr, _, action) in s.rules() {
            assert_eq!(d.action(nr), action);
        }
        assert!(s.rules().count() * 2 < d.rules().count() + 40);
        assert_eq!(
            s.action(libc::SYS_socket as u32),
            Action::Errno(libc::EPERM as u16)
        );
        assert_eq!(
            d.action(libc::SYS_socket as u32),
            Action::AllowIfArg0In(SOCKET_DOMAINS)
        );
    }

    #[test]
    fn unknown_profile_is_refused_with_the_choices() {
        let e = Profile::named("lax").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("unknown sandbox profile \"lax\": use one of default, strict")
        );
    }

    proptest! {
        /// The compiled program agrees with the profile for every number and argument.
        #[test]
        fn compiled_program_matches_the_profile(
            nr in 0u32..0x4000_0000,
            arg0 in prop_oneof![any::<u64>(), 0u64..16],
            arg1 in prop_oneof![any::<u64>(), 0u64..0x10_0000],
            arg2 in prop_oneof![any::<u64>(), 0u64..300],
            arg3 in any::<u64>(),
            which in 0u8..3,
        ) {
            let profile = match which {
                0 => Profile::strict(),
                1 => Profile::default_profile(),
                _ => Profile::default_profile().with_egress_mediation().unwrap(),
            };
            let prog = profile.compile();
            let mut data = call(i64::from(nr));
            data.args[..4].copy_from_slice(&[arg0, arg1, arg2, arg3]);
            let deny = ret::ERRNO | libc::EPERM as u32;
            let want = match profile.action(nr) {
                Action::SocketTcpOnly => {
                    let d = arg0 as u32;
                    let inet = d == libc::AF_INET as u32 || d == libc::AF_INET6 as u32;
                    let tcp = (arg1 as u32) & 0xf == libc::SOCK_STREAM as u32
                        && matches!(arg2 as u32, 0 | 6);
                    if (inet && tcp) || (!inet && SOCKET_DOMAINS.contains(&d)) { ret::ALLOW } else { deny }
                }
                Action::AllowUnlessArgBits(i, bits) => {
                    if (data.args[usize::from(i)] as u32) & bits != 0 { deny } else { ret::ALLOW }
                }
                Action::SetsockoptExcept(pairs) => {
                    if pairs.contains(&(arg1 as u32, arg2 as u32)) { deny } else { ret::ALLOW }
                }
                Action::Allow => ret::ALLOW,
                Action::Errno(e) => ret::ERRNO | u32::from(e),
                Action::Notify | Action::Mediate => ret::USER_NOTIF,
                Action::AllowIfArg0Clear(mask) => {
                    if arg0 & mask == 0 { ret::ALLOW } else { ret::ERRNO | libc::EPERM as u32 }
                }
                Action::AllowIfArg0In(values) => {
                    if values.contains(&(arg0 as u32)) { ret::ALLOW } else { ret::ERRNO | libc::EPERM as u32 }
                }
                Action::AllowUnlessArg0Is(v) => {
                    if arg0 as u32 == v { ret::ERRNO | libc::EPERM as u32 } else { ret::ALLOW }
                }
            };
            prop_assert_eq!(evaluate(&prog, &data), Some(want));
        }

        #[test]
        fn every_listed_number_is_decided_as_listed(strict in any::<bool>()) {
            let profile = if strict { Profile::strict() } else { Profile::default_profile() };
            let prog = profile.compile();
            for (nr, _, action) in profile.rules() {
                if action == Action::Allow {
                    prop_assert_eq!(evaluate(&prog, &call(i64::from(nr))), Some(ret::ALLOW));
                }
            }
        }
    }
}
