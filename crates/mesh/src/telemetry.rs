//! What the proxy reports: Prometheus counters per (caller, callee, decision, status), every
//! denial to the audit log, a sample of allows.
//!
//! Audit events go through a bounded queue to the sink, so a flood of refused requests slows
//! nothing down; when the queue is full the event is counted in
//! `ringfence_mesh_audit_dropped_total` instead. Refusals anyone on the network can cause
//! without an SVID (a failed handshake, a client outside an ingress allow list, one connection
//! too many) are audited at most [`AUDIT_PER_SOURCE`] times per source address (an IPv6
//! address's /64) and [`AUDIT_ALL_SOURCES`] times in all in each [`AUDIT_WINDOW`]; the rest are counted in `ringfence_mesh_audit_suppressed_total`, and the
//! next event audited for that address says how many were left out (`suppressed_before`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringfence_audit::{AuditSink, Event};
use tokio::sync::mpsc;

/// How a request ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The policy allowed it.
    Allow,
    /// The policy denied it.
    Deny,
    /// The policy would deny it (dry-run) and it went through.
    DryRunDeny,
    /// Refused before any policy (malformed, bad ticket, unreachable).
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::DryRunDeny => "dry-run-deny",
            Self::Refused => "refused",
        }
    }
}

type Key = (String, String, Outcome, u16);

/// Unauthenticated refusals audited per source address in each window.
pub const AUDIT_PER_SOURCE: u32 = 20;
/// Unauthenticated refusals audited from all sources together in each window.
pub const AUDIT_ALL_SOURCES: u32 = 1_000;
/// The window of [`AUDIT_PER_SOURCE`].
pub const AUDIT_WINDOW: Duration = Duration::from_secs(10);
/// Source addresses tracked at once; past this, a new address's events are suppressed until
/// the window turns.
const MAX_SOURCES: usize = 4096;

#[derive(Debug)]
struct Budget {
    since: Instant,
    used: u32,
    suppressed: u64,
}

/// Counters and the audit queue.
#[derive(Debug)]
pub struct Telemetry {
    counts: Mutex<BTreeMap<Key, u64>>,
    handshake_failures: AtomicU64,
    audit: Option<mpsc::Sender<Event>>,
    dropped: AtomicU64,
    sample_every: u64,
    seen_allows: AtomicU64,
    budgets: Mutex<HashMap<IpAddr, Budget>>,
    global_budget: Mutex<(Instant, u32)>,
    suppressed: AtomicU64,
    connections_refused: AtomicU64,
}

/// Audit queue length.
const AUDIT_QUEUE: usize = 4096;

impl Telemetry {
    /// Counters only, no audit.
    pub fn new() -> Self {
        Self {
            counts: Mutex::new(BTreeMap::new()),
            handshake_failures: AtomicU64::new(0),
            audit: None,
            dropped: AtomicU64::new(0),
            sample_every: 0,
            seen_allows: AtomicU64::new(0),
            budgets: Mutex::new(HashMap::new()),
            global_budget: Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }

    /// Counters, and audit events to `sink` (one allow in `sample_every` is recorded; 0 for
    /// none). Spawns the writer on the current runtime.
    pub fn with_audit(sink: Arc<dyn AuditSink>, sample_every: u64) -> Self {
        let (tx, mut rx) = mpsc::channel::<Event>(AUDIT_QUEUE);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if let Err(err) = sink.record(&e).await {
                    tracing::error!(error = %err, action = %e.action, "audit event not recorded");
                }
            }
        });
        Self {
            audit: Some(tx),
            sample_every,
            ..Self::new()
        }
    }

    /// Counts one request.
    pub fn count(&self, caller: &str, callee: &str, outcome: Outcome, status: u16) {
        let mut c = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *c.entry((caller.to_owned(), callee.to_owned(), outcome, status))
            .or_insert(0) += 1;
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a denial (always).
    pub fn audit(&self, event: Event) {
        if let Some(tx) = &self.audit
            && tx.try_send(event).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a refusal caused from `source` without an SVID, within that address's budget
    /// (see the module documentation).
    pub fn audit_from(&self, source: IpAddr, event: Event) {
        // An IPv6 host picks from a /64 at will: the /64 is the source.
        let source = match source {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
            v4 => v4,
        };
        let now = Instant::now();
        {
            let mut global = self
                .global_budget
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if now.duration_since(global.0) >= AUDIT_WINDOW {
                *global = (now, 0);
            }
            if global.1 >= AUDIT_ALL_SOURCES {
                drop(global);
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            global.1 += 1;
        }
        let suppressed_before = {
            let mut budgets = self
                .budgets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if budgets.len() >= MAX_SOURCES && !budgets.contains_key(&source) {
                budgets.retain(|_, b| now.duration_since(b.since) < AUDIT_WINDOW);
            }
            if budgets.len() >= MAX_SOURCES && !budgets.contains_key(&source) {
                drop(budgets);
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let b = budgets.entry(source).or_insert(Budget {
                since: now,
                used: 0,
                suppressed: 0,
            });
            if now.duration_since(b.since) >= AUDIT_WINDOW {
                b.since = now;
                b.used = 0;
            }
            if b.used >= AUDIT_PER_SOURCE {
                b.suppressed += 1;
                drop(budgets);
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            b.used += 1;
            std::mem::take(&mut b.suppressed)
        };
        if suppressed_before > 0 {
            self.audit(event.with_detail("suppressed_before", suppressed_before.to_string()));
        } else {
            self.audit(event);
        }
    }

    /// Counts a connection refused because its address holds too many.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues an allow if it is the sampled one.
    pub fn audit_allow(&self, event: impl FnOnce() -> Event) {
        if self.sample_every == 0 {
            return;
        }
        if self
            .seen_allows
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.sample_every)
        {
            self.audit(event());
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ringfence_mesh_requests_total Requests by caller, callee, decision and status.\n");
        out.push_str("# TYPE ringfence_mesh_requests_total counter\n");
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((caller, callee, outcome, status), n) in counts {
            let _ = writeln!(
                out,
                "ringfence_mesh_requests_total{{caller=\"{}\",callee=\"{}\",decision=\"{}\",code=\"{status}\"}} {n}",
                escape(&caller),
                escape(&callee),
                outcome.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP ringfence_mesh_handshake_failures_total Refused TLS handshakes.\n# TYPE ringfence_mesh_handshake_failures_total counter\nringfence_mesh_handshake_failures_total {}",
            self.handshake_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringfence_mesh_audit_dropped_total Audit events dropped because the queue was full.\n# TYPE ringfence_mesh_audit_dropped_total counter\nringfence_mesh_audit_dropped_total {}",
            self.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringfence_mesh_audit_suppressed_total Unauthenticated refusals not audited because their source address used its budget.\n# TYPE ringfence_mesh_audit_suppressed_total counter\nringfence_mesh_audit_suppressed_total {}",
            self.suppressed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ringfence_mesh_connections_refused_total Connections closed because their source address held the most allowed.\n# TYPE ringfence_mesh_connections_refused_total counter\nringfence_mesh_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
