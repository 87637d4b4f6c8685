//! Landlock, applied after `pivot_root`. Always: device ioctls only on the sandbox's own device
//! nodes (a terminal the task opens cannot be driven), and — where the kernel has ABI 6 — no
//! signals to and no abstract unix sockets of processes outside the sandbox's domain. With
//! `writes` (the strict profile), also: read and execute under `/`, write only under the
//! writable paths. That second part repeats what the read-only, `noexec` mounts already
//! enforce, and each checked file operation walks its path (about +20 % on a create/unlink
//! loop here), so the default profile leaves it to the mounts. Best effort: an older kernel
//! enforces what it knows, and the status says how much.

use landlock::{
    ABI, Access, AccessFs, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use std::path::PathBuf;

/// Applies the ruleset to the calling thread and its future children; returns
/// `fully enforced`, `partly enforced` or `not enforced`.
pub fn restrict(writable: &[PathBuf], writes: bool) -> Result<String, landlock::RulesetError> {
    let abi = ABI::V6;
    let ruleset = landlock::Ruleset::default();
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
