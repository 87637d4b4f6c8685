//! The one error type of the Store. Every variant's message says what went wrong and, where
//! an operator can act, what to do.

use std::path::PathBuf;

use crate::model::{Expect, Revision};

/// Why a Store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key or prefix is malformed.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A value is larger than the store accepts.
    #[error("value for {key} is {len} bytes; the store accepts at most {max}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction has too many comparisons, operations or bytes.
    #[error("transaction has {len} {what}; the store accepts at most {max}: split it")]
    TxnTooLarge {
        /// `comparisons`, `operations` or `bytes`.
        what: &'static str,
        /// The count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction writes the same key twice.
    #[error("transaction writes {key} more than once: write each key once per transaction")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A comparison failed; nothing was written.
    #[error("conflict on {key}: expected {expected}, found {}", describe_actual(*.actual))]
    Conflict {
        /// The key whose comparison failed.
        key: String,
        /// What was expected.
        expected: Expect,
        /// Its actual modification revision (`None`: absent).
        actual: Option<Revision>,
    },
    /// A watch asked for history that is no longer retained.
    #[error(
        "revision {requested} is compacted (oldest retained is {oldest}): re-read the current state with a range and watch from its revision"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        oldest: Revision,
    },
    /// The store file is damaged.
    #[error(
        "store file {} is corrupt: {reason}; restore it from a backup, or move it aside to start with an empty store",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file exists but is not a Ringfence store (or is from an incompatible version).
    #[error("{} is not a Ringfence store: {reason}", path.display())]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process has the store file open.
    #[error(
        "store file {} is in use by another process: stop it (or use another --data-dir)",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A file-system error.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The backend cannot be reached. For a write, it may or may not have been applied.
    #[error("{backend} unavailable at {endpoints} after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// `etcd`.
        backend: &'static str,
        /// Where it was tried.
        endpoints: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The `--store` URL is malformed.
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The backend failed in a way not covered above.
    #[error("{backend} error: {reason}")]
    Backend {
        /// `redb` or `etcd`.
        backend: &'static str,
        /// The failure.
        reason: String,
    },
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
}

fn describe_actual(actual: Option<Revision>) -> String {
    match actual {
        Some(r) => format!("revision {r}"),
        None => "absent".to_owned(),
    }
}

impl StoreError {
    /// True for failures worth retrying later (the backend is unreachable), as opposed to
    /// failures that will recur (bad input, conflicts, corruption).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}
