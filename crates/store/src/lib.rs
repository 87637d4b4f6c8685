//! Ringfence's durable state: one [`Store`] trait with two backends.
//!
//! - [`RedbStore`]: embedded, one file in the data directory, durable when a write is
//!   acknowledged, with group commit so concurrent writers share fsyncs. The default.
//! - [`EtcdStore`]: an etcd v3 cluster, for more than one machine and for a highly available
//!   control plane (`--store etcd://host:port,host:port`).
//!
//! Both give the same model, the one etcd defines: a flat, ordered key space; one global
//! revision that grows by one for every write that changes something; per-key create and
//! modification revisions; compare-and-swap on a key's revision; multi-key transactions that
//! apply all or nothing; prefix ranges read in pages; and prefix watches that start from any
//! retained revision, so a watcher that lost its connection resumes exactly where it stopped.
//! The conformance suite in `ringfence-test-util` runs the same tests against both.

mod error;
mod etcd;
mod key;
mod model;
mod redb_backend;
mod url;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

pub use error::StoreError;
pub use etcd::{EtcdOptions, EtcdStore};
pub use key::{Key, Prefix};
pub use model::{
    Committed, Compare, EventKind, Expect, Limits, Op, Page, PageRequest, Revision, Txn, Versioned,
    WatchEvent,
};
pub use redb_backend::{CommitStats, RedbOptions, RedbStore};
pub use url::{StoreUrl, open_store};

/// A stream of watch events; ends only with an error (or when dropped).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Versioned, transactional, watchable key-value state. Every durable fact in Ringfence goes
/// through this trait.
///
/// Writes return only once the change is durable (redb: fsynced; etcd: committed by a quorum).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads one key; `None` when it does not exist.
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError>;

    /// Writes one key if `expect` holds; returns the revision of the write.
    ///
    /// A failed expectation is [`StoreError::Conflict`], naming the key and its actual revision.
    async fn put(&self, key: &Key, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        let txn = Txn::new()
            .compare(Compare::new(key.clone(), expect))
            .put(key.clone(), value);
        Ok(self.txn(txn).await?.revision)
    }

    /// Deletes one key if `expect` holds; returns the revision of the delete, or `None` when the
    /// key did not exist (nothing changed).
    async fn delete(&self, key: &Key, expect: Expect) -> Result<Option<Revision>, StoreError> {
        let txn = Txn::new()
            .compare(Compare::new(key.clone(), expect))
            .delete(key.clone());
        let committed = self.txn(txn).await?;
        Ok(committed.changed.then_some(committed.revision))
    }

    /// Applies a transaction: when every comparison holds, every operation applies, atomically,
    /// at one new revision; otherwise nothing applies and the first failed comparison is
    /// reported as [`StoreError::Conflict`]. When the operations changed nothing (deletes of
    /// absent keys), no revision is spent and `changed` is false.
    async fn txn(&self, txn: Txn) -> Result<Committed, StoreError>;

    /// Reads one page of the keys under `prefix`, in key order.
    async fn range(&self, prefix: &Prefix, page: PageRequest) -> Result<Page, StoreError>;

    /// Watches the keys under `prefix`, starting with the changes at revision `from` (`0` means
    /// "changes after now"). Events arrive in revision order; the events of one transaction
    /// share its revision. Resume after a disconnect with `from = last seen revision + 1`.
    ///
    /// When `from` is older than the retained history, the stream's first item is
    /// [`StoreError::Compacted`].
    async fn watch(&self, prefix: &Prefix, from: Revision) -> Result<WatchStream, StoreError>;

    /// The current revision of the whole store.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// The limits this store enforces.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// A one-line human description (backend and location) for logs and `store status`.
    fn describe(&self) -> String;
}
