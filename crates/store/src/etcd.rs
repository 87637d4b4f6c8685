//! The etcd v3 backend: the same model as the embedded store, on an etcd cluster.
//!
//! Keys map one to one; revisions are etcd's. Reads and the initial connection are retried a
//! bounded number of times with backoff and then fail with [`StoreError::Unavailable`]. Writes
//! are never retried here: after a failure their outcome is unknown, and only the caller (who
//! knows whether the write is idempotent) can decide to repeat it.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::StoreError;
use crate::key::{Key, Prefix};
use crate::model::{
    Committed, EventKind, Expect, Limits, Op, Page, PageRequest, Revision, Txn, Versioned,
    WatchEvent,
};
use crate::{Store, WatchStream};

/// Connection settings for [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Time allowed to establish a connection to one member.
    pub connect_timeout: Duration,
    /// Time allowed for one request.
    pub request_timeout: Duration,
    /// Attempts for the initial connection and for each read before giving up; a watch
    /// survives four times as many consecutive failed resumes.
    pub attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// Size limits.
    pub limits: Limits,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(200),
            limits: Limits::default(),
        }
    }
}

/// The etcd Store backend. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`host:port` or `http://host:port`) and checks it
    /// answers, retrying with backoff up to `options.attempts` times.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidUrl {
                url: String::new(),
                reason: "no etcd endpoints given".into(),
            });
        }
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let mut last = String::new();
        let attempts = options.attempts.max(1);
        for attempt in 1..=attempts {
            match Client::connect(&urls, Some(connect_options.clone())).await {
                Ok(client) => {
                    let store = Self {
                        client,
                        endpoints: urls.clone(),
                        options: options.clone(),
                    };
                    // A connection is lazy: prove the cluster answers before returning.
                    match store.client.kv_client().get("/", None).await {
                        Ok(_) => return Ok(store),
                        Err(e) => last = describe(&e),
                    }
                }
                Err(e) => last = describe(&e),
            }
            tracing::warn!(attempt, attempts, error = %last, "etcd not reachable yet");
            if attempt < attempts {
                tokio::time::sleep(backoff(&options, attempt)).await;
            }
        }
        Err(StoreError::Unavailable {
            backend: "etcd",
            endpoints: urls.join(","),
            attempts,
            reason: format!(
                "{last}; check that etcd is running and that --store lists its client URLs"
            ),
        })
    }

    fn unavailable(&self, attempts: u32, e: &etcd_client::Error) -> StoreError {
        StoreError::Unavailable {
            backend: "etcd",
            endpoints: self.endpoints.join(","),
            attempts,
            reason: describe(e),
        }
    }

    /// Runs a read with bounded retries on transient failures.
    async fn read_with_retry<T, F, Fut>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = self.options.attempts.max(1);
        let mut attempt = 1;
        loop {
            match f(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt < attempts => {
                    tokio::time::sleep(backoff(&self.options, attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.map_error(attempt, &e)),
            }
        }
    }

    /// Sends a write. Retried only when the request provably never left this process (the
    /// connection to the chosen member was refused), so a retry can never apply it twice.
    async fn send_txn(&self, request: EtcdTxn) -> Result<etcd_client::TxnResponse, StoreError> {
        let attempts = self.options.attempts.max(1);
        let mut attempt = 1;
        loop {
            match self.client.clone().txn(request.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(e) if never_sent(&e) && attempt < attempts => {
                    // The balancer moves to the next member; a short pause avoids spinning
                    // while every member is down.
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.map_error(attempt, &e)),
            }
        }
    }

    fn map_error(&self, attempts: u32, e: &etcd_client::Error) -> StoreError {
        if is_transient(e) {
            return self.unavailable(attempts, e);
        }
        if let etcd_client::Error::GRpcStatus(status) = e
            && status.message().contains("compacted")
        {
            return StoreError::Compacted {
                requested: 0,
                oldest: 0,
            };
        }
        StoreError::Backend {
            backend: "etcd",
            reason: describe(e),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        let k = key.as_str().to_owned();
        let resp = self
            .read_with_retry(|mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        resp.kvs().first().map(versioned).transpose()
    }

    async fn put(&self, key: &Key, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        if expect != Expect::Any {
            let txn = Txn::new()
                .compare(crate::model::Compare::new(key.clone(), expect))
                .put(key.clone(), value);
            return Ok(self.txn(txn).await?.revision);
        }
        // An unconditional put needs no transaction: one plain etcd put.
        Txn::new()
            .put(key.clone(), value.clone())
            .check(&self.options.limits)?;
        let attempts = self.options.attempts.max(1);
        let mut attempt = 1;
        loop {
            match self
                .client
                .clone()
                .put(key.as_str(), value.clone(), None)
                .await
            {
                Ok(resp) => return header_revision(resp.header()),
                Err(e) if never_sent(&e) && attempt < attempts => {
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.map_error(attempt, &e)),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<Committed, StoreError> {
        txn.check(&self.options.limits)?;
        let compares: Vec<EtcdCompare> = txn.compares.iter().map(to_etcd_compare).collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key.as_str(), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        // On failure, read back the compared keys so the conflict names the key and its actual
        // revision, as the embedded store does.
        let on_failure: Vec<TxnOp> = txn
            .compares
            .iter()
            .map(|c| TxnOp::get(c.key.as_str(), None))
            .collect();
        let request = EtcdTxn::new()
            .when(compares)
            .and_then(ops)
            .or_else(on_failure);
        let resp = self.send_txn(request).await?;
        let revision = header_revision(resp.header())?;
        if resp.succeeded() {
            let changed = txn.ops.iter().any(|op| matches!(op, Op::Put { .. }))
                || resp
                    .op_responses()
                    .iter()
                    .any(|r| matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0));
            return Ok(Committed { revision, changed });
        }
        let responses = resp.op_responses();
        for (cmp, response) in txn.compares.iter().zip(responses.iter()) {
            let actual = match response {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| to_revision(kv.mod_revision())),
                _ => None,
            };
            if !cmp.expect.holds(actual) {
                return Err(StoreError::Conflict {
                    key: cmp.key.to_string(),
                    expected: cmp.expect,
                    actual,
                });
            }
        }
        // The compared keys changed again between the failed transaction and the read-back;
        // report the first comparison.
        match txn.compares.first() {
            Some(cmp) => Err(StoreError::Conflict {
                key: cmp.key.to_string(),
                expected: cmp.expect,
                actual: None,
            }),
            None => Err(StoreError::Backend {
                backend: "etcd",
                reason: "transaction without comparisons reported failure".into(),
            }),
        }
    }

    async fn range(&self, prefix: &Prefix, page: PageRequest) -> Result<Page, StoreError> {
        let limit = page.effective_limit(&self.options.limits);
        let start = match &page.after {
            // The smallest key strictly after `after`.
            Some(after) if after.as_str() >= prefix.as_str() => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.as_str().as_bytes().to_vec(),
        };
        let end = prefix.range_end();
        let wanted = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let resp = self
            .read_with_retry(|mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    c.get(
                        start,
                        Some(GetOptions::new().with_range(end).with_limit(wanted)),
                    )
                    .await
                }
            })
            .await?;
        let revision = header_revision(resp.header())?;
        let mut items = resp
            .kvs()
            .iter()
            .map(versioned)
            .collect::<Result<Vec<_>, _>>()?;
        let more = items.len() > limit;
        items.truncate(limit);
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

    async fn watch(&self, prefix: &Prefix, from: Revision) -> Result<WatchStream, StoreError> {
        let (tx, rx) = mpsc::channel(1024);
        let store = self.clone();
        let prefix = prefix.clone();
        let from = if from == 0 {
            self.revision().await? + 1
        } else {
            from
        };
        tokio::spawn(async move {
            if let Err(e) = store.follow(&prefix, from, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .read_with_retry(|mut c| async move {
                c.get("/", Some(GetOptions::new().with_count_only())).await
            })
            .await?;
        header_revision(resp.header())
    }

    fn limits(&self) -> Limits {
        self.options.limits
    }

    fn describe(&self) -> String {
        format!("etcd cluster {}", self.endpoints.join(","))
    }
}

impl EtcdStore {
    /// How many consecutive failed resumes a watch survives before it reports the store
    /// unavailable.
    fn resume_budget(&self) -> u32 {
        self.options.attempts.max(1).saturating_mul(4)
    }

    /// Follows an etcd watch, re-creating it from the next revision after a disconnect, so
    /// the consumer sees every event exactly once and in order.
    async fn follow(
        &self,
        prefix: &Prefix,
        mut next: Revision,
        tx: &mpsc::Sender<Result<WatchEvent, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut failures = 0u32;
        loop {
            let options = WatchOptions::new()
                .with_range(prefix.range_end())
                .with_start_revision(i64::try_from(next).unwrap_or(i64::MAX));
            let mut stream = match self
                .client
                .clone()
                .watch(prefix.as_str(), Some(options))
                .await
            {
                Ok(s) => s,
                // Re-creating a watch after a member died can be refused several times in a
                // row: the balanced channel keeps trying the dead member until it notices.
                // So re-creation gets the same budget as a stream that breaks (about 20 s
                // with the default backoff), enough to ride out an election.
                Err(e) if is_transient(&e) && failures < self.resume_budget() => {
                    failures += 1;
                    tracing::debug!(error = %e, next, failures, "etcd watch not re-created yet");
                    tokio::time::sleep(backoff(&self.options, failures.min(4))).await;
                    continue;
                }
                Err(e) => return Err(self.map_error(failures + 1, &e)),
            };
            loop {
                let message = tokio::select! {
                    () = tx.closed() => return Ok(()),
                    m = stream.message() => m,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    // The stream ended or broke: resume from `next` on a new watch.
                    Ok(None) => break,
                    Err(e)
                        if is_transient(&e) || matches!(e, etcd_client::Error::GRpcStatus(_)) =>
                    {
                        tracing::debug!(error = %e, next, "etcd watch interrupted; resuming");
                        break;
                    }
                    Err(e) => return Err(self.map_error(1, &e)),
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        return Err(StoreError::Compacted {
                            requested: next,
                            oldest: to_revision(resp.compact_revision()),
                        });
                    }
                    return Err(StoreError::Backend {
                        backend: "etcd",
                        reason: format!("watch canceled: {}", resp.cancel_reason()),
                    });
                }
                failures = 0;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = stored_key(kv)?;
                    let revision = to_revision(kv.mod_revision());
                    let kind = match ev.event_type() {
                        EventType::Put => EventKind::Put {
                            value: kv.value().to_vec(),
                            create_revision: to_revision(kv.create_revision()),
                            version: to_revision(kv.version()),
                        },
                        EventType::Delete => EventKind::Delete,
                    };
                    if revision < next {
                        continue;
                    }
                    if tx
                        .send(Ok(WatchEvent {
                            revision,
                            key,
                            kind,
                        }))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
                    next = to_revision(last.mod_revision()) + 1;
                }
            }
            failures += 1;
            if failures > self.resume_budget() {
                return Err(StoreError::Unavailable {
                    backend: "etcd",
                    endpoints: self.endpoints.join(","),
                    attempts: failures,
                    reason: "the watch kept disconnecting".into(),
                });
            }
            tokio::time::sleep(backoff(&self.options, failures.min(4))).await;
        }
    }
}

fn to_etcd_compare(c: &crate::model::Compare) -> EtcdCompare {
    let key = c.key.as_str();
    match c.expect {
        // mod_revision > 0 always holds for an existing key and never for an absent one, so
        // `Any` becomes "absent or present" via version >= 0.
        Expect::Any => EtcdCompare::version(key, CompareOp::Greater, -1),
        Expect::Absent => EtcdCompare::version(key, CompareOp::Equal, 0),
        Expect::Exists => EtcdCompare::version(key, CompareOp::Greater, 0),
        Expect::Revision(r) => {
            EtcdCompare::mod_revision(key, CompareOp::Equal, i64::try_from(r).unwrap_or(i64::MAX))
        }
    }
}

fn versioned(kv: &KeyValue) -> Result<Versioned, StoreError> {
    Ok(Versioned {
        key: stored_key(kv)?,
        value: kv.value().to_vec(),
        create_revision: to_revision(kv.create_revision()),
        mod_revision: to_revision(kv.mod_revision()),
        version: to_revision(kv.version()),
    })
}

fn stored_key(kv: &KeyValue) -> Result<Key, StoreError> {
    let raw = String::from_utf8_lossy(kv.key()).into_owned();
    Key::new(raw).map_err(|e| StoreError::Backend {
        backend: "etcd",
        reason: format!("the cluster holds a key this store never writes: {e}"),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| to_revision(h.revision()))
        .ok_or_else(|| StoreError::Backend {
            backend: "etcd",
            reason: "response without a header".into(),
        })
}

fn to_revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) || s.message().contains("leader")
        }
        _ => false,
    }
}

/// A one-line description of an etcd client error: the gRPC message and the innermost cause
/// (for example `tcp connect error: Connection refused (os error 111)`), without the nested
/// debug dumps of the transport layers.
fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut root: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(next) = root.and_then(std::error::Error::source) {
        root = Some(next);
    }
    match root {
        Some(cause) if !status.message().is_empty() => format!("{}: {cause}", status.message()),
        Some(cause) => cause.to_string(),
        None if status.message().is_empty() => format!("{:?}", status.code()),
        None => status.message().to_owned(),
    }
}

/// True when the failure happened before the request was sent: the TCP connection to the
/// member was refused.
fn never_sent(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    status.message() == "tcp connect error"
}

fn backoff(options: &EtcdOptions, attempt: u32) -> Duration {
    options
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(6))
}
