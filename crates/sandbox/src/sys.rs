//! The syscall seam: every privileged operation the in-sandbox setup performs goes through
//! [`Syscall`], implemented for Linux by [`LinuxSyscall`] and recorded by [`RecordingSyscall`]
//! so the order and arguments of the setup are unit-tested without root.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::seccomp::SockFilter;

/// An errno with the operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
pub struct SysError {
    /// What was attempted (`mount /proc`, `pivot_root`, ...).
    pub op: String,
    /// The errno.
    pub errno: i32,
}

/// Mount flags used here (`MS_*`).
pub mod ms {
    /// Read-only.
    pub const RDONLY: u64 = libc::MS_RDONLY;
    /// No setuid/setgid.
    pub const NOSUID: u64 = libc::MS_NOSUID;
    /// No device files.
    pub const NODEV: u64 = libc::MS_NODEV;
    /// No execution.
    pub const NOEXEC: u64 = libc::MS_NOEXEC;
    /// Change an existing mount.
    pub const REMOUNT: u64 = libc::MS_REMOUNT;
    /// Bind mount.
    pub const BIND: u64 = libc::MS_BIND;
    /// Recursive.
    pub const REC: u64 = libc::MS_REC;
    /// Private propagation.
    pub const PRIVATE: u64 = libc::MS_PRIVATE;
}

/// The operations of the in-sandbox setup.
pub trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), SysError>;
    /// The per-mount flags of the mount at `path` (`statvfs` `f_flag` as `MS_*`).
    fn mount_flags(&self, path: &Path) -> Result<u64, SysError>;
    /// `umount2(path, MNT_DETACH)`.
    fn umount_detach(&self, path: &Path) -> Result<(), SysError>;
    /// `pivot_root(".", ".")` in `dir`: the old root is stacked under the new one.
    fn pivot_root_here(&self, dir: &Path) -> Result<(), SysError>;
    /// `chdir(2)`.
    fn chdir(&self, dir: &Path) -> Result<(), SysError>;
    /// Creates an empty file (a bind-mount target).
    fn create_file(&self, path: &Path) -> Result<(), SysError>;
    /// Creates a symlink.
    fn symlink(&self, target: &str, link: &Path) -> Result<(), SysError>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> Result<(), SysError>;
    /// `setsid(2)`: a session of its own, without the caller's controlling terminal (so
    /// `TIOCSTI` cannot push input into it).
    fn new_session(&self) -> Result<(), SysError>;
    /// `setrlimit(2)`.
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<(), SysError>;
    /// `setgroups(0)`, `setresgid(0,0,0)`, `setresuid(0,0,0)`.
    fn become_ns_root(&self) -> Result<(), SysError>;
    /// Securebits that keep uid 0 from regaining capabilities on exec, locked.
    fn lock_securebits(&self) -> Result<(), SysError>;
    /// Applies a landlock ruleset: read and execute everywhere under `/`, read and write only
    /// under `writable`; with `deny_tcp_connect`, no TCP connect at all. Returns whether the
    /// kernel enforces it fully, partly or not at all.
    fn landlock(
        &self,
        writable: &[PathBuf],
        writes: bool,
        deny_tcp_connect: bool,
    ) -> Result<String, SysError>;
    /// Drops every capability: bounding set, ambient, effective, permitted, inheritable.
    fn drop_capabilities(&self) -> Result<(), SysError>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn no_new_privs(&self) -> Result<(), SysError>;
    /// Closes every fd from `from` up, except `keep`.
    fn close_fds_from(&self, from: RawFd, keep: RawFd) -> Result<(), SysError>;
    /// Installs the filter with a user-notification listener; returns the listener fd.
    fn seccomp_with_listener(&self, prog: &[SockFilter]) -> Result<RawFd, SysError>;
    /// Brings loopback up and configures the veth end, if any.
    fn configure_network(&self, net: &crate::net::Network) -> Result<(), SysError>;
    /// Receives a network namespace on the socket `sock` and enters it.
    fn join_netns(&self, sock: RawFd) -> Result<(), SysError>;
}

/// A pidfd for `pid` (close-on-exec): signals and descriptor transfers through it can never
/// reach a process that reused the number.
pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain integer arguments; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned from here on.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as RawFd) })
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn fail(op: impl Into<String>) -> SysError {
    SysError {
        op: op.into(),
        errno: errno(),
    }
}

fn cpath(p: &Path, op: &str) -> Result<CString, SysError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SysError {
        op: format!("{op} {}", p.display()),
        errno: libc::EINVAL,
    })
}

fn cstr(s: &str, op: &str) -> Result<CString, SysError> {
    CString::new(s).map_err(|_| SysError {
        op: op.to_owned(),
        errno: libc::EINVAL,
    })
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn join_netns(&self, sock: RawFd) -> Result<(), SysError> {
        crate::net::join_netns_from(sock).map_err(|e| SysError {
            op: format!("network namespace: {e}"),
            errno: e.raw_os_error().unwrap_or(libc::EPIPE),
        })
    }

    fn configure_network(&self, net: &crate::net::Network) -> Result<(), SysError> {
        crate::net::configure(net).map_err(|e| SysError {
            op: format!("network: {e}"),
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })
    }

    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        let op = format!("mount {}", target.display());
        let t = cpath(target, "mount")?;
        let s = source.map(|s| cstr(s, &op)).transpose()?;
        let f = fstype.map(|s| cstr(s, &op)).transpose()?;
        let d = data.map(|s| cstr(s, &op)).transpose()?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                ptr(&s),
                t.as_ptr(),
                ptr(&f),
                flags,
                ptr(&d).cast::<libc::c_void>(),
            )
        };
        if rc == 0 { Ok(()) } else { Err(fail(op)) }
    }

    fn mount_flags(&self, path: &Path) -> Result<u64, SysError> {
        let p = cpath(path, "statvfs")?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `p` is NUL-terminated; `st` is a writable statvfs the kernel fills in.
        let rc = unsafe { libc::statvfs(p.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(fail(format!("statvfs {}", path.display())));
        }
        // SAFETY: statvfs returned 0, so the struct is initialised.
        let st = unsafe { st.assume_init() };
        let mut flags = 0;
        for (st_flag, ms_flag) in [
            (libc::ST_RDONLY, libc::MS_RDONLY),
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if st.f_flag & st_flag != 0 {
                flags |= ms_flag;
            }
        }
        Ok(flags)
    }

    fn umount_detach(&self, path: &Path) -> Result<(), SysError> {
        let p = cpath(path, "umount")?;
        // SAFETY: `p` is NUL-terminated.
        let rc = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        if rc == 0 {
            Ok(())
        } else {
            Err(fail(format!("umount {}", path.display())))
        }
    }

    fn pivot_root_here(&self, dir: &Path) -> Result<(), SysError> {
        self.chdir(dir)?;
        let dot = cstr(".", "pivot_root")?;
        // SAFETY: both arguments are NUL-terminated strings; pivot_root has no libc wrapper.
        let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
        if rc != 0 {
            return Err(fail(format!("pivot_root {}", dir.display())));
        }
        Ok(())
    }

    fn chdir(&self, dir: &Path) -> Result<(), SysError> {
        let p = cpath(dir, "chdir")?;
        // SAFETY: `p` is NUL-terminated.
        let rc = unsafe { libc::chdir(p.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(fail(format!("chdir {}", dir.display())))
        }
    }

    fn create_file(&self, path: &Path) -> Result<(), SysError> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| SysError {
                op: format!("create {}", path.display()),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })
    }

    fn symlink(&self, target: &str, link: &Path) -> Result<(), SysError> {
        std::os::unix::fs::symlink(target, link).map_err(|e| SysError {
            op: format!("symlink {}", link.display()),
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })
    }

    fn new_session(&self) -> Result<(), SysError> {
        // SAFETY: no arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(fail("setsid"));
        }
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<(), SysError> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(fail("sethostname"))
        }
    }

    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<(), SysError> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        let rc = unsafe { libc::setrlimit(resource, &lim) };
        if rc == 0 {
            Ok(())
        } else {
            Err(fail(format!("setrlimit {resource}")))
        }
    }

    fn become_ns_root(&self) -> Result<(), SysError> {
        // SAFETY: setgroups with a zero length reads no memory.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(fail("setgroups"));
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::setresgid(0, 0, 0) } != 0 {
            return Err(fail("setresgid"));
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::setresuid(0, 0, 0) } != 0 {
            return Err(fail("setresuid"));
        }
        Ok(())
    }

    fn lock_securebits(&self) -> Result<(), SysError> {
        // SECBIT_NOROOT | _LOCKED, NO_SETUID_FIXUP | _LOCKED, KEEP_CAPS_LOCKED,
        // NO_CAP_AMBIENT_RAISE | _LOCKED.
        let bits: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
        // SAFETY: plain integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(fail("prctl(PR_SET_SECUREBITS)"))
        }
    }

    fn landlock(
        &self,
        writable: &[PathBuf],
        writes: bool,
        deny_tcp_connect: bool,
    ) -> Result<String, SysError> {
        crate::landlock::restrict(writable, writes, deny_tcp_connect).map_err(|e| SysError {
            op: format!("landlock: {e}"),
            errno: libc::EPERM,
        })
    }

    fn drop_capabilities(&self) -> Result<(), SysError> {
        for cap in 0..64 {
            // SAFETY: plain integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            if rc != 0 {
                if errno() == libc::EINVAL {
                    break; // past the last capability this kernel knows
                }
                return Err(fail(format!("prctl(PR_CAPBSET_DROP, {cap})")));
            }
        }
        // SAFETY: plain integer arguments.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: version 3 takes one header and two data structs, both valid here.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        if rc != 0 {
            return Err(fail("capset"));
        }
        Ok(())
    }

    fn no_new_privs(&self) -> Result<(), SysError> {
        // SAFETY: plain integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(fail("prctl(PR_SET_NO_NEW_PRIVS)"))
        }
    }

    fn close_fds_from(&self, from: RawFd, keep: RawFd) -> Result<(), SysError> {
        let close = |lo: u32, hi: u32| -> Result<(), SysError> {
            if lo > hi {
                return Ok(());
            }
            // SAFETY: close_range takes plain integers; no fd this process still uses is in
            // the range (the caller keeps `keep` and 0-2).
            let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
            if rc == 0 {
                Ok(())
            } else {
                Err(fail("close_range"))
            }
        };
        let from = u32::try_from(from).unwrap_or(3);
        match u32::try_from(keep) {
            Ok(k) if k >= from => {
                close(from, k.saturating_sub(1))?;
                close(k.saturating_add(1), u32::MAX)
            }
            _ => close(from, u32::MAX),
        }
    }

    fn seccomp_with_listener(&self, prog: &[SockFilter]) -> Result<RawFd, SysError> {
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len()).map_err(|_| SysError {
                op: "seccomp: program too long".into(),
                errno: libc::E2BIG,
            })?,
            filter: prog.as_ptr().cast_mut().cast::<libc::sock_filter>(),
        };
        // SAFETY: `fprog` points at `prog`, a slice of `repr(C)` sock_filter-compatible
        // instructions that lives across the call; the kernel copies the program.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &fprog,
            )
        };
        if fd < 0 {
            return Err(fail("seccomp(SECCOMP_SET_MODE_FILTER)"));
        }
        RawFd::try_from(fd).map_err(|_| SysError {
            op: "seccomp listener".into(),
            errno: libc::EBADF,
        })
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `mount`.
    Mount {
        /// Source.
        source: Option<String>,
        /// Target.
        target: PathBuf,
        /// Filesystem type.
        fstype: Option<String>,
        /// Flags.
        flags: u64,
        /// Data.
        data: Option<String>,
    },
    /// `umount2(MNT_DETACH)`.
    UmountDetach(PathBuf),
    /// `pivot_root` in a directory.
    PivotRoot(PathBuf),
    /// `chdir`.
    Chdir(PathBuf),
    /// A file created.
    CreateFile(PathBuf),
    /// A symlink created.
    Symlink(String, PathBuf),
    /// `sethostname`.
    Hostname(String),
    /// `setsid`.
    NewSession,
    /// `setrlimit`.
    Rlimit(u32, u64, u64),
    /// uid/gid 0 in the namespace, no groups.
    BecomeNsRoot,
    /// Securebits locked.
    Securebits,
    /// Landlock with these writable paths, restricting writes or not, TCP connects or not.
    Landlock(Vec<PathBuf>, bool, bool),
    /// Capabilities dropped.
    DropCaps,
    /// No new privileges.
    NoNewPrivs,
    /// fds closed.
    CloseFds(RawFd, RawFd),
    /// Seccomp installed with this many instructions.
    Seccomp(usize),
    /// Network configured.
    Network(crate::net::Network),
    /// A network namespace received on this socket and entered.
    JoinNetns(RawFd),
}

/// Records every call; fails the call whose index is `fail_at`, if any.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    /// The calls, in order.
    pub calls: Mutex<Vec<Call>>,
    /// Fail the n-th call (0-based) with `EPERM`.
    pub fail_at: Option<usize>,
}

impl RecordingSyscall {
    fn record(&self, call: Call) -> Result<(), SysError> {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let n = calls.len();
        let op = format!("{call:?}");
        calls.push(call);
        if self.fail_at == Some(n) {
            return Err(SysError {
                op,
                errno: libc::EPERM,
            });
        }
        Ok(())
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Syscall for RecordingSyscall {
    fn join_netns(&self, sock: RawFd) -> Result<(), SysError> {
        self.record(Call::JoinNetns(sock))
    }
    fn configure_network(&self, net: &crate::net::Network) -> Result<(), SysError> {
        self.record(Call::Network(net.clone()))
    }
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), SysError> {
        self.record(Call::Mount {
            source: source.map(str::to_owned),
            target: target.to_owned(),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }
    fn mount_flags(&self, _path: &Path) -> Result<u64, SysError> {
        Ok(libc::MS_RELATIME)
    }
    fn umount_detach(&self, path: &Path) -> Result<(), SysError> {
        self.record(Call::UmountDetach(path.to_owned()))
    }
    fn pivot_root_here(&self, dir: &Path) -> Result<(), SysError> {
        self.record(Call::PivotRoot(dir.to_owned()))
    }
    fn chdir(&self, dir: &Path) -> Result<(), SysError> {
        self.record(Call::Chdir(dir.to_owned()))
    }
    fn create_file(&self, path: &Path) -> Result<(), SysError> {
        self.record(Call::CreateFile(path.to_owned()))
    }
    fn symlink(&self, target: &str, link: &Path) -> Result<(), SysError> {
        self.record(Call::Symlink(target.to_owned(), link.to_owned()))
    }
    fn sethostname(&self, name: &str) -> Result<(), SysError> {
        self.record(Call::Hostname(name.to_owned()))
    }
    fn new_session(&self) -> Result<(), SysError> {
        self.record(Call::NewSession)
    }
    fn setrlimit(&self, resource: u32, soft: u64, hard: u64) -> Result<(), SysError> {
        self.record(Call::Rlimit(resource, soft, hard))
    }
    fn become_ns_root(&self) -> Result<(), SysError> {
        self.record(Call::BecomeNsRoot)
    }
    fn lock_securebits(&self) -> Result<(), SysError> {
        self.record(Call::Securebits)
    }
    fn landlock(
        &self,
        writable: &[PathBuf],
        writes: bool,
        deny_tcp_connect: bool,
    ) -> Result<String, SysError> {
        self.record(Call::Landlock(writable.to_vec(), writes, deny_tcp_connect))
            .map(|()| "recorded".into())
    }
    fn drop_capabilities(&self) -> Result<(), SysError> {
        self.record(Call::DropCaps)
    }
    fn no_new_privs(&self) -> Result<(), SysError> {
        self.record(Call::NoNewPrivs)
    }
    fn close_fds_from(&self, from: RawFd, keep: RawFd) -> Result<(), SysError> {
        self.record(Call::CloseFds(from, keep))
    }
    fn seccomp_with_listener(&self, prog: &[SockFilter]) -> Result<RawFd, SysError> {
        self.record(Call::Seccomp(prog.len())).map(|()| 99)
    }
}
