//! The admission gate against a real embedded Store, the real audit log, a local webhook
//! receiver and a file sink: break-glass audits first and notifies, an unavailable audit log
//! refuses deploys, notifications survive a receiver that is down, tightening a policy flags
//! running jobs and withholds their SVIDs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

#[path = "../../admission/tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ringfence_admission::continuous::Flag;
use ringfence_admission::verdict::{Basis, Request};
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditError, AuditLog, AuditSink, Decision, Event, LogOptions, LogReader};
use ringfence_bab::notify::{self, NotifyConfig, Outbox, SinkConfig};
use ringfence_bab::{Gate, GateError};
use ringfence_core::{ManualClock, SpiffeId};
use ringfence_store::{Key, RedbOptions, RedbStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP receiver: records each POST's headers and body, answers `status`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receiver(status: u16, port: u16) -> Receiver {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let url = format!("http://{}/hooks/bab", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let task = tokio::spawn(async move {
        for _ in 0..20 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        sink.lock()
                            .unwrap()
                            .push((head.to_owned(), body.to_owned()));
                        break;
                    }
                }
            }
            let reply =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            s.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    Receiver { url, got, task }
}

struct Env {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    owners_file: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(&path, RedbOptions::default()).unwrap());
    Env {
        owners_file: path.join("owners.jsonl"),
        dir: path,
        _dir: dir,
        store,
        clock: Arc::new(ManualClock::new(NOW)),
    }
}

fn config(e: &Env, webhook: &str) -> NotifyConfig {
    std::fs::write(e.dir.join("hook.secret"), b"s3cret").unwrap();
    let mut c = NotifyConfig {
        owners_delay: Duration::from_secs(600),
        ..NotifyConfig::default()
    };
    c.sinks.insert(
        "security".into(),
        SinkConfig::Webhook {
            url: webhook.into(),
            secret_file: Some(e.dir.join("hook.secret")),
        },
    );
    c.sinks.insert(
        "payments-oncall".into(),
        SinkConfig::File {
            path: e.owners_file.clone(),
        },
    );
    c
}

async fn log(e: &Env) -> AuditLog {
    let signer = Signer::generate("ringfence.test/audit", TYPE_ED25519).unwrap();
    AuditLog::open(
        Arc::clone(&e.store),
        signer,
        LogOptions {
            origin: "ringfence.test/audit".into(),
            ..LogOptions::default()
        },
    )
    .await
    .unwrap()
}

fn actor() -> SpiffeId {
    SpiffeId::parse("spiffe://acme.test/ringfence/admission").unwrap()
}

/// Records into the log, and checks at that moment that the deployment is not yet recorded:
/// the audit entry comes first.
#[derive(Debug)]
struct FirstSink {
    log: AuditLog,
    store: Arc<dyn Store>,
    seen_before_deploy: Arc<Mutex<Vec<bool>>>,
}

#[async_trait]
impl AuditSink for FirstSink {
    async fn record(&self, event: &Event) -> Result<(), AuditError> {
        if event.action == "bab.admit" {
            let key = Key::new("/bab/deployments/payments/web/production/web-1").unwrap();
            let absent = self.store.get(&key).await.unwrap().is_none();
            self.seen_before_deploy.lock().unwrap().push(absent);
        }
        self.log.record(event).await
    }
}

#[derive(Debug)]
struct DownSink;

#[async_trait]
impl AuditSink for DownSink {
    async fn record(&self, _: &Event) -> Result<(), AuditError> {
        Err(AuditError::Corrupt(
            "the audit store is unreachable (test)".into(),
        ))
    }
}

async fn audit_events(e: &Env) -> Vec<Event> {
    let reader = LogReader::open(Arc::clone(&e.store), &LogOptions::default().prefix)
        .await
        .unwrap();
    reader
        .entries(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, b)| Event::decode(&b).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_audits_first_then_tells_security_at_once_and_owners_after_the_delay() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(200, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(FirstSink {
        log: log(&e).await,
        store: Arc::clone(&e.store),
        seen_before_deploy: Arc::clone(&seen),
    });
    let gate = Gate::new(
        Arc::clone(&e.store),
        sink,
        outbox.clone(),
        e.clock.clone(),
        actor(),
    );
    gate.apply_policy(
        &f.policy_yaml("enforce", "  notify: {owners: payments-oncall}"),
        "carol",
    )
    .await
    .unwrap();

    // Without break-glass an unsigned job is refused...
    let v = gate
        .admit(&f.job(), &[], &Request::Normal, "alice")
        .await
        .unwrap();
    assert!(!v.admit);
    // ...with it, admitted.
    let req = Request::BreakGlass {
        justification: "INC-4411: card payments failing, hotfix".into(),
        by: "alice".into(),
    };
    let v = gate.admit(&f.job(), &[], &req, "alice").await.unwrap();
    assert_eq!((v.admit, v.basis), (true, Basis::BreakGlass));
    assert_eq!(
        *seen.lock().unwrap(),
        [true, true],
        "the audit entry was written before the deployment"
    );

    let events = audit_events(&e).await;
    let bg = events
        .iter()
        .find(|x| x.decision == Decision::BreakGlass)
        .expect("break-glass audited");
    assert_eq!(bg.target, "payments/web/production/web-1");
    assert_eq!(
        bg.details["justification"],
        "INC-4411: card payments failing, hotfix"
    );
    assert!(bg.reason.contains("[provenance]"), "{}", bg.reason);
    assert!(
        events
            .iter()
            .any(|x| x.decision == Decision::Deny && x.action == "bab.admit")
    );

    // The security team was told at once, signed.
    let got = hook.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (head, body) = &got[0];
    assert!(
        head.contains("X-Ringfence-Event: bab.break-glass"),
        "{head}"
    );
    assert!(
        head.contains(&format!(
            "X-Ringfence-Signature: {}",
            notify::signature(b"s3cret", body.as_bytes())
        )),
        "{head}"
    );
    let msg: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(msg["message"]["auditEventId"], bg.id.as_str());
    assert_eq!(
        msg["message"]["justification"],
        "INC-4411: card payments failing, hotfix"
    );
    // The owners hear after the configured delay.
    assert!(!e.owners_file.exists());
    assert_eq!(outbox.pending().unwrap().len(), 1);
    e.clock.advance(Duration::from_secs(601));
    let pass = outbox.deliver_due(e.clock.as_ref()).await.unwrap();
    assert_eq!(pass.delivered, 1);
    let line = std::fs::read_to_string(&e.owners_file).unwrap();
    assert!(
        line.contains("\"kind\":\"bab.break-glass\"") && line.contains("INC-4411"),
        "{line}"
    );

    // Continuous verification keeps it flagged (and alerts the owners), without cutting it off.
    let statuses = gate.reverify().await.unwrap();
    assert!(
        statuses[0]
            .flags
            .iter()
            .any(|x| matches!(x, Flag::BreakGlass { .. }))
    );
    assert!(!statuses[0].revoke_svid);
    assert!(
        std::fs::read_to_string(&e.owners_file)
            .unwrap()
            .contains("bab.flagged")
    );
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_audit_log_cannot_record_nothing_is_admitted_not_even_break_glass() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(200, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let good = Gate::new(
        Arc::clone(&e.store),
        Arc::new(log(&e).await),
        outbox.clone(),
        e.clock.clone(),
        actor(),
    );
    good.apply_policy(&f.policy_yaml("enforce", ""), "carol")
        .await
        .unwrap();
    let gate = Gate::new(
        Arc::clone(&e.store),
        Arc::new(DownSink),
        outbox,
        e.clock.clone(),
        actor(),
    );
    for req in [
        Request::Normal,
        Request::BreakGlass {
            justification: "INC-1: outage, need hotfix".into(),
            by: "alice".into(),
        },
    ] {
        let atts = if req == Request::Normal {
            f.attestations()
        } else {
            vec![]
        };
        let err = gate
            .admit(&f.job(), &atts, &req, "alice")
            .await
            .unwrap_err();
        assert!(matches!(err, GateError::AuditUnavailable(_)));
        assert!(
            err.to_string()
                .contains("the audit log could not record this deploy, so it is refused"),
            "{err}"
        );
    }
    assert!(gate.deployments().await.unwrap().is_empty());
    assert!(
        hook.got.lock().unwrap().is_empty(),
        "nobody is told of a deploy that did not happen"
    );
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_wait_in_the_outbox_while_the_receiver_is_down() {
    let f = Fixture::new();
    let e = env();
    // Reserve a port, then close it: the receiver is down.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hooks/bab");
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &url)).unwrap();
    let gate = Gate::new(
        Arc::clone(&e.store),
        Arc::new(log(&e).await),
        outbox.clone(),
        e.clock.clone(),
        actor(),
    );
    gate.apply_policy(&f.policy_yaml("enforce", ""), "carol")
        .await
        .unwrap();
    let req = Request::BreakGlass {
        justification: "INC-7: database failover".into(),
        by: "bob".into(),
    };
    assert!(
        gate.admit(&f.job(), &[], &req, "bob").await.unwrap().admit,
        "a down receiver does not block break-glass"
    );
    let pending = outbox.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 1);
    assert!(
        pending[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("connect 127.0.0.1"),
        "{:?}",
        pending[0].last_error
    );
    // Not retried before its backoff...
    assert_eq!(
        outbox.deliver_due(e.clock.as_ref()).await.unwrap().waiting,
        1
    );
    // ...a fresh outbox (a restarted process) still has it, and delivers once the receiver is up.
    let hook = receiver(200, port).await;
    e.clock.advance(Duration::from_secs(3));
    let reopened = Outbox::open(&e.dir.join("outbox"), config(&e, &url)).unwrap();
    assert_eq!(
        reopened
            .deliver_due(e.clock.as_ref())
            .await
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(hook.got.lock().unwrap().len(), 1);
    assert!(reopened.pending().unwrap().is_empty());
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_is_retried_and_an_unknown_sink_is_an_error() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(503, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let m = outbox
        .enqueue("security", "test", serde_json::json!({"x": 1}), NOW)
        .unwrap();
    let pass = outbox.deliver_due(e.clock.as_ref()).await.unwrap();
    assert_eq!(pass.failed, 1);
    let p = outbox.pending().unwrap();
    assert_eq!(p[0].id, m.id);
    assert!(
        p[0].last_error
            .as_deref()
            .unwrap()
            .contains("answered HTTP 503")
    );
    let err = outbox
        .enqueue("secrity", "test", serde_json::json!({}), NOW)
        .unwrap_err();
    assert!(
        err.to_string().contains("\"secrity\" is not configured"),
        "{err}"
    );
    let _ = f;
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_a_policy_flags_the_running_job_audits_it_and_withholds_its_svid() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(200, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let gate = Gate::new(
        Arc::clone(&e.store),
        Arc::new(log(&e).await),
        outbox,
        e.clock.clone(),
        actor(),
    );
    gate.apply_policy(
        &f.policy_yaml("enforce", "  notify: {owners: payments-oncall}"),
        "carol",
    )
    .await
    .unwrap();
    let v = gate
        .admit(&f.job(), &f.attestations(), &Request::Normal, "alice")
        .await
        .unwrap();
    assert_eq!(v.basis, Basis::Compliant);
    assert!(gate.revoked().await.unwrap().is_empty());
    let tighter = f
        .policy_yaml("enforce", "  notify: {owners: payments-oncall}")
        .replace("minReviewers: 1", "minReviewers: 2");
    let applied = gate.apply_policy(&tighter, "carol").await.unwrap();
    assert!(!applied.created);
    assert!(applied.statuses[0].flags.contains(&Flag::NonCompliant));
    let revoked = gate.revoked().await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].job.name, "web-1");
    let events = audit_events(&e).await;
    let flagged = events
        .iter()
        .find(|x| x.action == "bab.reverify")
        .expect("flag audited");
    assert_eq!(flagged.decision, Decision::Deny);
    assert_eq!(flagged.details["revoke_svid"], "true");
    assert!(
        std::fs::read_to_string(&e.owners_file)
            .unwrap()
            .contains("job flagged by continuous verification")
    );
    // A second pass with nothing new does not alert again.
    let before = std::fs::read_to_string(&e.owners_file)
        .unwrap()
        .lines()
        .count();
    gate.reverify().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&e.owners_file)
            .unwrap()
            .lines()
            .count(),
        before
    );
    // The report shows it.
    let report = gate.report().await.unwrap();
    assert_eq!(
        (
            report.services[0].non_compliant,
            report.services[0].svid_revoked
        ),
        (1, 1)
    );
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_admits_and_the_audit_log_records_the_would_deny() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(200, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let gate = Gate::new(
        Arc::clone(&e.store),
        Arc::new(log(&e).await),
        outbox,
        e.clock.clone(),
        actor(),
    );
    gate.apply_policy(&f.policy_yaml("dry-run", ""), "carol")
        .await
        .unwrap();
    let v = gate
        .admit(&f.job(), &[f.review()], &Request::Normal, "alice")
        .await
        .unwrap();
    assert_eq!((v.admit, v.basis), (true, Basis::DryRun));
    let events = audit_events(&e).await;
    let wd = events
        .iter()
        .find(|x| x.decision == Decision::WouldDeny)
        .expect("would-deny audited");
    assert!(
        wd.reason
            .starts_with("dry-run: [provenance] no SLSA provenance"),
        "{}",
        wd.reason
    );
    let report = gate.report().await.unwrap();
    assert_eq!(report.services[0].dry_run_would_deny, 1);
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_never_store_two_policies_for_one_service() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(200, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let gate = Gate::new(
        Arc::clone(&e.store),
        Arc::new(log(&e).await),
        outbox,
        e.clock.clone(),
        actor(),
    );
    for round in 0..5 {
        let a = f
            .policy_yaml("enforce", "")
            .replace("name: web-production", &format!("name: a{round}"));
        let b = f
            .policy_yaml("dry-run", "")
            .replace("name: web-production", &format!("name: b{round}"));
        let (ra, rb) = tokio::join!(
            gate.apply_policy(&a, "carol"),
            gate.apply_policy(&b, "dave")
        );
        assert!(
            ra.is_ok() != rb.is_ok(),
            "exactly one of two overlapping policies is stored (round {round})"
        );
        let err = ra.err().or(rb.err()).unwrap().to_string();
        assert!(err.contains("both govern payments/web"), "{err}");
        assert_eq!(gate.policies().await.unwrap().policies().len(), 1);
        let name = gate.policies().await.unwrap().policies()[0]
            .name()
            .to_owned();
        gate.delete_policy(&name, "carol").await.unwrap();
    }
    hook.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reverifies_when_attestations_age_out_and_when_a_policy_changes() {
    let f = Fixture::new();
    let e = env();
    let hook = receiver(200, 0).await;
    let outbox = Outbox::open(&e.dir.join("outbox"), config(&e, &hook.url)).unwrap();
    let gate = Gate::new(
        Arc::clone(&e.store),
        Arc::new(log(&e).await),
        outbox,
        e.clock.clone(),
        actor(),
    );
    gate.apply_policy(&f.policy_yaml("enforce", ""), "carol")
        .await
        .unwrap();
    assert!(
        gate.admit(&f.job(), &f.attestations(), &Request::Normal, "alice")
            .await
            .unwrap()
            .admit
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let watcher = {
        let gate = gate.clone();
        tokio::spawn(async move { gate.watch(Duration::from_secs(24 * 3600), rx).await })
    };
    let wait_for = |want: usize| {
        let gate = gate.clone();
        async move {
            for _ in 0..50 {
                if gate.revoked().await.unwrap().len() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(wait_for(0).await);
    // The review ages out (maxAge 30 days): the next tick's pass flags the job, no command needed.
    e.clock.advance(Duration::from_secs(31 * 86400));
    assert!(
        wait_for(1).await,
        "watch did not re-verify when the attestation aged out"
    );
    // A policy change made elsewhere (a raw Store write, as another replica would) triggers a
    // pass at once: relaxing maxAge clears the flag.
    let relaxed = f
        .policy_yaml("enforce", "")
        .replace("maxAge: 30days", "maxAge: 400days");
    e.store
        .put(
            &Key::new("/bab/policies/web-production").unwrap(),
            relaxed.into_bytes(),
            ringfence_store::Expect::Any,
        )
        .await
        .unwrap();
    assert!(
        wait_for(0).await,
        "watch did not re-verify after the policy changed"
    );
    tx.send(true).unwrap();
    watcher.await.unwrap().unwrap();
    hook.task.abort();
}
