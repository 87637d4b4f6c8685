//! The audit log on a real Store: appends, checkpoints, proofs checked by the pure verifier,
//! full verification, the spool, and refusal to open with the wrong key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfence_audit::checkpoint::Checkpoint;
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::rfc9162::{leaf_hash, verify_consistency, verify_inclusion};
use ringfence_audit::{
    AuditError, AuditLog, AuditSink, Decision, Event, LogOptions, Spool, verify_log,
};
use ringfence_core::{SpiffeId, UnixTime};
use ringfence_store::{RedbOptions, RedbStore, Store};

fn event(i: u64) -> Event {
    Event::new(
        UnixTime::from_millis(1_700_000_000_000 + i),
        SpiffeId::parse("spiffe://test.example/ringfence/controlplane").unwrap(),
        "test.append",
        format!("target-{i}"),
        Decision::Allow,
        "test",
    )
}

struct Fixture {
    store: Arc<dyn Store>,
    key: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let key = Signer::generate("test.example/audit", TYPE_ED25519)
        .unwrap()
        .to_key_string();
    Fixture {
        store,
        key,
        _dir: dir,
    }
}

fn options(interval_ms: u64) -> LogOptions {
    LogOptions {
        origin: "test.example/audit".into(),
        checkpoint_interval: Duration::from_millis(interval_ms),
        ..LogOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_provable_against_signed_checkpoints() {
    let f = fixture();
    let log = AuditLog::open(
        Arc::clone(&f.store),
        Signer::parse(&f.key).unwrap(),
        options(1000),
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..100u64 {
        let log = log.clone();
        handles.push(tokio::spawn(
            async move { log.append(&event(i)).await.unwrap() },
        ));
    }
    let mut indices: Vec<u64> = Vec::new();
    for h in handles {
        indices.push(h.await.unwrap());
    }
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..100).collect::<Vec<_>>(),
        "every append got a distinct index"
    );
    let small = log.publish_checkpoint().await.unwrap();
    for i in 100..137u64 {
        log.append(&event(i)).await.unwrap();
    }
    let big = log.publish_checkpoint().await.unwrap();
    let vkey = log.verifier();
    let (cp_small, _) =
        Checkpoint::open(small.text.as_bytes(), &vkey, "test.example/audit").unwrap();
    let (cp_big, _) = Checkpoint::open(big.text.as_bytes(), &vkey, "test.example/audit").unwrap();
    assert_eq!((cp_small.size, cp_big.size), (100, 137));

    for index in [0, 1, 63, 64, 99, 100, 136] {
        let entry = log.entry(index).await.unwrap();
        let proof = log.inclusion_proof(index, cp_big.size).await.unwrap();
        verify_inclusion(index, cp_big.size, &leaf_hash(&entry), &proof, &cp_big.root).unwrap();
    }
    let proof = log.consistency_proof(100, 137).await.unwrap();
    verify_consistency(100, 137, &proof, &cp_small.root, &cp_big.root).unwrap();
    assert!(matches!(
        log.inclusion_proof(137, 137).await,
        Err(AuditError::Proof(_))
    ));
    assert!(matches!(
        log.consistency_proof(10, 200).await,
        Err(AuditError::Proof(_))
    ));

    let report = verify_log(
        &f.store,
        "/audit",
        &vkey,
        "test.example/audit",
        None,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(report.size, 137);
    assert_eq!(report.root, cp_big.root);
    assert!(report.checkpoints >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_covers_new_entries_within_the_interval() {
    let f = fixture();
    let log = AuditLog::open(
        Arc::clone(&f.store),
        Signer::parse(&f.key).unwrap(),
        options(1000),
    )
    .await
    .unwrap();
    let _publisher = log.spawn_publisher();
    let mut checkpoints = log.subscribe_checkpoints();
    for round in 0..3u64 {
        let index = log.append(&event(round)).await.unwrap();
        let appended = Instant::now();
        loop {
            if checkpoints
                .borrow_and_update()
                .as_ref()
                .is_some_and(|p| p.size > index)
            {
                break;
            }
            tokio::time::timeout(Duration::from_secs(2), checkpoints.changed())
                .await
                .unwrap()
                .unwrap();
        }
        let waited = appended.elapsed();
        assert!(
            waited <= Duration::from_millis(1000),
            "round {round}: checkpoint came after {waited:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_the_tree_and_refuses_another_key_or_origin() {
    let f = fixture();
    {
        let log = AuditLog::open(
            Arc::clone(&f.store),
            Signer::parse(&f.key).unwrap(),
            options(1000),
        )
        .await
        .unwrap();
        for i in 0..21 {
            log.append(&event(i)).await.unwrap();
        }
        log.publish_checkpoint().await.unwrap();
    }
    let log = AuditLog::open(
        Arc::clone(&f.store),
        Signer::parse(&f.key).unwrap(),
        options(1000),
    )
    .await
    .unwrap();
    assert_eq!(log.head().size, 21);
    assert_eq!(log.append(&event(21)).await.unwrap(), 21);
    assert_eq!(log.latest_checkpoint().unwrap().size, 21);

    let other = Signer::generate("test.example/audit", TYPE_ED25519).unwrap();
    let err = AuditLog::open(Arc::clone(&f.store), other, options(1000))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("made with another origin or key"),
        "{err}"
    );
    let mut wrong_origin = options(1000);
    wrong_origin.origin = "elsewhere/audit".into();
    assert!(
        AuditLog::open(
            Arc::clone(&f.store),
            Signer::parse(&f.key).unwrap(),
            wrong_origin
        )
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_forwards_everything_once() {
    let f = fixture();
    let log = AuditLog::open(
        Arc::clone(&f.store),
        Signer::parse(&f.key).unwrap(),
        options(1000),
    )
    .await
    .unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool.redb");
    let events: Vec<Event> = (0..25).map(event).collect();
    {
        let spool = Spool::open(&spool_path).await.unwrap();
        for e in &events[..20] {
            spool.record(e).await.unwrap();
        }
    }
    // Reopened (an agent restart): the spool still holds every event, and keeps numbering.
    let spool = Spool::open(&spool_path).await.unwrap();
    for e in &events[20..] {
        spool.record(e).await.unwrap();
    }
    assert_eq!(spool.pending().await.unwrap(), 25);
    assert_eq!(spool.forward(&log).await.unwrap(), 25);
    assert_eq!(spool.pending().await.unwrap(), 0);
    assert_eq!(log.head().size, 25);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            log.entry(i as u64).await.unwrap(),
            e.encode().unwrap(),
            "order is kept"
        );
    }
    // A crash after the log took events but before the spool removed them: they are spooled
    // again and forwarded again, and the log does not grow.
    for e in &events[5..10] {
        spool.record(e).await.unwrap();
    }
    assert_eq!(spool.forward(&log).await.unwrap(), 5);
    assert_eq!(log.head().size, 25, "no duplicates");
    // Two copies of one event in a single batch are one entry too.
    let fresh = event(99);
    let (a, b) = tokio::join!(log.append_once(&fresh), log.append_once(&fresh));
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(log.head().size, 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_event_under_a_recorded_id_is_recorded_and_marked_never_dropped() {
    let f = fixture();
    let log = AuditLog::open(
        Arc::clone(&f.store),
        Signer::parse(&f.key).unwrap(),
        options(1000),
    )
    .await
    .unwrap();
    // Someone who learned an event's id sends other content under it first: the real event
    // must still be recorded, not taken for a copy.
    let real = event(1);
    let mut forged = event(2);
    forged.id = real.id.clone();
    let f_index = log.append_once(&forged).await.unwrap();
    let r_index = log.append_once(&real).await.unwrap();
    assert_ne!(f_index, r_index);
    let recorded = Event::decode(&log.entry(r_index).await.unwrap()).unwrap();
    assert_eq!(recorded.target, real.target);
    assert_eq!(
        recorded.details.get("id_conflict").map(String::as_str),
        Some(format!("entry {f_index} was recorded with this id and other content").as_str())
    );
    // Retries of either are still recorded once.
    assert_eq!(log.append_once(&real).await.unwrap(), r_index);
    assert_eq!(log.append_once(&forged).await.unwrap(), f_index);
    assert_eq!(log.head().size, 2);
    // Within one batch as well.
    let a = event(3);
    let mut b = event(4);
    b.id = a.id.clone();
    let (x, y) = tokio::join!(log.append_once(&a), log.append_once(&b));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_ne!(x, y);
    assert_eq!(log.head().size, 4);
    let (x2, y2) = tokio::join!(log.append_once(&a), log.append_once(&b));
    assert_eq!((x2.unwrap(), y2.unwrap()), (x, y));
    assert_eq!(log.head().size, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused_before_the_log() {
    let f = fixture();
    let log = AuditLog::open(
        Arc::clone(&f.store),
        Signer::parse(&f.key).unwrap(),
        options(1000),
    )
    .await
    .unwrap();
    let mut bad = event(1);
    bad.action = "Not An Action".into();
    let err = log.append(&bad).await.unwrap_err();
    assert!(err.to_string().contains("lowercase words"), "{err}");
    assert_eq!(log.head().size, 0);
}

/// A sink that keeps each batch it is handed.
#[derive(Debug, Default)]
struct Batches(std::sync::Mutex<Vec<Vec<Event>>>);

#[async_trait::async_trait]
impl AuditSink for Batches {
    async fn record(&self, event: &Event) -> Result<(), AuditError> {
        self.record_batch_once(std::slice::from_ref(event)).await
    }
    async fn record_batch_once(&self, events: &[Event]) -> Result<(), AuditError> {
        self.0.lock().unwrap().push(events.to_vec());
        Ok(())
    }
}

#[tokio::test]
async fn spool_batches_stay_under_the_byte_cap_and_keep_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.redb")).await.unwrap();
    // 300 events of about 8 KiB: 2.4 MiB in all, more than one batch by count and by size.
    let events: Vec<Event> = (0..300)
        .map(|i| {
            let mut e = event(i);
            e.reason = format!("{i}:{}", "x".repeat(8 * 1024));
            e
        })
        .collect();
    for e in &events {
        spool.record(e).await.unwrap();
    }
    let sink = Batches::default();
    assert_eq!(spool.forward_to(&sink).await.unwrap(), 300);
    let batches = sink.0.lock().unwrap().clone();
    assert!(batches.len() >= 3, "{} batches", batches.len());
    for b in &batches {
        let bytes: usize = b.iter().map(|e| e.encode().unwrap().len()).sum();
        assert!(
            b.len() == 1 || bytes <= ringfence_audit::BATCH_BYTES,
            "{bytes} bytes"
        );
        assert!(b.len() <= 256);
    }
    let got: Vec<String> = batches.into_iter().flatten().map(|e| e.id).collect();
    let want: Vec<String> = events.into_iter().map(|e| e.id).collect();
    assert_eq!(got, want);
    assert_eq!(spool.pending().await.unwrap(), 0);
}
