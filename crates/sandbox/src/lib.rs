//! Ringfence's runtime sandbox, built from the kernel's own mechanisms: user, pid, mount, net,
//! UTS, IPC and cgroup namespaces; `pivot_root` into a read-only image root with `noexec`
//! writable mounts; landlock; every capability dropped and securebits locked; `no_new_privs`;
//! a seccomp allow-list that checks the architecture first; an exec supervisor on the seccomp
//! user-notification listener that lets only the verified image's executables run (drift
//! prevention); and cgroup limits (v1 or v2) with OOM kills observed.
//!
//! This is the one crate with `unsafe`; every block says why it is sound. Privileged steps go
//! through the [`sys::Syscall`] seam so their order is tested without root.

pub mod cgroup;
pub mod egress;
pub mod image;
pub mod init;
pub mod landlock;
pub mod net;
pub mod run;
pub mod seccomp;
pub mod setup;
pub mod supervisor;
pub mod sys;

pub use run::{Config, Exit, Killer, Outcome, Running, SandboxError, Source, run, start};
