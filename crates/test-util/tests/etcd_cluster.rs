//! The etcd backend on a real 3-member cluster: killing a member (the leader included) during
//! writes loses no acknowledged write, the store keeps serving on 2 of 3 members, and an open
//! watch carries on without losing or repeating events. An unreachable cluster is retried a
//! bounded number of times and then reported clearly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ringfence_store::{EtcdOptions, EtcdStore, Expect, Key, Prefix, Store, StoreError};
use ringfence_test_util::etcd::EtcdCluster;
use ringfence_test_util::free_port;
use tokio::sync::Mutex;

fn options() -> EtcdOptions {
    EtcdOptions {
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_during_writes_loses_no_acknowledged_write() {
    kill_member_during_writes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_follower_during_writes_loses_no_acknowledged_write() {
    kill_member_during_writes(false).await;
}

async fn kill_member_during_writes(kill_leader: bool) {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EtcdStore::connect(&cluster.all_endpoints(), options())
            .await
            .unwrap(),
    );
    let prefix = Prefix::new("/failover/").unwrap();
    let watch = store.watch(&prefix, 0).await.unwrap();

    let acked = Arc::new(Mutex::new(Vec::<(String, u64, Instant)>::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for task in 0..8 {
        let (store, acked, failures, stop) = (
            Arc::clone(&store),
            Arc::clone(&acked),
            Arc::clone(&failures),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("/failover/{task}/{i}");
                i += 1;
                match store
                    .put(
                        &Key::new(k.clone()).unwrap(),
                        k.clone().into_bytes(),
                        Expect::Absent,
                    )
                    .await
                {
                    Ok(rev) => acked.lock().await.push((k, rev, Instant::now())),
                    // Outcome unknown during the election: not acknowledged, so not counted.
                    Err(e @ (StoreError::Unavailable { .. } | StoreError::Backend { .. })) => {
                        if failures.fetch_add(1, Ordering::SeqCst) % 100 == 0 {
                            eprintln!("write failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = cluster.leader().await.unwrap();
    let victim = if kill_leader {
        leader
    } else {
        (leader + 1) % 3
    };
    let killed_at = Instant::now();
    cluster.kill(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().await.clone();
    let before = acked.iter().filter(|(_, _, t)| *t < killed_at).count();
    let after = acked.len() - before;
    eprintln!(
        "killed member {victim} (leader: {kill_leader}): {before} writes acknowledged before, {after} after, {} failed",
        failures.load(Ordering::SeqCst)
    );
    assert!(before > 50, "too few writes before the kill: {before}");
    assert!(
        after > 50,
        "the store must keep serving with 2 of 3 members: {after} writes after the kill"
    );

    // Every acknowledged write is on the surviving members, with its revision.
    let survivors = cluster.endpoints();
    assert_eq!(survivors.len(), 2);
    let check = EtcdStore::connect(&survivors, options()).await.unwrap();
    for (k, rev, _) in &acked {
        let v = check
            .get(&Key::new(k.clone()).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write {k} at revision {rev} is lost"));
        assert_eq!(v.mod_revision, *rev);
    }

    // The watch opened before the kill saw every acknowledged write exactly once.
    let total_now = ringfence_test_util::conformance::read_all(&check, &prefix)
        .await
        .len();
    let mut watch = watch;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < total_now {
        let next = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled at {} of {total_now} keys", seen.len()));
        let ev = next.unwrap().unwrap();
        *seen.entry(ev.key.to_string()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a watch event was delivered twice"
    );
    for (k, _, _) in &acked {
        assert!(
            seen.contains_key(k),
            "the watch missed acknowledged write {k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_gives_bounded_retries_then_a_clear_error() {
    let port = free_port().unwrap();
    let options = EtcdOptions {
        attempts: 3,
        backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(300),
        ..EtcdOptions::default()
    };
    let started = Instant::now();
    let err = EtcdStore::connect(&[format!("127.0.0.1:{port}")], options)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, StoreError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "etcd unavailable at http://127.0.0.1:{port} after 3 attempt(s)"
        )),
        "{msg}"
    );
    assert!(msg.contains("check that etcd is running"), "{msg}");
    assert!(
        elapsed < Duration::from_secs(5),
        "retries are bounded: took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_dies_after_connecting_fails_reads_with_a_clear_error() {
    let mut cluster = EtcdCluster::single().await.unwrap();
    let options = EtcdOptions {
        attempts: 2,
        backoff: Duration::from_millis(50),
        request_timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(&cluster.endpoints(), options)
        .await
        .unwrap();
    cluster.kill(0);
    let started = Instant::now();
    let err = store.get(&Key::new("/x").unwrap()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_cluster_that_dies_ends_with_a_clear_error_in_bounded_time() {
    let mut cluster = EtcdCluster::single().await.unwrap();
    let options = EtcdOptions {
        attempts: 2,
        backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(&cluster.endpoints(), options)
        .await
        .unwrap();
    let mut watch = store.watch(&Prefix::new("/w/").unwrap(), 0).await.unwrap();
    cluster.kill(0);
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch gives up within its resume budget")
        .expect("the watch reports why it ended")
        .unwrap_err();
    let msg = err.to_string();
    assert!(err.is_transient(), "{err:?}");
    assert!(msg.starts_with("etcd unavailable at "), "{msg}");
    // 2 attempts → 8 resumes with backoff 50, 100, 200, 400 ms (capped): about 2.4 s of sleep.
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the watch rides out a short outage before giving up: {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}
