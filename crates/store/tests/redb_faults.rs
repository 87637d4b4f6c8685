//! The embedded store facing damaged files, a second opener, restarts and compaction: every
//! failure is a clear error naming the file and what to do; nothing panics; nothing starts
//! silently empty.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use ringfence_store::{Expect, Key, Prefix, RedbOptions, RedbStore, Store, StoreError};

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

/// Writes `n` keys with 2 KiB values and closes the store.
async fn populate(path: &Path, n: usize) {
    let store = RedbStore::open(path, RedbOptions::default()).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut txn = ringfence_store::Txn::new();
        for i in chunk {
            txn = txn.put(key(&format!("/data/{i:05}")), vec![(*i % 251) as u8; 2048]);
        }
        store.txn(txn).await.unwrap();
    }
}

fn expect_corrupt(path: &Path) -> String {
    match RedbStore::open(path, RedbOptions::default()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "message names the file: {msg}"
            );
            assert!(
                msg.contains("restore it from a backup"),
                "message says what to do: {msg}"
            );
            msg
        }
        Err(other) => panic!("expected a corrupt-store error, got: {other}"),
        Ok(_) => panic!("a damaged store file opened without error"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    populate(&path, 500).await;
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    expect_corrupt(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file_is_refused_not_reinitialized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    populate(&path, 10).await;
    std::fs::File::create(&path).unwrap(); // truncates to 0 bytes
    let msg = expect_corrupt(&path);
    assert!(msg.contains("empty (0 bytes)"), "{msg}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the file was not touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    populate(&path, 500).await;
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(len / 4)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let garbage: Vec<u8> = (0..len / 2).map(|_| rng.random()).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
    expect_corrupt(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0xA5u8; 64 * 1024]).unwrap();
    let err = RedbStore::open(&garbage, RedbOptions::default()).expect_err("garbage must not open");
    assert!(
        matches!(
            err,
            StoreError::Corrupt { .. } | StoreError::NotAStore { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("garbage.redb"), "{err}");

    // A healthy redb file that some other program wrote is not a Ringfence store.
    let foreign = dir.path().join("foreign.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("other");
            w.open_table(def).unwrap().insert("a", "b").unwrap();
        }
        w.commit().unwrap();
    }
    let err =
        RedbStore::open(&foreign, RedbOptions::default()).expect_err("foreign file must not open");
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not a Ringfence store: it is a redb file without Ringfence metadata",
            foreign.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_single_byte_flips_never_panic_and_never_return_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.redb");
    populate(&pristine, 200).await;
    let bytes = std::fs::read(&pristine).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (mut refused, mut intact) = (0, 0);
    for round in 0..100 {
        let path = dir.path().join(format!("flip-{round}.redb"));
        let mut damaged = bytes.clone();
        let at = rng.random_range(0..damaged.len());
        damaged[at] ^= 1 << rng.random_range(0..8);
        std::fs::write(&path, &damaged).unwrap();
        match RedbStore::open(&path, RedbOptions::default()) {
            Err(e) => {
                assert!(
                    e.to_string().contains(&path.display().to_string()),
                    "round {round}: {e}"
                );
                refused += 1;
            }
            // The flip hit unused space: every value must still read back exactly.
            Ok(store) => {
                for i in 0..200usize {
                    match store.get(&key(&format!("/data/{i:05}"))).await {
                        Ok(Some(v)) => assert_eq!(
                            v.value,
                            vec![(i % 251) as u8; 2048],
                            "round {round}: byte {at}"
                        ),
                        Ok(None) => {
                            panic!("round {round}: key {i} vanished after a flip at byte {at}")
                        }
                        Err(e) => {
                            assert!(
                                matches!(e, StoreError::Corrupt { .. }),
                                "round {round}: {e}"
                            )
                        }
                    }
                }
                intact += 1;
            }
        }
        std::fs::remove_file(&path).ok();
    }
    eprintln!("{refused} flips refused with an error, {intact} in unused space");
    assert!(refused > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_is_told_the_file_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap();
    let err = RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_revisions_and_watch_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first_rev;
    {
        let store = RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap();
        first_rev = store
            .put(&key("/r/a"), b"1".to_vec(), Expect::Absent)
            .await
            .unwrap();
        store
            .put(&key("/r/b"), b"2".to_vec(), Expect::Absent)
            .await
            .unwrap();
    }
    let store = RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap();
    assert_eq!(store.revision().await.unwrap(), first_rev + 1);
    let r3 = store
        .put(&key("/r/a"), b"3".to_vec(), Expect::Revision(first_rev))
        .await
        .unwrap();
    assert_eq!(r3, first_rev + 2, "revisions continue after a restart");
    let mut watch = store
        .watch(&Prefix::new("/r/").unwrap(), first_rev)
        .await
        .unwrap();
    let mut revisions = Vec::new();
    for _ in 0..3 {
        revisions.push(watch.next().await.unwrap().unwrap().revision);
    }
    assert_eq!(revisions, [first_rev, first_rev + 1, first_rev + 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_compacted_history_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let options = RedbOptions {
        history_revisions: 10,
        ..RedbOptions::default()
    };
    let store = std::sync::Arc::new(RedbStore::open_in(dir.path(), options).unwrap());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..80 {
                store
                    .put(&key(&format!("/c/{t}/{i}")), vec![1], Expect::Any)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut watch = store.watch(&Prefix::all(), 1).await.unwrap();
    let err = watch.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { requested: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("re-read the current state"),
        "{err}"
    );
    // Recent history is still there.
    let now = store.revision().await.unwrap();
    let mut recent = store.watch(&Prefix::all(), now - 5).await.unwrap();
    assert_eq!(recent.next().await.unwrap().unwrap().revision, now - 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..64 {
        let store = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                store
                    .put(&key(&format!("/g/{t}/{i}")), vec![1; 64], Expect::Absent)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.commit_stats();
    assert_eq!(stats.requests, 64 * 20);
    eprintln!(
        "{} writes in {} durable commits",
        stats.requests, stats.commits
    );
    assert!(
        stats.commits * 4 <= stats.requests,
        "64 concurrent writers should share fsyncs: {stats:?}"
    );
}
