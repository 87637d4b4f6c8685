//! Landlock, applied after `pivot_root`. Always: device ioctls only on the sandbox's own device
//! nodes (a terminal the task opens cannot be driven), and — where the kernel has ABI 6 — no
//! signals to and no abstract unix sockets of processes outside the sandbox's domain. With
//! `writes` (the strict profile), also: read and execute under `/`, write only under the
//! writable paths. That second part repeats what the read-only, `noexec` mounts already
//! enforce, and each checked file operation walks its path (about +20 % on a create/unlink
//! loop here), so the default profile leaves it to the mounts. Best effort: an older kernel
//! enforces what it knows, and the status says how much.
//!
//! With `deny_tcp_connect` (an egress allow-list), every TCP connect the task makes itself is
//! refused: the supervisor, outside the domain, connects the task's sockets for it (see
//! `egress`). That part is not best effort: the front checks the ABI first ([`abi`]).

use landlock::{
    ABI, Access, AccessFs, AccessNet, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use std::path::PathBuf;

/// Applies the ruleset to the calling thread and its future children; returns
/// `fully enforced`, `partly enforced` or `not enforced`.
pub fn restrict(
    writable: &[PathBuf],
    writes: bool,
    deny_tcp_connect: bool,
) -> Result<String, landlock::RulesetError> {
    let abi = ABI::V6;
    let mut ruleset = landlock::Ruleset::default();
    if deny_tcp_connect {
        // No rule allows any port: every TCP connect of the task is refused.
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
    }
    let status = if writes {
        ruleset
            .handle_access(AccessFs::from_all(abi))?
            .scope(Scope::from_all(abi))?
            .create()?
            .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
            .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?
            .restrict_self()?
    } else {
        ruleset
            .handle_access(AccessFs::IoctlDev)?
            .scope(Scope::from_all(abi))?
            .create()?
            .add_rules(path_beneath_rules(writable, AccessFs::IoctlDev))?
            .restrict_self()?
    };
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partly enforced",
        RulesetStatus::NotEnforced => "not enforced",
    }
    .to_owned())
}

/// The kernel's landlock ABI version (0: none).
pub fn abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the documented version query: null attributes, size 0, the version flag.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}
