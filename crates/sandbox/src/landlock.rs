//! Landlock, applied after `pivot_root`: the task may read and execute under `/`, write only
//! under the writable paths (`/tmp`, the few `/dev` nodes), and — where the kernel has ABI 6 —
//! may not signal processes or reach abstract unix sockets outside its own domain. Best effort:
//! an older kernel enforces what it knows, and the status says how much.

use landlock::{
    ABI, Access, AccessFs, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use std::path::PathBuf;

/// Applies the ruleset to the calling thread and its future children; returns
/// `fully enforced`, `partly enforced` or `not enforced`.
pub fn restrict(writable: &[PathBuf]) -> Result<String, landlock::RulesetError> {
    let abi = ABI::V6;
    let status = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(writable, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partly enforced",
        RulesetStatus::NotEnforced => "not enforced",
    }
    .to_owned())
}
