//! The audit log over the Store: sequencing with group commit, checkpoint publication and
//! proofs.
//!
//! Layout under the log's prefix (default `/audit`):
//! - `meta`: origin and the verifier key the log was created with;
//! - `e/<index, 20 digits>`: one record per entry: the entry's canonical bytes and the hashes
//!   of the tree nodes it completed (its leaf hash first), so any node `(level, index)` is in
//!   the record of its last leaf and a proof needs O(log n) reads;
//! - `head`: tree size and root: the commit point, written last and compare-and-swapped;
//! - `cp/latest` and `cp/<size>`: signed checkpoints as published;
//! - `id/<event id>`: index of an event forwarded from a spool, to drop duplicates.
//!
//! One sequencer task owns appends. It takes every append queued (up to a batch limit),
//! writes their records in transactions of at most 60 entries (concurrently, so the Store
//! group-commits them), then moves the head in a final transaction. An append is answered
//! only after the head that includes it is durable; records written past the head by an
//! interrupted batch are invisible and overwritten by the next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use ringfence_store::{Compare, Expect, Key, Store, StoreError, Txn};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::event::{Event, EventError};
use crate::note::{NoteError, Signer, Verifier};
use crate::rfc9162::{self, Frontier, Hash, ProofError};

/// Most appends sequenced together.
const MAX_BATCH: usize = 512;
/// Entries per Store transaction (the Store allows 64 operations).
const CHUNK: usize = 60;

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The Store failed.
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    /// The event is invalid.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A key or note is invalid.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A checkpoint is invalid.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A proof request or proof is invalid.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// Stored log data is damaged.
    #[error("audit log data is damaged: {0}")]
    Corrupt(String),
    /// The store holds a log made with another key or origin.
    #[error("{0}")]
    Mismatch(String),
    /// An append failed before it was durable (or its outcome is unknown).
    #[error("append failed: {0}")]
    Append(String),
    /// The log is shut down.
    #[error("the audit log is closed")]
    Closed,
}

/// Settings of an [`AuditLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Store key prefix.
    pub prefix: String,
    /// The log's origin line.
    pub origin: String,
    /// Longest time an appended entry waits for a checkpoint that covers it. Checkpoints are
    /// published as soon as there are new entries, at most four times per interval.
    pub checkpoint_interval: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            prefix: "/audit".into(),
            origin: "ringfence.local/audit".into(),
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

/// Where the log keeps things in the Store.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    fn key(&self, rest: &str) -> Result<Key, StoreError> {
        Key::new(format!("{}/{rest}", self.prefix))
    }

    pub(crate) fn meta(&self) -> Result<Key, StoreError> {
        self.key("meta")
    }

    pub(crate) fn head(&self) -> Result<Key, StoreError> {
        self.key("head")
    }

    pub(crate) fn entry(&self, index: u64) -> Result<Key, StoreError> {
        self.key(&format!("e/{index:020}"))
    }

    pub(crate) fn entries(&self) -> Result<ringfence_store::Prefix, StoreError> {
        ringfence_store::Prefix::new(format!("{}/e/", self.prefix))
    }

    pub(crate) fn checkpoint_latest(&self) -> Result<Key, StoreError> {
        self.key("cp/latest")
    }

    pub(crate) fn checkpoint_at(&self, size: u64) -> Result<Key, StoreError> {
        self.key(&format!("cp/{size:020}"))
    }

    pub(crate) fn checkpoints(&self) -> Result<ringfence_store::Prefix, StoreError> {
        ringfence_store::Prefix::new(format!("{}/cp/0", self.prefix))
    }

    fn event_id(&self, id: &str) -> Result<Key, StoreError> {
        self.key(&format!("id/{id}"))
    }

    /// Where a second content offered under an already recorded id is remembered.
    fn event_id_version(&self, id: &str, content: &Hash) -> Result<Key, StoreError> {
        let hex: String = content.iter().map(|b| format!("{b:02x}")).collect();
        self.key(&format!("idv/{id}/{hex}"))
    }

    /// The entry index encoded in an entry key.
    pub(crate) fn index_of(&self, key: &Key) -> Option<u64> {
        key.as_str()
            .strip_prefix(&self.prefix)?
            .strip_prefix("/e/")?
            .parse()
            .ok()
    }
}

/// A stored entry: the hashes of the nodes it completed (leaf first) and its bytes.
pub(crate) fn encode_record(nodes: &[Hash], event: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + nodes.len() * 32 + event.len());
    out.push(u8::try_from(nodes.len()).unwrap_or(u8::MAX));
    for n in nodes {
        out.extend_from_slice(n);
    }
    out.extend_from_slice(event);
    out
}

/// The entry index an event id record starts with (8 bytes, little-endian).
fn stored_index(value: &[u8]) -> Option<u64> {
    value
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
}

/// Splits a stored record; `None` when it is malformed.
pub(crate) fn decode_record(bytes: &[u8]) -> Option<(Vec<Hash>, &[u8])> {
    let (&n, rest) = bytes.split_first()?;
    let n = usize::from(n);
    if n == 0 || n > 64 || rest.len() < n * 32 {
        return None;
    }
    let (hashes, event) = rest.split_at(n * 32);
    let nodes = hashes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Some((nodes, event))
}

pub(crate) fn encode_head(size: u64, root: &Hash) -> Vec<u8> {
    let mut out = size.to_le_bytes().to_vec();
    out.extend_from_slice(root);
    out
}

pub(crate) fn decode_head(bytes: &[u8]) -> Option<(u64, Hash)> {
    if bytes.len() != 40 {
        return None;
    }
    let (size, root) = bytes.split_at(8);
    let mut s = [0u8; 8];
    s.copy_from_slice(size);
    let mut r = [0u8; 32];
    r.copy_from_slice(root);
    Some((u64::from_le_bytes(s), r))
}

/// The durable state of the tree: size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Number of entries.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

/// A published checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its tree size.
    pub size: u64,
    /// The signed note.
    pub text: String,
}

/// The audit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    layout: Layout,
    signer: Signer,
    options: LogOptions,
    appends: mpsc::Sender<AppendRequest>,
    head: watch::Receiver<Head>,
    published: watch::Sender<Option<Published>>,
    publish_lock: Mutex<()>,
}

#[derive(Debug)]
struct AppendRequest {
    bytes: Vec<u8>,
    id: String,
    dedupe: bool,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// Sequencer state.
struct Sequencer {
    store: Arc<dyn Store>,
    layout: Layout,
    frontier: Frontier,
    head_revision: Option<u64>,
    head: watch::Sender<Head>,
}

impl AuditLog {
    /// Opens the log in `store`, creating it on first use. The store remembers the origin and
    /// key the log was created with, and refuses to be opened with others.
    pub async fn open(
        store: Arc<dyn Store>,
        signer: Signer,
        options: LogOptions,
    ) -> Result<Self, AuditError> {
        if signer.name() != options.origin {
            return Err(AuditError::Mismatch(format!(
                "the log key is named {:?} but the log's origin is {:?}: a log key carries the origin's name",
                signer.name(),
                options.origin
            )));
        }
        let layout = Layout::new(&options.prefix);
        let meta = format!("{}\n{}\n", options.origin, signer.verifier());
        match store.get(&layout.meta()?).await? {
            Some(found) if found.value == meta.as_bytes() => {}
            Some(found) => {
                return Err(AuditError::Mismatch(format!(
                    "this store holds an audit log made with another origin or key:\n{}use that key, or another --store",
                    String::from_utf8_lossy(&found.value)
                )));
            }
            None => {
                store
                    .put(&layout.meta()?, meta.into_bytes(), Expect::Absent)
                    .await?;
            }
        }
        let (frontier, head_revision) = load_frontier(store.as_ref(), &layout).await?;
        let (head_tx, head_rx) = watch::channel(Head {
            size: frontier.size(),
            root: frontier.root(),
        });
        let latest = match store.get(&layout.checkpoint_latest()?).await? {
            Some(v) => {
                let text = String::from_utf8(v.value)
                    .map_err(|_| AuditError::Corrupt("latest checkpoint is not UTF-8".into()))?;
                let (cp, _) =
                    Checkpoint::open(text.as_bytes(), &signer.verifier(), &options.origin)?;
                Some(Published {
                    size: cp.size,
                    text,
                })
            }
            None => None,
        };
        let (published, _) = watch::channel(latest);
        let (appends, rx) = mpsc::channel(MAX_BATCH * 4);
        let sequencer = Sequencer {
            store: Arc::clone(&store),
            layout: layout.clone(),
            frontier,
            head_revision,
            head: head_tx,
        };
        tokio::spawn(sequencer.run(rx));
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                layout,
                signer,
                options,
                appends,
                head: head_rx,
                published,
                publish_lock: Mutex::new(()),
            }),
        })
    }

    /// Appends an event; returns its index once it is durable.
    pub async fn append(&self, event: &Event) -> Result<u64, AuditError> {
        self.submit(event, false).await
    }

    /// Appends an event forwarded from a spool: an event whose id the log already holds is
    /// not appended again; its existing index is returned.
    pub async fn append_once(&self, event: &Event) -> Result<u64, AuditError> {
        self.submit(event, true).await
    }

    async fn submit(&self, event: &Event, dedupe: bool) -> Result<u64, AuditError> {
        let bytes = event.encode()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .appends
            .send(AppendRequest {
                bytes,
                id: event.id.clone(),
                dedupe,
                reply,
            })
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// The durable head.
    pub fn head(&self) -> Head {
        *self.inner.head.borrow()
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.inner.options.origin
    }

    /// The log's public key.
    pub fn verifier(&self) -> Verifier {
        self.inner.signer.verifier()
    }

    /// The latest published checkpoint.
    pub fn latest_checkpoint(&self) -> Option<Published> {
        self.inner.published.borrow().clone()
    }

    /// Follows published checkpoints.
    pub fn subscribe_checkpoints(&self) -> watch::Receiver<Option<Published>> {
        self.inner.published.subscribe()
    }

    /// Signs and stores a checkpoint of the current head (unless one of that size exists).
    pub async fn publish_checkpoint(&self) -> Result<Published, AuditError> {
        let _guard = self.inner.publish_lock.lock().await;
        let head = self.head();
        if let Some(p) = self.latest_checkpoint().filter(|p| p.size == head.size) {
            return Ok(p);
        }
        let cp = Checkpoint {
            origin: self.inner.options.origin.clone(),
            size: head.size,
            root: head.root,
            extensions: vec![],
        };
        let text = cp.sign(&self.inner.signer)?;
        let layout = &self.inner.layout;
        self.inner
            .store
            .txn(
                Txn::new()
                    .put(layout.checkpoint_at(head.size)?, text.clone().into_bytes())
                    .put(layout.checkpoint_latest()?, text.clone().into_bytes()),
            )
            .await?;
        let published = Published {
            size: head.size,
            text,
        };
        self.inner.published.send_replace(Some(published.clone()));
        Ok(published)
    }

    /// Starts the background publisher: a checkpoint follows new entries within the
    /// checkpoint interval (at most four per interval). It stops when every clone of the log
    /// is dropped.
    pub fn spawn_publisher(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let mut head = self.inner.head.clone();
        let gap = self.inner.options.checkpoint_interval / 4;
        tokio::spawn(async move {
            let mut last: Option<Instant> = None;
            loop {
                // Wait for entries no checkpoint covers yet.
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let log = AuditLog { inner };
                    let published = log.latest_checkpoint().map_or(0, |p| p.size);
                    if log.head().size > published {
                        break;
                    }
                    drop(log);
                    if head.changed().await.is_err() {
                        return;
                    }
                }
                if let Some(wait) = last.map(|t| gap.saturating_sub(t.elapsed())) {
                    tokio::time::sleep(wait).await;
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (AuditLog { inner }).publish_checkpoint().await {
                    tracing::error!(error = %e, "publishing an audit checkpoint failed; retrying");
                }
                last = Some(Instant::now());
            }
        })
    }

    /// A reader of the log as of its current head.
    pub fn reader(&self) -> LogReader {
        LogReader {
            store: Arc::clone(&self.inner.store),
            layout: self.inner.layout.clone(),
            size: self.head().size,
        }
    }

    /// The canonical bytes of entry `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, AuditError> {
        self.reader().entry(index).await
    }

    /// The root of the tree of the first `size` entries.
    pub async fn root_at(&self, size: u64) -> Result<Hash, AuditError> {
        self.reader().root_at(size).await
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.reader().inclusion_proof(index, size).await
    }

    /// The consistency proof from the tree of `from` entries to the tree of `to` entries.
    pub async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, AuditError> {
        self.reader().consistency_proof(from, to).await
    }
}

/// Read access to a stored log, as of one head, without its signing key: entries, roots and
/// proofs. Anyone with read access to the Store can serve proofs.
#[derive(Debug, Clone)]
pub struct LogReader {
    store: Arc<dyn Store>,
    layout: Layout,
    size: u64,
}

impl LogReader {
    /// Reads the head of the log under `prefix`.
    pub async fn open(store: Arc<dyn Store>, prefix: &str) -> Result<Self, AuditError> {
        let layout = Layout::new(prefix);
        let size = match store.get(&layout.head()?).await? {
            Some(h) => {
                decode_head(&h.value)
                    .ok_or_else(|| AuditError::Corrupt("the head record is malformed".into()))?
                    .0
            }
            None => 0,
        };
        Ok(Self {
            store,
            layout,
            size,
        })
    }

    /// Entries in the log as of this reader.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The latest published checkpoint, as stored (unverified).
    pub async fn latest_checkpoint(&self) -> Result<Option<Vec<u8>>, AuditError> {
        Ok(self
            .store
            .get(&self.layout.checkpoint_latest()?)
            .await?
            .map(|v| v.value))
    }

    /// The canonical bytes of entry `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, AuditError> {
        self.check_size(index.saturating_add(1))?;
        let (_, bytes) = read_record(self.store.as_ref(), &self.layout, index).await?;
        Ok(bytes)
    }

    /// Up to `limit` entries from `start`, in order.
    pub async fn entries(
        &self,
        start: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let mut out = Vec::new();
        if start >= self.size {
            return Ok(out);
        }
        let after = start
            .checked_sub(1)
            .map(|i| self.layout.entry(i))
            .transpose()?;
        let page = self
            .store
            .range(
                &self.layout.entries()?,
                ringfence_store::PageRequest { after, limit },
            )
            .await?;
        for item in page.items {
            let Some(index) = self.layout.index_of(&item.key) else {
                continue;
            };
            if index >= self.size {
                break;
            }
            let (_, bytes) = decode_record(&item.value)
                .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is malformed")))?;
            out.push((index, bytes.to_vec()));
        }
        Ok(out)
    }

    async fn node(&self, level: u32, index: u64) -> Result<Hash, AuditError> {
        node_hash_at(self.store.as_ref(), &self.layout, level, index).await
    }

    async fn range_hash(&self, start: u64, end: u64) -> Result<Hash, AuditError> {
        let mut hashes = Vec::new();
        for (level, index) in rfc9162::range_nodes(start, end) {
            hashes.push(self.node(level, index).await?);
        }
        rfc9162::fold_range(&hashes).ok_or_else(|| AuditError::Corrupt("empty range".into()))
    }

    /// The root of the tree of the first `size` entries.
    pub async fn root_at(&self, size: u64) -> Result<Hash, AuditError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(rfc9162::empty_root());
        }
        self.range_hash(0, size).await
    }

    /// The leaf hash of entry `index`.
    pub async fn leaf_hash(&self, index: u64) -> Result<Hash, AuditError> {
        self.check_size(index.saturating_add(1))?;
        self.node(0, index).await
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        self.check_size(size)?;
        let mut proof = Vec::new();
        for (start, end) in rfc9162::inclusion_plan(index, size)? {
            proof.push(self.range_hash(start, end).await?);
        }
        Ok(proof)
    }

    /// The consistency proof from the tree of `from` entries to the tree of `to` entries.
    pub async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, AuditError> {
        self.check_size(to)?;
        let mut proof = Vec::new();
        for (start, end) in rfc9162::consistency_plan(from, to)? {
            proof.push(self.range_hash(start, end).await?);
        }
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), AuditError> {
        if size > self.size {
            return Err(ProofError::OutOfRange(format!(
                "size {size} is beyond the log's {} entries",
                self.size
            ))
            .into());
        }
        Ok(())
    }
}

async fn read_record(
    store: &dyn Store,
    layout: &Layout,
    index: u64,
) -> Result<(Vec<Hash>, Vec<u8>), AuditError> {
    let v = store
        .get(&layout.entry(index)?)
        .await?
        .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is missing")))?;
    let (nodes, event) = decode_record(&v.value)
        .ok_or_else(|| AuditError::Corrupt(format!("entry {index} is malformed")))?;
    Ok((nodes, event.to_vec()))
}

async fn node_hash_at(
    store: &dyn Store,
    layout: &Layout,
    level: u32,
    index: u64,
) -> Result<Hash, AuditError> {
    let last_leaf = ((index + 1) << level) - 1;
    let (nodes, _) = read_record(store, layout, last_leaf).await?;
    nodes.get(level as usize).copied().ok_or_else(|| {
        AuditError::Corrupt(format!(
            "entry {last_leaf} lacks the hash of node ({level}, {index})"
        ))
    })
}

async fn load_frontier(
    store: &dyn Store,
    layout: &Layout,
) -> Result<(Frontier, Option<u64>), AuditError> {
    let Some(head) = store.get(&layout.head()?).await? else {
        return Ok((Frontier::default(), None));
    };
    let (size, root) = decode_head(&head.value)
        .ok_or_else(|| AuditError::Corrupt("the head record is malformed".into()))?;
    let mut hashes = Vec::new();
    for (level, index) in rfc9162::range_nodes(0, size) {
        hashes.push(node_hash_at(store, layout, level, index).await?);
    }
    let frontier = Frontier::from_nodes(size, &hashes)
        .ok_or_else(|| AuditError::Corrupt("the tree edge does not match the head".into()))?;
    if frontier.root() != root {
        return Err(AuditError::Corrupt(format!(
            "the stored tree of {size} entries does not hash to the head's root: run `ringfence audit verify`"
        )));
    }
    Ok((frontier, Some(head.mod_revision)))
}

impl Sequencer {
    async fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            match self.commit(&batch).await {
                Ok(indices) => {
                    for (req, index) in batch.drain(..).zip(indices) {
                        let _ = req.reply.send(index);
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(error = %reason, "audit append batch failed");
                    for req in batch.drain(..) {
                        let _ = req.reply.send(Err(AuditError::Append(reason.clone())));
                    }
                    // The head may or may not have moved: start again from what is durable.
                    self.reload().await;
                }
            }
        }
    }

    async fn reload(&mut self) {
        match load_frontier(self.store.as_ref(), &self.layout).await {
            Ok((frontier, rev)) => {
                self.frontier = frontier;
                self.head_revision = rev;
                self.head.send_replace(Head {
                    size: self.frontier.size(),
                    root: self.frontier.root(),
                });
            }
            Err(e) => tracing::error!(error = %e, "reloading the audit log head failed"),
        }
    }

    /// The entry an id was first recorded at, and the leaf hash of what was recorded there.
    /// (Records written before the hash was kept hold the index only: the entry is read.)
    async fn recorded(&self, id: &str) -> Result<Option<(u64, Hash)>, AuditError> {
        let Some(v) = self.store.get(&self.layout.event_id(id)?).await? else {
            return Ok(None);
        };
        let corrupt = || AuditError::Corrupt(format!("event id record {id} is malformed"));
        let index = stored_index(&v.value).ok_or_else(corrupt)?;
        if let Some(h) = v.value.get(8..40).and_then(|b| Hash::try_from(b).ok()) {
            return Ok(Some((index, h)));
        }
        let entry = self
            .store
            .get(&self.layout.entry(index)?)
            .await?
            .ok_or_else(corrupt)?;
        let (_, event) = decode_record(&entry.value).ok_or_else(corrupt)?;
        Ok(Some((index, rfc9162::leaf_hash(event))))
    }

    /// Makes the batch durable; returns each request's entry index.
    async fn commit(
        &mut self,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<u64, AuditError>>, AuditError> {
        let mut frontier = self.frontier.clone();
        let mut ops: Vec<(Key, Vec<u8>)> = Vec::new();
        let mut indices = Vec::with_capacity(batch.len());
        // Spooled events the log already holds (or that appear twice in this batch) keep
        // their first index instead of being appended again — when they are the same event.
        // Another content under a recorded id is never dropped: it is recorded too, marked
        // with the entry it conflicts with, so that sending an id first cannot hide an event.
        let mut batch_ids: HashMap<String, (u64, Hash)> = HashMap::new();
        let mut batch_versions: HashMap<Key, u64> = HashMap::new();
        for req in batch {
            let content = rfc9162::leaf_hash(&req.bytes);
            let mut bytes = std::borrow::Cow::Borrowed(&req.bytes);
            let mut id_key = None;
            if req.dedupe {
                let first = match batch_ids.get(&req.id) {
                    Some(&f) => Some(f),
                    None => self.recorded(&req.id).await?,
                };
                match first {
                    Some((index, h)) if h == content => {
                        indices.push(Ok(index));
                        continue;
                    }
                    Some((first_index, _)) => {
                        let version = self.layout.event_id_version(&req.id, &content)?;
                        if let Some(&index) = batch_versions.get(&version) {
                            indices.push(Ok(index));
                            continue;
                        }
                        if let Some(index) = self
                            .store
                            .get(&version)
                            .await?
                            .and_then(|v| stored_index(&v.value))
                        {
                            indices.push(Ok(index));
                            continue;
                        }
                        let marked = match Event::decode(&req.bytes) {
                            Ok(e) => e
                                .with_detail(
                                    "id_conflict",
                                    format!(
                                        "entry {first_index} was recorded with this id and other content"
                                    ),
                                )
                                .encode(),
                            Err(e) => Err(e),
                        };
                        match marked {
                            Ok(m) => bytes = std::borrow::Cow::Owned(m),
                            Err(e) => {
                                indices.push(Err(AuditError::Event(e)));
                                continue;
                            }
                        }
                        id_key = Some((version, None));
                    }
                    None => id_key = Some((self.layout.event_id(&req.id)?, Some(content))),
                }
            }
            let index = frontier.size();
            let completed = frontier.push(rfc9162::leaf_hash(&bytes));
            ops.push((self.layout.entry(index)?, encode_record(&completed, &bytes)));
            match id_key {
                Some((key, Some(h))) => {
                    let mut v = index.to_le_bytes().to_vec();
                    v.extend_from_slice(&h);
                    ops.push((key, v));
                    batch_ids.insert(req.id.clone(), (index, h));
                }
                Some((key, None)) => {
                    ops.push((key.clone(), index.to_le_bytes().to_vec()));
                    batch_versions.insert(key, index);
                }
                None => {}
            }
            indices.push(Ok(index));
        }
        if frontier.size() == self.frontier.size() {
            return Ok(indices);
        }
        let head_key = self.layout.head()?;
        let head_value = encode_head(frontier.size(), &frontier.root());
        let mut chunks: Vec<Vec<(Key, Vec<u8>)>> = ops.chunks(CHUNK).map(<[_]>::to_vec).collect();
        let last = chunks.pop().unwrap_or_default();
        let store = &self.store;
        try_join_all(chunks.into_iter().map(|chunk| async move {
            let txn = chunk.into_iter().fold(Txn::new(), |t, (k, v)| t.put(k, v));
            store.txn(txn).await
        }))
        .await?;
        // INVARIANT: the head moves last, and only from the head this sequencer wrote: a
        // second writer on the same store makes this fail instead of forking the log.
        let expect = self.head_revision.map_or(Expect::Absent, Expect::Revision);
        let txn = last
            .into_iter()
            .fold(Txn::new(), |t, (k, v)| t.put(k, v))
            .compare(Compare::new(head_key.clone(), expect))
            .put(head_key, head_value);
        let committed = self.store.txn(txn).await?;
        self.head_revision = Some(committed.revision);
        self.frontier = frontier;
        self.head.send_replace(Head {
            size: self.frontier.size(),
            root: self.frontier.root(),
        });
        Ok(indices)
    }
}
