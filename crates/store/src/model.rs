//! The data model shared by every backend: revisions, versioned values, comparisons,
//! transactions, pages and watch events.

use crate::error::StoreError;
use crate::key::Key;

/// A store-wide revision. Grows by one for every write that changes something; `0` means
/// "never written".
pub type Revision = u64;

/// The size limits every backend enforces before sending anything (they fit inside etcd's
/// defaults: 1.5 MiB requests, 128 operations per transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest value, in bytes.
    pub max_value_len: usize,
    /// Most comparisons, and most operations, in one transaction.
    pub max_txn_ops: usize,
    /// Most bytes of keys and values in one transaction.
    pub max_txn_bytes: usize,
    /// Most entries in one page of a range.
    pub max_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_len: 1024 * 1024,
            max_txn_ops: 64,
            max_txn_bytes: 1024 * 1024 + 256 * 1024,
            max_page: 1000,
        }
    }
}

/// A value with its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The key.
    pub key: Key,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The revision at which the key was (last) created.
    pub create_revision: Revision,
    /// The revision of the last write to the key; what [`Expect::Revision`] compares with.
    pub mod_revision: Revision,
    /// How many times the key was written since it was created (1 after the first put).
    pub version: u64,
}

/// What a write expects of a key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: an unconditional write.
    Any,
    /// The key does not exist.
    Absent,
    /// The key exists, whatever its revision.
    Exists,
    /// The key's last modification was at exactly this revision.
    Revision(Revision),
}

impl Expect {
    /// Whether a key whose modification revision is `actual` (`None`: absent) satisfies this.
    pub fn holds(self, actual: Option<Revision>) -> bool {
        match (self, actual) {
            (Self::Any, _) => true,
            (Self::Absent, None) | (Self::Exists, Some(_)) => true,
            (Self::Revision(want), Some(have)) => want == have,
            _ => false,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any state"),
            Self::Absent => f.write_str("absent"),
            Self::Exists => f.write_str("present"),
            Self::Revision(r) => write!(f, "at revision {r}"),
        }
    }
}

/// One comparison of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Key,
    /// What it must be.
    pub expect: Expect,
}

impl Compare {
    /// A comparison of `key` against `expect`.
    pub fn new(key: Key, expect: Expect) -> Self {
        Self { key, expect }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key's value.
    Put {
        /// The key.
        key: Key,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove a key (no effect when absent).
    Delete {
        /// The key.
        key: Key,
    },
}

impl Op {
    /// The key this operation writes.
    pub fn key(&self) -> &Key {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// A transaction: comparisons that must all hold, then operations applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Comparisons, checked in order.
    pub compares: Vec<Compare>,
    /// Operations, applied in order when every comparison holds.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a comparison.
    pub fn compare(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds a put.
    pub fn put(mut self, key: Key, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put { key, value });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: Key) -> Self {
        self.ops.push(Op::Delete { key });
        self
    }

    /// Checks the transaction against `limits`; every backend calls this before doing anything.
    pub fn check(&self, limits: &Limits) -> Result<(), StoreError> {
        if self.compares.len() > limits.max_txn_ops {
            return Err(StoreError::TxnTooLarge {
                what: "comparisons",
                len: self.compares.len(),
                max: limits.max_txn_ops,
            });
        }
        if self.ops.len() > limits.max_txn_ops {
            return Err(StoreError::TxnTooLarge {
                what: "operations",
                len: self.ops.len(),
                max: limits.max_txn_ops,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(self.ops.len());
        if let Some(dup) = self.ops.iter().find(|op| !seen.insert(op.key())) {
            return Err(StoreError::DuplicateKey {
                key: dup.key().to_string(),
            });
        }
        let mut bytes = 0usize;
        for op in &self.ops {
            bytes = bytes.saturating_add(op.key().as_str().len());
            if let Op::Put { key, value } = op {
                if value.len() > limits.max_value_len {
                    return Err(StoreError::ValueTooLarge {
                        key: key.to_string(),
                        len: value.len(),
                        max: limits.max_value_len,
                    });
                }
                bytes = bytes.saturating_add(value.len());
            }
        }
        if bytes > limits.max_txn_bytes {
            return Err(StoreError::TxnTooLarge {
                what: "bytes",
                len: bytes,
                max: limits.max_txn_bytes,
            });
        }
        Ok(())
    }
}

/// The result of a transaction whose comparisons held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The transaction's revision (when `changed`), else the store's current revision.
    pub revision: Revision,
    /// False when the operations changed nothing (only deletes of absent keys).
    pub changed: bool,
}

/// Where a page of a range starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Start strictly after this key (the previous page's `next`); `None` for the first page.
    pub after: Option<Key>,
    /// Most entries wanted; clamped to [`Limits::max_page`], and `0` means that maximum.
    pub limit: usize,
}

impl PageRequest {
    /// The first page of up to `limit` entries.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The effective limit under `limits`.
    pub fn effective_limit(&self, limits: &Limits) -> usize {
        if self.limit == 0 {
            limits.max_page
        } else {
            self.limit.min(limits.max_page)
        }
    }
}

/// One page of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Entries in key order.
    pub items: Vec<Versioned>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next: Option<Key>,
    /// The store revision the page was read at.
    pub revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put {
        /// The new value.
        value: Vec<u8>,
        /// The key's create revision after the write.
        create_revision: Revision,
        /// The key's version after the write.
        version: u64,
    },
    /// The key was deleted.
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The revision of the write (shared by the events of one transaction).
    pub revision: Revision,
    /// The key changed.
    pub key: Key,
    /// What changed.
    pub kind: EventKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[test]
    fn expectations() {
        assert!(Expect::Any.holds(None) && Expect::Any.holds(Some(3)));
        assert!(Expect::Absent.holds(None) && !Expect::Absent.holds(Some(1)));
        assert!(Expect::Exists.holds(Some(1)) && !Expect::Exists.holds(None));
        assert!(Expect::Revision(4).holds(Some(4)));
        assert!(!Expect::Revision(4).holds(Some(5)) && !Expect::Revision(4).holds(None));
    }

    #[test]
    fn limits_are_typed_errors() {
        let limits = Limits::default();
        let big = Txn::new().put(key("/a"), vec![0; limits.max_value_len + 1]);
        assert!(matches!(
            big.check(&limits),
            Err(StoreError::ValueTooLarge { len, .. }) if len == limits.max_value_len + 1
        ));
        let ok = Txn::new().put(key("/a"), vec![0; limits.max_value_len]);
        assert!(ok.check(&limits).is_ok());
        let mut many = Txn::new();
        for i in 0..=limits.max_txn_ops {
            many = many.delete(key(&format!("/k{i}")));
        }
        assert!(matches!(
            many.check(&limits),
            Err(StoreError::TxnTooLarge {
                what: "operations",
                ..
            })
        ));
        let dup = Txn::new().put(key("/a"), vec![]).delete(key("/a"));
        assert!(matches!(dup.check(&limits), Err(StoreError::DuplicateKey { key }) if key == "/a"));
        let bulky = Txn::new()
            .put(key("/a"), vec![0; limits.max_value_len])
            .put(key("/b"), vec![0; limits.max_value_len]);
        assert!(matches!(
            bulky.check(&limits),
            Err(StoreError::TxnTooLarge { what: "bytes", .. })
        ));
    }

    #[test]
    fn page_limits_clamp() {
        let limits = Limits::default();
        assert_eq!(PageRequest::first(0).effective_limit(&limits), 1000);
        assert_eq!(PageRequest::first(5).effective_limit(&limits), 5);
        assert_eq!(PageRequest::first(50_000).effective_limit(&limits), 1000);
    }
}
