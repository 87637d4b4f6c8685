//! The code-review attestation.
//!
//! The in-toto attestation framework has no settled review predicate (its human-review and VCS
//! review types are drafts at v0.1), so Ringfence defines one:
//! `https://ringfence.dev/attestation/code-review/v1`. It is signed by the review system
//! when a change merges and says: in `repository`, the change `commit` on `ref` by `author` was
//! approved by `reviewers` (and by the system's `owner` when one approved). Its statement's
//! subjects are what was reviewed: the commit (`gitCommit` digest) and, when the change holds
//! job configurations, each configuration file (`sha256` digest) — that is how a policy knows
//! a job's flags were reviewed too. See docs/admission.md for the schema.

use ringfence_core::UnixTime;
use serde::{Deserialize, Serialize};

use crate::slsa::parse_time;
use crate::statement::{Sha256, Statement, StatementError, parse_commit};

/// The predicate type.
pub const PREDICATE_TYPE: &str = "https://ringfence.dev/attestation/code-review/v1";

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Who approved (the review system's account name).
    pub name: String,
    /// When (RFC 3339).
    pub timestamp: String,
}

/// The predicate as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewPredicate {
    /// Repository URI.
    pub repository: String,
    /// The ref the change merged into.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The reviewed commit.
    pub commit: String,
    /// The change's author.
    pub author: String,
    /// Approvals by reviewers.
    pub reviewers: Vec<Approval>,
    /// The owner's approval, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_approval: Option<Approval>,
    /// When the change merged (RFC 3339).
    pub merged_on: String,
}

/// A review read from a verified statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// The predicate.
    pub predicate: ReviewPredicate,
    /// When it merged.
    pub merged_on: UnixTime,
    /// Configuration files reviewed in the change (the statement's sha256 subjects).
    pub configs: Vec<Sha256>,
}

impl Review {
    /// Reads the review predicate of a statement. The statement must name the reviewed commit
    /// among its subjects.
    pub fn from_statement(statement: &Statement) -> Result<Self, StatementError> {
        if statement.predicate_type() != PREDICATE_TYPE {
            return Err(StatementError::Malformed(format!(
                "predicate type {:?} is not {PREDICATE_TYPE}",
                statement.predicate_type()
            )));
        }
        let predicate = ReviewPredicate::deserialize(statement.predicate())
            .map_err(|e| StatementError::Malformed(format!("code review: {e}")))?;
        parse_commit(&predicate.commit)?;
        if !statement
            .subjects()
            .iter()
            .any(|s| s.git_commit.as_deref() == Some(predicate.commit.as_str()))
        {
            return Err(StatementError::Malformed(format!(
                "code review: commit {} is not among the statement's subjects",
                predicate.commit
            )));
        }
        let merged_on = parse_time(&predicate.merged_on)?;
        let configs = statement
            .subjects()
            .iter()
            .filter_map(|s| s.sha256.clone())
            .collect();
        Ok(Self {
            predicate,
            merged_on,
            configs,
        })
    }

    /// Approvals by someone other than the author, each person counted once. Names compare
    /// without regard to case or surrounding space (review systems treat `Alice` and `alice`
    /// as one account), so neither a case variant of the author nor a repeated reviewer counts.
    pub fn independent_reviewers(&self) -> Vec<String> {
        let author = same_person_key(&self.predicate.author);
        let mut names: Vec<String> = self
            .predicate
            .reviewers
            .iter()
            .map(|a| same_person_key(&a.name))
            .filter(|n| !n.is_empty() && *n != author)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The form in which two account names are compared: trimmed, lowercase.
pub fn same_person_key(name: &str) -> String {
    name.trim().to_lowercase()
}
