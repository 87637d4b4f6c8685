//! Where components send audit events: straight into the log, or, for components that may
//! not reach it (agents), into a durable local spool that is forwarded later with no loss and
//! no duplicates.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ringfence_store::{
    Expect, Key, PageRequest, Prefix, RedbOptions, RedbStore, Store, StoreError,
};
use tokio::sync::Mutex;

use crate::event::Event;
use crate::log::{AuditError, AuditLog};

/// Something that durably records audit events. Implemented by the log itself and by the
/// spool; components hold an `Arc<dyn AuditSink>`.
#[async_trait]
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Records `event`; returns once it is durable (in the log, or in the spool).
    async fn record(&self, event: &Event) -> Result<(), AuditError>;

    /// Records an event forwarded from a spool: one the sink already holds (by id) is not
    /// recorded again. Sinks that cannot tell record it (the default).
    async fn record_once(&self, event: &Event) -> Result<(), AuditError> {
        self.record(event).await
    }

    /// [`AuditSink::record_once`] for several events, oldest first; a sink behind an API
    /// sends them in one call. On an error some may have been recorded: sending them again is
    /// safe, since each is recorded once.
    async fn record_batch_once(&self, events: &[Event]) -> Result<(), AuditError> {
        for e in events {
            self.record_once(e).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl AuditSink for AuditLog {
    async fn record(&self, event: &Event) -> Result<(), AuditError> {
        self.append(event).await.map(|_| ())
    }

    async fn record_once(&self, event: &Event) -> Result<(), AuditError> {
        self.append_once(event).await.map(|_| ())
    }
}

/// The most encoded bytes [`Spool::forward_to`] hands a sink in one batch.
pub const BATCH_BYTES: usize = 1 << 20;

/// A durable local queue of events for the log (its own redb file).
#[derive(Debug, Clone)]
pub struct Spool {
    store: Arc<RedbStore>,
    next: Arc<Mutex<u64>>,
}

fn spool_prefix() -> Result<Prefix, StoreError> {
    Prefix::new("/spool/")
}

fn spool_key(seq: u64) -> Result<Key, StoreError> {
    Key::new(format!("/spool/{seq:020}"))
}

impl Spool {
    /// Opens (or creates) the spool file at `path`.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        let path = path.to_owned();
        let store =
            tokio::task::spawn_blocking(move || RedbStore::open(&path, RedbOptions::default()))
                .await
                .map_err(|e| AuditError::Append(format!("spool open task failed: {e}")))??;
        let mut next = 0;
        let mut request = PageRequest::first(0);
        loop {
            let page = store.range(&spool_prefix()?, request.clone()).await?;
            if let Some(last) = page.items.last() {
                next = seq_of(&last.key).map_or(next, |s| s + 1);
            }
            match page.next {
                Some(k) => request.after = Some(k),
                None => break,
            }
        }
        Ok(Self {
            store: Arc::new(store),
            next: Arc::new(Mutex::new(next)),
        })
    }

    /// Events waiting to be forwarded.
    pub async fn pending(&self) -> Result<usize, AuditError> {
        let mut count = 0;
        let mut request = PageRequest::first(0);
        loop {
            let page = self.store.range(&spool_prefix()?, request.clone()).await?;
            count += page.items.len();
            match page.next {
                Some(k) => request.after = Some(k),
                None => return Ok(count),
            }
        }
    }

    /// Forwards every spooled event to `log`, oldest first, removing each once the log has
    /// it. An event forwarded before (whose removal was lost to a crash) is recognized by its
    /// id and not appended twice. Returns how many events were forwarded.
    pub async fn forward(&self, log: &AuditLog) -> Result<usize, AuditError> {
        self.forward_to(log).await
    }

    /// [`Spool::forward`] to any sink (through [`AuditSink::record_batch_once`], up to 256
    /// events at a time): a remote log behind an API, say.
    pub async fn forward_to(&self, sink: &dyn AuditSink) -> Result<usize, AuditError> {
        let mut forwarded = 0;
        loop {
            let page = self
                .store
                .range(&spool_prefix()?, PageRequest::first(256))
                .await?;
            if page.items.is_empty() {
                return Ok(forwarded);
            }
            // Batches stay well under an API's message limit (4 MiB): at most
            // BATCH_BYTES of encoded events, and never fewer than one event.
            let mut start = 0;
            while start < page.items.len() {
                let mut end = start;
                let mut bytes = 0;
                while let Some(item) = page.items.get(end) {
                    if end > start && bytes + item.value.len() > BATCH_BYTES {
                        break;
                    }
                    bytes += item.value.len();
                    end += 1;
                }
                let batch = page.items.get(start..end).unwrap_or_default();
                let events = batch
                    .iter()
                    .map(|item| Event::decode(&item.value))
                    .collect::<Result<Vec<_>, _>>()?;
                sink.record_batch_once(&events).await?;
                for item in batch {
                    self.store
                        .delete(&item.key, Expect::Revision(item.mod_revision))
                        .await?;
                    forwarded += 1;
                }
                start = end;
            }
        }
    }
}

fn seq_of(key: &Key) -> Option<u64> {
    key.as_str().strip_prefix("/spool/")?.parse().ok()
}

#[async_trait]
impl AuditSink for Spool {
    async fn record(&self, event: &Event) -> Result<(), AuditError> {
        let bytes = event.encode()?;
        let mut next = self.next.lock().await;
        self.store
            .put(&spool_key(*next)?, bytes, Expect::Absent)
            .await?;
        *next += 1;
        Ok(())
    }
}

/// An in-memory sink for tests and tools: keeps every event, in order, and is durable only as
/// long as the process lives. Never use it where an audit trail is required.
#[derive(Debug, Default)]
pub struct MemorySink {
    events: std::sync::Mutex<Vec<Event>>,
}

impl MemorySink {
    /// The events recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl AuditSink for MemorySink {
    async fn record(&self, event: &Event) -> Result<(), AuditError> {
        event.encode()?;
        self.events
            .lock()
            .map_err(|_| AuditError::Closed)?
            .push(event.clone());
        Ok(())
    }
}
