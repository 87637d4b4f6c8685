//! The embedded backend: one redb file, one writer thread with group commit.
//!
//! Every write request goes to a single writer thread. The thread takes whatever requests are
//! queued (up to a batch limit), applies them one after another inside one redb write
//! transaction (each request still all-or-nothing: its comparisons are checked against the state
//! left by the requests before it), commits once with two-phase commit and fsync, and only then
//! answers every request of the batch. Concurrent writers therefore share fsyncs, and nothing
//! is acknowledged before it is on disk.
//!
//! Watch history lives in the same file (an `events` table keyed by revision), so a watcher
//! resumes from any retained revision even across restarts.

mod codec;
mod watch;

use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError as RedbStorageError,
    TableDefinition, TableError,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::StoreError;
use crate::key::{Key, Prefix};
use crate::model::{
    Committed, EventKind, Limits, Op, Page, PageRequest, Revision, Txn, Versioned, WatchEvent,
};
use crate::{Store, WatchStream};

/// Current keys: key → encoded record (revisions, version, value).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Watch history: revision → encoded events of that revision.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Bookkeeping: format version, current revision, oldest retained history revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_OLDEST: &str = "oldest";
/// The on-disk layout version this code writes and reads.
const FORMAT_VERSION: u64 = 1;

/// File name of the store inside a data directory.
pub const STORE_FILE_NAME: &str = "store.redb";

/// Tuning for [`RedbStore`].
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// Page cache size in bytes.
    pub cache_bytes: usize,
    /// How many revisions of watch history to keep.
    pub history_revisions: u64,
    /// Most write requests committed together.
    pub max_batch: usize,
    /// Size limits.
    pub limits: Limits,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
            history_revisions: 100_000,
            max_batch: 1024,
            limits: Limits::default(),
        }
    }
}

/// Group-commit counters of a [`RedbStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable commits.
    pub commits: u64,
    /// Write requests they answered.
    pub requests: u64,
}

/// The embedded Store backend. Cheap to clone; clones share one file and one writer.
#[derive(Debug, Clone)]
pub struct RedbStore {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    db: Database,
    path: PathBuf,
    /// The revision of the last durable commit.
    revision: AtomicU64,
    /// Durable commits (fsynced batches) so far.
    commits: AtomicU64,
    /// Write requests answered by those commits.
    committed_requests: AtomicU64,
    /// Committed events, published after each durable batch, for watchers.
    events: broadcast::Sender<Arc<[WatchEvent]>>,
    limits: Limits,
}

#[derive(Debug)]
struct WriteRequest {
    txn: Txn,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

impl RedbStore {
    /// Opens (or creates) `store.redb` in `data_dir`.
    pub fn open_in(data_dir: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        Self::open(&data_dir.join(STORE_FILE_NAME), options)
    }

    /// Opens the store file at `path`, creating it (and its directory) when it does not exist.
    ///
    /// An existing file must be a healthy Ringfence store: an empty, truncated or corrupt file
    /// is an error naming the file, never a silent fresh start.
    pub fn open(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: "the file is empty (0 bytes) but a store file is never empty".into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(path, &options)?,
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let db = open_existing(path, &options)?;
        let (revision, _oldest) = read_meta(&db, path)?;
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db,
            path: path.to_owned(),
            revision: AtomicU64::new(revision),
            commits: AtomicU64::new(0),
            committed_requests: AtomicU64::new(0),
            events,
            limits: options.limits,
        });
        let (requests, rx) = mpsc::channel(options.max_batch.max(1) * 4);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("ringfence-store-writer".into())
            .spawn(move || run_writer(&writer_shared, rx, &options))
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        tracing::debug!(path = %path.display(), revision, "opened redb store");
        Ok(Self {
            handle: Arc::new(Handle {
                requests: Some(requests),
                writer: Some(writer),
                shared,
            }),
        })
    }

    /// How many durable commits (each one fsynced write transaction) served how many write
    /// requests since this store was opened: the group-commit factor is their ratio.
    pub fn commit_stats(&self) -> CommitStats {
        let shared = self.shared();
        CommitStats {
            commits: shared.commits.load(Ordering::Relaxed),
            requests: shared.committed_requests.load(Ordering::Relaxed),
        }
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.handle.shared.path
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(self.shared());
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| backend(format!("read task failed: {e}")))?
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the request channel lets the writer finish its batch and exit; joining it
        // means the file lock is released once the last clone of the store is gone.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        let key = key.clone();
        self.read(move |shared| {
            let rtx = shared.db.begin_read().map_err(|e| shared.storage(e))?;
            let table = open_read_table(&rtx, KV, shared)?;
            let found = table
                .get(key.as_str())
                .map_err(|e| shared.storage(e))?
                .map(|guard| codec::decode_record(guard.value()));
            match found {
                Some(record) => Ok(Some(shared.corrupt_if_err(record)?.into_versioned(key))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<Committed, StoreError> {
        txn.check(&self.shared().limits)?;
        let requests = self.handle.requests.as_ref().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        requests
            .send(WriteRequest { txn, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn range(&self, prefix: &Prefix, page: PageRequest) -> Result<Page, StoreError> {
        let prefix = prefix.clone();
        let limit = page.effective_limit(&self.shared().limits);
        self.read(move |shared| read_page(shared, &prefix, page.after.as_ref(), limit))
            .await
    }

    async fn watch(&self, prefix: &Prefix, from: Revision) -> Result<WatchStream, StoreError> {
        Ok(watch::start(
            Arc::clone(self.shared()),
            prefix.clone(),
            from,
        ))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared().revision.load(Ordering::SeqCst))
    }

    fn limits(&self) -> Limits {
        self.shared().limits
    }

    fn describe(&self) -> String {
        format!("redb file {}", self.path().display())
    }
}

impl Shared {
    fn storage(&self, e: impl Into<redb::Error>) -> StoreError {
        map_redb_error(&self.path, e.into())
    }

    fn corrupt_if_err<T>(&self, r: Result<T, codec::CodecError>) -> Result<T, StoreError> {
        r.map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn current_revision(&self) -> Revision {
        self.revision.load(Ordering::SeqCst)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<[WatchEvent]>> {
        self.events.subscribe()
    }

    /// Reads the retained history from `from` (inclusive) for up to `max_revisions`
    /// revisions, no further than `upto`. Returns the events under `prefix` and the next
    /// revision to read.
    pub(crate) fn read_history(
        &self,
        prefix: &Prefix,
        from: Revision,
        upto: Revision,
        max_revisions: u64,
    ) -> Result<(Vec<WatchEvent>, Revision), StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let meta = open_read_table(&rtx, META, self)?;
        let oldest = meta
            .get(META_OLDEST)
            .map_err(|e| self.storage(e))?
            .map(|g| g.value())
            .unwrap_or(1);
        if from < oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        let last = upto.min(from.saturating_add(max_revisions.saturating_sub(1)));
        let table = open_read_table(&rtx, EVENTS, self)?;
        let mut out = Vec::new();
        for entry in table.range(from..=last).map_err(|e| self.storage(e))? {
            let (revision, bytes) = entry.map_err(|e| self.storage(e))?;
            let events =
                self.corrupt_if_err(codec::decode_events(revision.value(), bytes.value()))?;
            out.extend(
                events
                    .into_iter()
                    .filter(|ev| prefix.matches(ev.key.as_str())),
            );
        }
        Ok((out, last.saturating_add(1)))
    }
}

fn create_new(path: &Path, options: &RedbOptions) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Build the file under a temporary name and rename it into place, so a crash during
    // creation never leaves a file that looks like a store but has no metadata.
    let tmp = path.with_extension("redb.creating");
    let _ = std::fs::remove_file(&tmp);
    {
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(&tmp)
            .map_err(|e| map_redb_error(&tmp, e.into()))?;
        let wtx = db
            .begin_write()
            .map_err(|e| map_redb_error(&tmp, e.into()))?;
        {
            let mut meta = wtx
                .open_table(META)
                .map_err(|e| map_redb_error(&tmp, e.into()))?;
            for (name, value) in [
                (META_FORMAT, FORMAT_VERSION),
                (META_REVISION, 0),
                (META_OLDEST, 1),
            ] {
                meta.insert(name, value)
                    .map_err(|e| map_redb_error(&tmp, e.into()))?;
            }
            wtx.open_table(KV)
                .map_err(|e| map_redb_error(&tmp, e.into()))?;
            wtx.open_table(EVENTS)
                .map_err(|e| map_redb_error(&tmp, e.into()))?;
        }
        wtx.commit().map_err(|e| map_redb_error(&tmp, e.into()))?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    tracing::info!(path = %path.display(), "created a new store");
    Ok(())
}

fn open_existing(path: &Path, options: &RedbOptions) -> Result<Database, StoreError> {
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(options.cache_bytes)
        // Verify every page checksum on open: a damaged file then fails with a clear error
        // instead of being trusted.
        .set_check_integrity_on_open(true);
    // SECURITY: a damaged file must produce an error, never take the process down. redb
    // documents that opening an altered file without the integrity check may panic; the check
    // is on, and this guard turns any remaining panic into the same clear error.
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| builder.open(path)));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(map_database_error(path, e)),
        Err(_) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "the storage engine could not read the file".into(),
        }),
    }
}

fn read_meta(db: &Database, path: &Path) -> Result<(Revision, Revision), StoreError> {
    let err = |e: redb::Error| map_redb_error(path, e);
    let rtx = db.begin_read().map_err(|e| err(e.into()))?;
    let meta = match rtx.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: "it is a redb file without Ringfence metadata".into(),
            });
        }
        Err(e) => return Err(err(e.into())),
    };
    let get = |name: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta
            .get(name)
            .map_err(|e| err(e.into()))?
            .map(|g| g.value()))
    };
    match get(META_FORMAT)? {
        Some(FORMAT_VERSION) => {}
        Some(other) => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: format!(
                    "store format {other} is not supported by this version (it reads format {FORMAT_VERSION})"
                ),
            });
        }
        None => {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: "the format marker is missing".into(),
            });
        }
    }
    let revision = get(META_REVISION)?.ok_or_else(|| StoreError::Corrupt {
        path: path.to_owned(),
        reason: "the current revision is missing".into(),
    })?;
    Ok((revision, get(META_OLDEST)?.unwrap_or(1)))
}

fn read_page(
    shared: &Shared,
    prefix: &Prefix,
    after: Option<&Key>,
    limit: usize,
) -> Result<Page, StoreError> {
    let rtx = shared.db.begin_read().map_err(|e| shared.storage(e))?;
    let meta = open_read_table(&rtx, META, shared)?;
    let revision = meta
        .get(META_REVISION)
        .map_err(|e| shared.storage(e))?
        .map(|g| g.value())
        .unwrap_or(0);
    let table = open_read_table(&rtx, KV, shared)?;
    let start = match after {
        Some(key) if key.as_str() >= prefix.as_str() => Bound::Excluded(key.as_str()),
        _ => Bound::Included(prefix.as_str()),
    };
    let mut items = Vec::new();
    let mut more = false;
    for entry in table
        .range::<&str>((start, Bound::Unbounded))
        .map_err(|e| shared.storage(e))?
    {
        let (k, v) = entry.map_err(|e| shared.storage(e))?;
        let key_str = k.value();
        if !prefix.matches(key_str) {
            break;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        let key = Key::new(key_str).map_err(|e| StoreError::Corrupt {
            path: shared.path.clone(),
            reason: format!("stored {e}"),
        })?;
        let record = shared.corrupt_if_err(codec::decode_record(v.value()))?;
        items.push(record.into_versioned(key));
    }
    let next = if more {
        items.last().map(|v| v.key.clone())
    } else {
        None
    };
    Ok(Page {
        items,
        next,
        revision,
    })
}

fn open_read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
    shared: &Shared,
) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
    rtx.open_table(def).map_err(|e| shared.storage(e))
}

/// The writer thread: batches requests, applies them in one redb transaction, commits once.
fn run_writer(shared: &Shared, mut rx: mpsc::Receiver<WriteRequest>, options: &RedbOptions) {
    let mut revision = shared.current_revision();
    let mut batch = Vec::with_capacity(options.max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < options.max_batch {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        match commit_batch(shared, &batch, revision, options.history_revisions) {
            Ok((outcomes, events, new_revision)) => {
                revision = new_revision;
                shared.revision.store(revision, Ordering::SeqCst);
                shared.commits.fetch_add(1, Ordering::Relaxed);
                let answered = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                shared
                    .committed_requests
                    .fetch_add(answered, Ordering::Relaxed);
                if !events.is_empty() {
                    // No receivers is fine: nobody is watching.
                    let _ = shared.events.send(events.into());
                }
                for (req, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = req.reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; the batch was not applied");
                let reason = e.to_string();
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Backend {
                        backend: "redb",
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}

type BatchResult = (
    Vec<Result<Committed, StoreError>>,
    Vec<WatchEvent>,
    Revision,
);

fn commit_batch(
    shared: &Shared,
    batch: &[WriteRequest],
    start_revision: Revision,
    history: u64,
) -> Result<BatchResult, StoreError> {
    let mut wtx = shared.db.begin_write().map_err(|e| shared.storage(e))?;
    // Two fsyncs per commit instead of one: a torn commit slot can then never be taken for a
    // valid one. Group commit makes the second fsync cheap per request.
    wtx.set_two_phase_commit(true);
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut all_events = Vec::new();
    let mut revision = start_revision;
    {
        let mut kv = wtx.open_table(KV).map_err(|e| shared.storage(e))?;
        let mut events = wtx.open_table(EVENTS).map_err(|e| shared.storage(e))?;
        let mut meta = wtx.open_table(META).map_err(|e| shared.storage(e))?;
        for req in batch {
            match apply_txn(shared, &mut kv, &req.txn, revision + 1)? {
                Applied::Conflict(e) => outcomes.push(Err(e)),
                Applied::NoChange => outcomes.push(Ok(Committed {
                    revision,
                    changed: false,
                })),
                Applied::Changed(evs) => {
                    revision += 1;
                    events
                        .insert(revision, codec::encode_events(&evs).as_slice())
                        .map_err(|e| shared.storage(e))?;
                    all_events.extend(evs);
                    outcomes.push(Ok(Committed {
                        revision,
                        changed: true,
                    }));
                }
            }
        }
        if revision != start_revision {
            meta.insert(META_REVISION, revision)
                .map_err(|e| shared.storage(e))?;
            compact_history(shared, &mut events, &mut meta, revision, history)?;
        }
    }
    wtx.commit().map_err(|e| shared.storage(e))?;
    Ok((outcomes, all_events, revision))
}

enum Applied {
    Conflict(StoreError),
    NoChange,
    Changed(Vec<WatchEvent>),
}

fn apply_txn(
    shared: &Shared,
    kv: &mut redb::Table<&str, &[u8]>,
    txn: &Txn,
    next: Revision,
) -> Result<Applied, StoreError> {
    for cmp in &txn.compares {
        let actual = match kv.get(cmp.key.as_str()).map_err(|e| shared.storage(e))? {
            Some(guard) => Some(
                shared
                    .corrupt_if_err(codec::decode_record(guard.value()))?
                    .mod_revision,
            ),
            None => None,
        };
        if !cmp.expect.holds(actual) {
            return Ok(Applied::Conflict(StoreError::Conflict {
                key: cmp.key.to_string(),
                expected: cmp.expect,
                actual,
            }));
        }
    }
    let mut evs = Vec::new();
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => {
                let previous = match kv.get(key.as_str()).map_err(|e| shared.storage(e))? {
                    Some(guard) => {
                        Some(shared.corrupt_if_err(codec::decode_record(guard.value()))?)
                    }
                    None => None,
                };
                let (create_revision, version) = match previous {
                    Some(p) => (p.create_revision, p.version + 1),
                    None => (next, 1),
                };
                let record = codec::encode_record(create_revision, next, version, value);
                kv.insert(key.as_str(), record.as_slice())
                    .map_err(|e| shared.storage(e))?;
                evs.push(WatchEvent {
                    revision: next,
                    key: key.clone(),
                    kind: EventKind::Put {
                        value: value.clone(),
                        create_revision,
                        version,
                    },
                });
            }
            Op::Delete { key } => {
                let removed = kv
                    .remove(key.as_str())
                    .map_err(|e| shared.storage(e))?
                    .is_some();
                if removed {
                    evs.push(WatchEvent {
                        revision: next,
                        key: key.clone(),
                        kind: EventKind::Delete,
                    });
                }
            }
        }
    }
    Ok(if evs.is_empty() {
        Applied::NoChange
    } else {
        Applied::Changed(evs)
    })
}

/// Drops watch history older than `history` revisions, in steps so the cost is amortized.
fn compact_history(
    shared: &Shared,
    events: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, u64>,
    revision: Revision,
    history: u64,
) -> Result<(), StoreError> {
    let oldest = meta
        .get(META_OLDEST)
        .map_err(|e| shared.storage(e))?
        .map(|g| g.value())
        .unwrap_or(1);
    let keep_from = revision.saturating_sub(history).saturating_add(1);
    // Compact in chunks of at least 1024 revisions so most commits skip this entirely.
    if keep_from < oldest.saturating_add(1024) {
        return Ok(());
    }
    events
        .retain_in(oldest..keep_from, |_, _| false)
        .map_err(|e| shared.storage(e))?;
    meta.insert(META_OLDEST, keep_from)
        .map_err(|e| shared.storage(e))?;
    Ok(())
}

fn map_database_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        DatabaseError::UpgradeRequired(v) => StoreError::NotAStore {
            path: path.to_owned(),
            reason: format!("it uses storage file format {v}, which this version cannot read"),
        },
        DatabaseError::RepairAborted => StoreError::Corrupt {
            path: path.to_owned(),
            reason: "the file needs a repair that could not complete".into(),
        },
        DatabaseError::Storage(s) => map_storage_error(path, s),
        other => backend(other.to_string()),
    }
}

fn map_redb_error(path: &Path, e: redb::Error) -> StoreError {
    match e {
        redb::Error::Corrupted(reason) => StoreError::Corrupt {
            path: path.to_owned(),
            reason,
        },
        redb::Error::Io(source) => io_or_truncated(path, source),
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        other => StoreError::Backend {
            backend: "redb",
            reason: format!("{} ({other})", path.display()),
        },
    }
}

fn map_storage_error(path: &Path, e: RedbStorageError) -> StoreError {
    match e {
        RedbStorageError::Corrupted(reason) => StoreError::Corrupt {
            path: path.to_owned(),
            reason,
        },
        RedbStorageError::Io(source) => io_or_truncated(path, source),
        other => StoreError::Backend {
            backend: "redb",
            reason: format!("{} ({other})", path.display()),
        },
    }
}

fn io_or_truncated(path: &Path, source: std::io::Error) -> StoreError {
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        StoreError::Corrupt {
            path: path.to_owned(),
            reason: "the file is truncated".into(),
        }
    } else if source.kind() == std::io::ErrorKind::InvalidData {
        // redb says so when the file does not start with its magic number.
        StoreError::NotAStore {
            path: path.to_owned(),
            reason: source.to_string(),
        }
    } else {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

fn backend(reason: String) -> StoreError {
    StoreError::Backend {
        backend: "redb",
        reason,
    }
}
