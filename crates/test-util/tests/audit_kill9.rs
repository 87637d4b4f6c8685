//! kill -9 during audit appends, at random moments over 30 cycles: every acknowledged entry
//! is present afterwards with its content, and the log stays consistent with every checkpoint
//! published before the kill.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::rfc9162::{hex, verify_consistency};
use ringfence_audit::{AuditLog, Event, LogOptions, verify_log};
use ringfence_store::{RedbOptions, RedbStore, Store};

const CYCLES: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_appends_keeps_every_acknowledged_entry_and_every_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::generate("crash.test/audit", TYPE_ED25519).unwrap();
    let key_file = dir.path().join("log.key");
    std::fs::write(&key_file, key.to_key_string()).unwrap();
    let data = dir.path().join("data");
    let mut rng = rand::rng();
    let mut acked_total = 0;
    let mut checkpoints_total = 0;
    let mut acks: Vec<(u64, String)> = Vec::new();
    for cycle in 0..CYCLES {
        let (cycle_acks, cps) = run_and_kill(
            &data,
            &key_file,
            cycle,
            Duration::from_millis(rng.random_range(20..200)),
        );
        acked_total += cycle_acks.len();
        checkpoints_total += cps.len();
        acks.extend(cycle_acks);

        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open_in(&data, RedbOptions::default()).unwrap());
        let options = LogOptions {
            origin: key.name().to_owned(),
            ..LogOptions::default()
        };
        let log = AuditLog::open(
            Arc::clone(&store),
            Signer::parse(&key.to_key_string()).unwrap(),
            options,
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopening after kill -9 failed: {e}"));
        let head = log.head();
        for (index, target) in &acks {
            assert!(
                *index < head.size,
                "cycle {cycle}: acknowledged entry {index} is beyond the head {}",
                head.size
            );
            let event = Event::decode(&log.entry(*index).await.unwrap()).unwrap();
            assert_eq!(
                &event.target, target,
                "cycle {cycle}: entry {index} changed"
            );
        }
        for (size, root) in &cps {
            let at = log.root_at(*size).await.unwrap();
            assert_eq!(
                hex(&at),
                *root,
                "cycle {cycle}: the tree no longer matches checkpoint {size}"
            );
            let proof = log.consistency_proof(*size, head.size).await.unwrap();
            verify_consistency(*size, head.size, &proof, &at, &head.root).unwrap();
        }
        verify_log(
            &store,
            "/audit",
            &key.verifier(),
            key.name(),
            None,
            |_, _| {},
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        // Only this cycle's entries need checking again next time.
        acks.clear();
        // Release the file before the next writer opens it: the log's background tasks hold
        // the store until they notice the log is gone.
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&store) > 1 {
            assert!(
                Instant::now() < deadline,
                "the audit log did not release the store"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    eprintln!(
        "{CYCLES} kills, {acked_total} acknowledged appends, {checkpoints_total} checkpoints, all intact"
    );
    assert!(
        acked_total > 1000,
        "too few appends to mean anything: {acked_total}"
    );
    assert!(
        checkpoints_total > CYCLES as usize,
        "checkpoints were published: {checkpoints_total}"
    );
}

type Acks = Vec<(u64, String)>;
type Checkpoints = Vec<(u64, String)>;

fn run_and_kill(data: &Path, key: &Path, cycle: u64, after_ready: Duration) -> (Acks, Checkpoints) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence-audit-writer"))
        .arg(data)
        .arg(key)
        .arg(cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.lock().unwrap().iter().any(|l| l == "READY") {
        assert!(Instant::now() < deadline, "writer never became ready");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("writer exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(after_ready);
    child.kill().unwrap(); // SIGKILL to this PID
    child.wait().unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let mut acks = Vec::new();
    let mut cps = Vec::new();
    for l in lines.iter() {
        let parts: Vec<&str> = l.split(' ').collect();
        match parts.as_slice() {
            ["ACK", index, target] => acks.push((index.parse().unwrap(), (*target).to_owned())),
            ["CP", size, root] => cps.push((size.parse().unwrap(), (*root).to_owned())),
            ["READY"] => {}
            _ => panic!("malformed writer line {l:?}"),
        }
    }
    (acks, cps)
}
