//! kill -9 of a writing process, at random moments, over 50 cycles: no acknowledged write is
//! lost and no transaction is ever half applied (redb backend).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use ringfence_store::{Key, Prefix, RedbOptions, RedbStore, Store};
use ringfence_test_util::conformance::read_all;

const CYCLES: u64 = 50;

#[derive(Debug, Clone, PartialEq)]
struct Ack {
    kind: String,
    task: u64,
    index: u64,
    revision: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writes_loses_no_acknowledged_write_and_no_txn_is_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut rng = rand::rng();
    let mut all_acks: Vec<(u64, Ack)> = Vec::new();
    let mut cycles_with_acks = 0;
    for cycle in 0..CYCLES {
        let acks = run_and_kill(
            &path,
            cycle,
            Duration::from_millis(rng.random_range(5..120)),
        );
        if !acks.is_empty() {
            cycles_with_acks += 1;
        }
        all_acks.extend(acks.into_iter().map(|a| (cycle, a)));

        // Reopen after the crash and check this cycle's acknowledged writes (every cycle's
        // again after the last one).
        let t = Instant::now();
        let store = RedbStore::open(&path, RedbOptions::default())
            .unwrap_or_else(|e| panic!("cycle {cycle}: reopening after kill -9 failed: {e}"));
        let opened = t.elapsed();
        let this_cycle: Vec<_> = all_acks
            .iter()
            .filter(|(c, _)| *c == cycle)
            .cloned()
            .collect();
        let check = if cycle + 1 == CYCLES {
            &all_acks
        } else {
            &this_cycle
        };
        verify(&store, cycle, check).await;
        eprintln!(
            "cycle {cycle}: {} acknowledged writes, reopened in {opened:?}, verified in {:?}",
            this_cycle.len(),
            t.elapsed()
        );
        drop(store);
    }
    assert!(
        cycles_with_acks >= CYCLES * 8 / 10,
        "most cycles must be killed mid-write, not before the first write ({cycles_with_acks}/{CYCLES})"
    );
    assert!(
        all_acks.len() > 500,
        "too few writes to mean anything: {}",
        all_acks.len()
    );
}

fn run_and_kill(path: &std::path::Path, cycle: u64, after_ready: Duration) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringfence-store-writer"))
        .arg(path)
        .arg(cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let ready = Arc::new(Mutex::new(None::<Instant>));
    let reader = {
        let (lines, ready) = (Arc::clone(&lines), Arc::clone(&ready));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "READY" {
                    *ready.lock().unwrap() = Some(Instant::now());
                } else {
                    lines.lock().unwrap().push(line);
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = *ready.lock().unwrap()
            && at.elapsed() >= after_ready
        {
            break;
        }
        assert!(Instant::now() < deadline, "writer never became ready");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("writer exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL to this PID
    child.wait().unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    lines
        .iter()
        .map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            assert_eq!(parts.len(), 5, "malformed writer line {l:?}");
            Ack {
                kind: parts[1].to_owned(),
                task: parts[2].parse().unwrap(),
                index: parts[3].parse().unwrap(),
                revision: parts[4].parse().unwrap(),
            }
        })
        .collect()
}

async fn verify(store: &RedbStore, cycle: u64, acks: &[(u64, Ack)]) {
    let revision = store.revision().await.unwrap();
    for (c, ack) in acks {
        let value = format!("c{c}-{}-{}", ack.task, ack.index).into_bytes();
        let keys: Vec<String> = if ack.kind == "put" {
            vec![format!("/w/c{c}/p/{}/{}", ack.task, ack.index)]
        } else {
            ["a", "b", "c"]
                .iter()
                .map(|p| format!("/w/c{c}/t/{}/{}/{p}", ack.task, ack.index))
                .collect()
        };
        for k in keys {
            let got = store.get(&Key::new(k.clone()).unwrap()).await.unwrap();
            let got = got.unwrap_or_else(|| {
                panic!(
                    "cycle {cycle}: acknowledged write {k} (rev {}) is lost",
                    ack.revision
                )
            });
            assert_eq!(got.value, value, "cycle {cycle}: {k} has the wrong value");
            assert_eq!(
                got.mod_revision, ack.revision,
                "cycle {cycle}: {k} has the wrong revision"
            );
        }
        assert!(
            ack.revision <= revision,
            "store revision {revision} is behind acknowledged {}",
            ack.revision
        );
    }
    // Every transaction of this cycle, acknowledged or not, is whole or absent.
    let txns = read_all(store, &Prefix::new(format!("/w/c{cycle}/t/")).unwrap()).await;
    let mut parts: BTreeMap<String, usize> = BTreeMap::new();
    for k in txns.keys() {
        let (txn, _) = k.rsplit_once('/').unwrap();
        *parts.entry(txn.to_owned()).or_default() += 1;
    }
    for (txn, n) in parts {
        assert_eq!(
            n, 3,
            "cycle {cycle}: transaction {txn} is half applied ({n} of 3 keys)"
        );
    }
}
