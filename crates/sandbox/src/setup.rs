//! The sequence that turns a process freshly placed in new namespaces into a sandboxed task,
//! written against [`Syscall`] so its order is tested without root. It runs as pid 1 of the
//! new pid namespace, as root of the new user namespace, in a private mount namespace.
//!
//! Order matters and is tested: mounts while capabilities exist; `pivot_root` and the old
//! root detached before anything else is exposed; the root remounted read-only and nosuid;
//! every inherited descriptor closed; landlock; capabilities and securebits; `no_new_privs`;
//! the seccomp filter last, so nothing after it needs more than the filter allows.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::seccomp::SockFilter;
use crate::sys::{SysError, Syscall, ms};

/// Device nodes bind-mounted from the host into the sandbox's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What the setup needs (all decided by the supervisor before the namespaces exist).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The root filesystem as a path in the (new) mount namespace, before pivoting.
    pub rootfs: PathBuf,
    /// Host name in the UTS namespace.
    pub hostname: String,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_size: u64,
    /// `(resource, soft, hard)` rlimits.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// The descriptor the setup reports through (kept open; close-on-exec).
    pub status_fd: RawFd,
    /// The compiled seccomp program.
    pub filter: Vec<SockFilter>,
    /// The network inside.
    pub network: crate::net::Network,
    /// A socket the init sends the network namespace on, made after the task was forked
    /// (see `net::send_new_netns`); `None` when the task was born in it.
    pub netns_from: Option<RawFd>,
    /// Whether landlock also confines writes (the strict profile).
    pub landlock_writes: bool,
    /// Whether landlock refuses the task's own TCP connects (an egress allow-list: the
    /// supervisor connects for it).
    pub deny_tcp_connect: bool,
    /// Host directories bound into the sandbox.
    pub volumes: Vec<Volume>,
}

/// A host directory bound into the sandbox: never executable, never setuid, never devices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The host directory.
    pub host: PathBuf,
    /// Where it appears inside (absolute, normalized, not `/`, `/proc`, `/dev` or `/tmp`).
    pub inside: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Why a volume is refused.
#[derive(Debug, thiserror::Error)]
#[error("volume {spec:?}: {why}")]
pub struct VolumeError {
    spec: String,
    why: String,
}

impl Volume {
    /// Parses `HOST:INSIDE[:ro]`.
    pub fn parse(spec: &str) -> Result<Volume, VolumeError> {
        let err = |why: &str| VolumeError {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let mut parts = spec.split(':');
        let (Some(host), Some(inside)) = (parts.next(), parts.next()) else {
            return Err(err("expected HOST:INSIDE or HOST:INSIDE:ro"));
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some(_) => return Err(err("the only option is ro")),
        };
        if parts.next().is_some() || host.is_empty() {
            return Err(err("expected HOST:INSIDE or HOST:INSIDE:ro"));
        }
        let v = Volume {
            host: PathBuf::from(host),
            inside: inside.to_owned(),
            read_only,
        };
        v.check().map_err(|why| err(&why))?;
        Ok(v)
    }

    /// Checks the inside path.
    pub fn check(&self) -> Result<(), String> {
        let p = self.inside.as_str();
        if !p.starts_with('/') {
            return Err("the inside path must be absolute".into());
        }
        if p == "/" {
            return Err("cannot cover /, /proc, /dev or /tmp".into());
        }
        if p.split('/').any(|c| c == ".." || c == ".") || p.contains("//") || p.ends_with('/') {
            return Err("the inside path must be normalized (no ., .., // or trailing /)".into());
        }
        let top = p.split('/').nth(1).unwrap_or_default();
        if p == "/" || matches!(top, "proc" | "dev" | "tmp") {
            return Err("cannot cover /, /proc, /dev or /tmp".into());
        }
        Ok(())
    }
}

/// What the setup achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    /// The seccomp listener, to hand to the supervisor.
    pub listener: RawFd,
    /// Landlock's status.
    pub landlock: String,
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Runs the setup. On error nothing after the failing step has happened.
pub fn enter(sys: &dyn Syscall, plan: &Plan) -> Result<Entered, SysError> {
    let root = plan.rootfs.as_path();
    // Nothing we mount propagates back to the host.
    sys.mount(None, Path::new("/"), None, ms::REC | ms::PRIVATE, None)?;
    // Not recursive: a host mount under the rootfs directory would keep its own (writable,
    // executable) flags through the read-only remount below.
    sys.mount(Some(&root.to_string_lossy()), root, None, ms::BIND, None)?;
    sys.mount(
        Some("proc"),
        &under(root, "proc"),
        Some("proc"),
        ms::NOSUID | ms::NODEV | ms::NOEXEC,
        None,
    )?;
    // Writable space is never executable: with the read-only root, the only executables are
    // the verified image's (the exec supervisor says so precisely; this makes it structural).
    sys.mount(
        Some("tmpfs"),
        &under(root, "tmp"),
        Some("tmpfs"),
        ms::NOSUID | ms::NODEV | ms::NOEXEC,
        Some(&format!("mode=1777,size={}", plan.tmp_size)),
    )?;
    let dev = under(root, "dev");
    sys.mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        ms::NOSUID | ms::NOEXEC,
        Some("mode=755,size=65536"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        sys.create_file(&target)?;
        sys.mount(Some(&format!("/dev/{name}")), &target, None, ms::BIND, None)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(target, &dev.join(link))?;
    }
    // /dev itself becomes read-only: the nodes stay writable, nothing new appears.
    sys.mount(
        None,
        &dev,
        None,
        ms::REMOUNT | ms::BIND | ms::RDONLY | ms::NOSUID | ms::NOEXEC,
        None,
    )?;

    for v in &plan.volumes {
        let target = under(root, &v.inside);
        sys.mount(
            Some(&v.host.to_string_lossy()),
            &target,
            None,
            ms::BIND,
            None,
        )?;
        let ro = if v.read_only { ms::RDONLY } else { 0 };
        // Keep the flags the kernel locked on the host mount (atime...), add ours.
        let locked = sys.mount_flags(&target)? & !ms::RDONLY;
        sys.mount(
            None,
            &target,
            None,
            locked | ms::REMOUNT | ms::BIND | ms::NOSUID | ms::NODEV | ms::NOEXEC | ro,
            None,
        )?;
    }

    sys.pivot_root_here(root)?;
    sys.umount_detach(Path::new("."))?;
    sys.chdir(Path::new("/"))?;
    // Keep the flags the kernel locked on the original mount (atime, nodev...), add ours.
    let locked = sys.mount_flags(Path::new("/"))?;
    sys.mount(
        None,
        Path::new("/"),
        None,
        locked | ms::REMOUNT | ms::BIND | ms::RDONLY | ms::NOSUID | ms::NODEV,
        None,
    )?;

    sys.new_session()?;
    sys.sethostname(&plan.hostname)?;
    if let Some(sock) = plan.netns_from {
        sys.join_netns(sock)?;
    }
    sys.configure_network(&plan.network)?;
    for (res, soft, hard) in &plan.rlimits {
        sys.setrlimit(*res, *soft, *hard)?;
    }
    sys.close_fds_from(3, plan.status_fd)?;
    let mut writable = vec![PathBuf::from("/tmp")];
    writable.extend(
        DEVICES
            .iter()
            .filter(|d| !matches!(**d, "random" | "urandom"))
            .map(|d| PathBuf::from(format!("/dev/{d}"))),
    );
    writable.extend(
        plan.volumes
            .iter()
            .filter(|v| !v.read_only)
            .map(|v| PathBuf::from(&v.inside)),
    );
    let landlock = sys.landlock(&writable, plan.landlock_writes, plan.deny_tcp_connect)?;
    sys.lock_securebits()?;
    sys.drop_capabilities()?;
    sys.no_new_privs()?;
    let listener = sys.seccomp_with_listener(&plan.filter)?;
    Ok(Entered { listener, landlock })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::Profile;
    use crate::sys::{Call, RecordingSyscall};

    fn plan() -> Plan {
        Plan {
            rootfs: PathBuf::from("/var/lib/ringfence/rootfs"),
            hostname: "job".into(),
            tmp_size: 1 << 26,
            rlimits: vec![(libc::RLIMIT_CORE, 0, 0)],
            status_fd: 4,
            filter: Profile::strict().compile(),
            network: crate::net::Network::None,
            netns_from: None,
            landlock_writes: true,
            deny_tcp_connect: false,
            volumes: vec![Volume {
                host: PathBuf::from("/srv/data"),
                inside: "/data".into(),
                read_only: false,
            }],
        }
    }

    fn position(calls: &[Call], pred: impl Fn(&Call) -> bool) -> usize {
        calls.iter().position(pred).unwrap_or(usize::MAX)
    }

    #[test]
    fn a_late_network_namespace_is_entered_after_the_pivot_and_before_anything_is_configured() {
        let sys = RecordingSyscall::default();
        let plan = Plan {
            netns_from: Some(7),
            ..plan()
        };
        enter(&sys, &plan).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = sys.calls();
        let detach = position(&calls, |c| matches!(c, Call::UmountDetach(_)));
        let join = position(&calls, |c| matches!(c, Call::JoinNetns(7)));
        let net = position(&calls, |c| matches!(c, Call::Network(_)));
        let close = position(&calls, |c| matches!(c, Call::CloseFds(3, 4)));
        assert!(detach < join && join < net && net < close, "{calls:#?}");
        // Without a socket the task was born in its namespace: nothing to join.
        let sys = RecordingSyscall::default();
        enter(&sys, &self::plan()).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::JoinNetns(_))));
    }

    #[test]
    fn a_task_that_gets_no_network_namespace_stops_before_its_filter() {
        let plan = Plan {
            netns_from: Some(7),
            ..plan()
        };
        let probe = RecordingSyscall::default();
        enter(&probe, &plan).unwrap_or_else(|e| unreachable!("{e}"));
        let at = position(&probe.calls(), |c| matches!(c, Call::JoinNetns(7)));
        let sys = RecordingSyscall {
            fail_at: Some(at),
            ..Default::default()
        };
        let e = enter(&sys, &plan).err().map(|e| e.to_string());
        assert!(
            e.is_some_and(|e| e.contains("JoinNetns")),
            "{:?}",
            sys.calls()
        );
        let calls = sys.calls();
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::Network(_) | Call::Seccomp(_) | Call::DropCaps)),
            "{calls:#?}"
        );
    }

    #[test]
    fn setup_order_puts_the_filter_last_and_caps_after_mounts() {
        let sys = RecordingSyscall::default();
        let entered = enter(&sys, &plan()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(entered.listener, 99);
        let calls = sys.calls();
        let pivot = position(&calls, |c| matches!(c, Call::PivotRoot(_)));
        let detach = position(&calls, |c| matches!(c, Call::UmountDetach(_)));
        let caps = position(&calls, |c| matches!(c, Call::DropCaps));
        let nnp = position(&calls, |c| matches!(c, Call::NoNewPrivs));
        let close = position(&calls, |c| matches!(c, Call::CloseFds(3, 4)));
        let landlock = position(&calls, |c| matches!(c, Call::Landlock(_, true, _)));
        let session = position(&calls, |c| matches!(c, Call::NewSession));
        let last_mount = calls
            .iter()
            .rposition(|c| matches!(c, Call::Mount { .. }))
            .unwrap_or(usize::MAX);
        assert!(pivot < detach && detach < last_mount, "{calls:#?}");
        assert!(last_mount < close && close < landlock && landlock < caps && caps < nnp);
        assert!(session < caps);
        assert!(matches!(calls.last(), Some(Call::Seccomp(n)) if *n > 10));
    }

    #[test]
    fn root_is_remounted_read_only_nosuid_keeping_locked_flags() {
        let sys = RecordingSyscall::default();
        enter(&sys, &plan()).unwrap_or_else(|e| unreachable!("{e}"));
        let remount = sys.calls().into_iter().find(|c| {
            matches!(c, Call::Mount { target, flags, .. }
                if target == Path::new("/") && flags & ms::REMOUNT != 0)
        });
        let Some(Call::Mount { flags, .. }) = remount else {
            unreachable!("no remount of /")
        };
        for f in [
            ms::RDONLY,
            ms::NOSUID,
            ms::NODEV,
            ms::BIND,
            libc::MS_RELATIME,
        ] {
            assert_ne!(flags & f, 0, "flag {f:#x} missing");
        }
    }

    #[test]
    fn writable_mounts_are_noexec_and_nosuid() {
        let sys = RecordingSyscall::default();
        enter(&sys, &plan()).unwrap_or_else(|e| unreachable!("{e}"));
        for c in sys.calls() {
            if let Call::Mount {
                fstype: Some(t),
                flags,
                target,
                ..
            } = &c
                && (t == "tmpfs" || t == "proc")
            {
                assert_ne!(flags & ms::NOEXEC, 0, "{target:?}");
                assert_ne!(flags & ms::NOSUID, 0, "{target:?}");
            }
        }
    }

    #[test]
    fn volumes_are_bound_before_pivoting_and_never_executable() {
        let sys = RecordingSyscall::default();
        enter(&sys, &plan()).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = sys.calls();
        let target = PathBuf::from("/var/lib/ringfence/rootfs/data");
        let remount = calls.iter().position(|c| {
            matches!(c, Call::Mount { target: t, flags, .. }
                if *t == target && flags & ms::REMOUNT != 0
                    && flags & ms::NOEXEC != 0 && flags & ms::NOSUID != 0 && flags & ms::NODEV != 0)
        });
        let pivot = position(&calls, |c| matches!(c, Call::PivotRoot(_)));
        assert!(remount.is_some_and(|r| r < pivot), "{calls:#?}");
        assert!(calls.iter().any(
            |c| matches!(c, Call::Landlock(w, true, _) if w.contains(&PathBuf::from("/data")))
        ));
    }

    #[test]
    fn volume_specs_are_checked() {
        assert!(Volume::parse("/srv/x:/data").is_ok_and(|v| !v.read_only));
        assert!(Volume::parse("/srv/x:/data:ro").is_ok_and(|v| v.read_only));
        let e = |s| {
            Volume::parse(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            e("/srv/x:data"),
            "volume \"/srv/x:data\": the inside path must be absolute"
        );
        assert!(e("/srv/x:/a/../etc").contains("normalized"));
        assert!(e("/srv/x:/").contains("cannot cover"));
        assert!(e("/srv/x:/proc/sys").contains("cannot cover"));
        assert!(e("/srv/x:/tmp").contains("cannot cover"));
        assert!(e("/srv/x:/data:rw").contains("the only option is ro"));
        assert!(e("/srv/x").contains("expected HOST:INSIDE"));
    }

    #[test]
    fn a_failing_step_stops_everything_after_it() {
        // Fail the pivot_root: no capability is dropped and no filter installed, and the
        // error names the step.
        let probe = RecordingSyscall::default();
        enter(&probe, &plan()).unwrap_or_else(|e| unreachable!("{e}"));
        let at = position(&probe.calls(), |c| matches!(c, Call::PivotRoot(_)));
        let sys = RecordingSyscall {
            fail_at: Some(at),
            ..Default::default()
        };
        let err = enter(&sys, &plan()).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("PivotRoot(\"/var/lib/ringfence/rootfs\"): Operation not permitted (os error 1)")
        );
        assert_eq!(sys.calls().len(), at + 1);
    }
}
