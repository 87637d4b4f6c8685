//! The Store conformance suite: the behaviour every backend must show, written once and run
//! against each (see `tests/store_conformance.rs`). Each check uses its own key prefix, so the
//! checks may share one store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ringfence_store::{
    Compare, EventKind, Expect, Key, PageRequest, Prefix, Store, StoreError, Txn, WatchEvent,
    WatchStream,
};

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

/// Puts, gets and deletes keep create/mod revisions and versions as etcd defines them.
pub async fn versions_and_revisions(store: &dyn Store) {
    let k = key("/conf/versions/a");
    assert_eq!(store.get(&k).await.unwrap(), None);
    let r1 = store.put(&k, b"one".to_vec(), Expect::Any).await.unwrap();
    let r2 = store.put(&k, b"two".to_vec(), Expect::Any).await.unwrap();
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    let v = store.get(&k).await.unwrap().unwrap();
    assert_eq!(v.value, b"two");
    assert_eq!((v.create_revision, v.mod_revision, v.version), (r1, r2, 2));
    assert_eq!(store.revision().await.unwrap(), r2);

    let r3 = store.delete(&k, Expect::Any).await.unwrap();
    assert_eq!(r3, Some(r2 + 1));
    assert_eq!(store.get(&k).await.unwrap(), None);
    // Deleting what is not there changes nothing and spends no revision.
    assert_eq!(store.delete(&k, Expect::Any).await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), r2 + 1);

    // Re-created: a new create revision and the version starts again at 1.
    let r4 = store
        .put(&k, b"three".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let v = store.get(&k).await.unwrap().unwrap();
    assert_eq!((v.create_revision, v.mod_revision, v.version), (r4, r4, 1));
}

/// Compare-and-swap refuses stale expectations, names the key and the actual revision, and
/// writes nothing.
pub async fn compare_and_swap(store: &dyn Store) {
    let k = key("/conf/cas/k");
    let r1 = store.put(&k, b"a".to_vec(), Expect::Absent).await.unwrap();
    let err = store
        .put(&k, b"b".to_vec(), Expect::Absent)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, expected: Expect::Absent, actual: Some(r) } if key == "/conf/cas/k" && *r == r1),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("conflict on /conf/cas/k: expected absent, found revision {r1}")
    );
    let r2 = store
        .put(&k, b"b".to_vec(), Expect::Revision(r1))
        .await
        .unwrap();
    let err = store
        .put(&k, b"c".to_vec(), Expect::Revision(r1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: Some(r), .. } if r == r2),
        "{err:?}"
    );
    assert_eq!(store.get(&k).await.unwrap().unwrap().value, b"b");

    let missing = key("/conf/cas/missing");
    let err = store
        .put(&missing, b"x".to_vec(), Expect::Exists)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "conflict on /conf/cas/missing: expected present, found absent"
    );
    let err = store.delete(&k, Expect::Revision(r1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(
        store.get(&k).await.unwrap().is_some(),
        "a refused delete deletes nothing"
    );
    let deleted = store.delete(&k, Expect::Revision(r2)).await.unwrap();
    assert_eq!(deleted, Some(r2 + 1));
}

/// `tasks` concurrent tasks each increment one counter once with read + CAS + retry; the
/// counter ends at exactly `tasks`, and every successful write got a distinct revision.
pub async fn cas_race(store: Arc<dyn Store>, tasks: usize) {
    let k = key("/conf/race/counter");
    store.put(&k, b"0".to_vec(), Expect::Absent).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let store = Arc::clone(&store);
        let k = k.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            loop {
                let current = store.get(&k).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&current.value)
                    .unwrap()
                    .parse()
                    .unwrap();
                match store
                    .put(
                        &k,
                        (n + 1).to_string().into_bytes(),
                        Expect::Revision(current.mod_revision),
                    )
                    .await
                {
                    Ok(rev) => return (rev, conflicts),
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    let mut revisions = HashSet::new();
    for h in handles {
        let (rev, _) = h.await.unwrap();
        assert!(
            revisions.insert(rev),
            "two increments acknowledged at revision {rev}"
        );
    }
    let end = store.get(&k).await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&end.value).unwrap(), tasks.to_string());
    assert_eq!(end.version, tasks as u64 + 1);
}

/// A transaction applies all its operations at one revision, or none of them.
pub async fn txn_atomicity(store: &dyn Store) {
    let (a, b, c) = (key("/conf/txn/a"), key("/conf/txn/b"), key("/conf/txn/c"));
    let before = store.revision().await.unwrap();
    let committed = store
        .txn(
            Txn::new()
                .compare(Compare::new(a.clone(), Expect::Absent))
                .put(a.clone(), b"1".to_vec())
                .put(b.clone(), b"1".to_vec())
                .put(c.clone(), b"1".to_vec()),
        )
        .await
        .unwrap();
    assert!(committed.changed);
    assert_eq!(
        committed.revision,
        before + 1,
        "one transaction, one revision"
    );
    for k in [&a, &b, &c] {
        assert_eq!(
            store.get(k).await.unwrap().unwrap().mod_revision,
            committed.revision
        );
    }

    // The second comparison fails: neither the put nor the delete may apply.
    let err = store
        .txn(
            Txn::new()
                .compare(Compare::new(
                    a.clone(),
                    Expect::Revision(committed.revision),
                ))
                .compare(Compare::new(b.clone(), Expect::Absent))
                .put(a.clone(), b"2".to_vec())
                .delete(c.clone()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, actual: Some(r), .. } if key == "/conf/txn/b" && *r == committed.revision),
        "the conflict names the failing comparison: {err:?}"
    );
    assert_eq!(store.get(&a).await.unwrap().unwrap().value, b"1");
    assert!(store.get(&c).await.unwrap().is_some());
    assert_eq!(store.revision().await.unwrap(), committed.revision);

    // Mixed put + delete succeeds together.
    let r = store
        .txn(Txn::new().put(a.clone(), b"3".to_vec()).delete(c.clone()))
        .await
        .unwrap();
    assert!(r.changed);
    assert_eq!(
        store.get(&a).await.unwrap().unwrap().mod_revision,
        r.revision
    );
    assert_eq!(store.get(&c).await.unwrap(), None);
}

/// Concurrent transfers between two keys (CAS on both) never expose a state where the total
/// differs: a transaction is never half visible to readers.
pub async fn txn_isolation_under_concurrency(store: Arc<dyn Store>) {
    let (a, b) = (key("/conf/bank/a"), key("/conf/bank/b"));
    store
        .txn(
            Txn::new()
                .put(a.clone(), b"500".to_vec())
                .put(b.clone(), b"500".to_vec()),
        )
        .await
        .unwrap();
    let read = |v: &ringfence_store::Versioned| -> i64 {
        std::str::from_utf8(&v.value).unwrap().parse().unwrap()
    };
    let mut writers = Vec::new();
    for t in 0..8i64 {
        let (store, a, b) = (Arc::clone(&store), a.clone(), b.clone());
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let (va, vb) = (
                    store.get(&a).await.unwrap().unwrap(),
                    store.get(&b).await.unwrap().unwrap(),
                );
                let amount = (t % 3) + 1;
                let txn = Txn::new()
                    .compare(Compare::new(a.clone(), Expect::Revision(va.mod_revision)))
                    .compare(Compare::new(b.clone(), Expect::Revision(vb.mod_revision)))
                    .put(a.clone(), (read(&va) - amount).to_string().into_bytes())
                    .put(b.clone(), (read(&vb) + amount).to_string().into_bytes());
                match store.txn(txn).await {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let prefix = Prefix::new("/conf/bank/").unwrap();
    let mut checks = 0;
    while writers.iter().any(|w| !w.is_finished()) || checks == 0 {
        let page = store.range(&prefix, PageRequest::first(10)).await.unwrap();
        let total: i64 = page.items.iter().map(read).sum();
        assert_eq!(
            total, 1000,
            "a reader saw half a transaction at revision {}",
            page.revision
        );
        checks += 1;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
}

/// Ranges read a prefix in key order, in pages, exactly once each, never past the prefix.
pub async fn paging(store: &dyn Store) {
    let total = 250;
    for chunk in (0..total).collect::<Vec<_>>().chunks(50) {
        let mut txn = Txn::new();
        for i in chunk {
            txn = txn.put(
                key(&format!("/conf/page/p/{i:04}")),
                i.to_string().into_bytes(),
            );
        }
        store.txn(txn).await.unwrap();
    }
    // Neighbours that a sloppy prefix match would include.
    store
        .put(&key("/conf/page/p-other"), b"x".to_vec(), Expect::Any)
        .await
        .unwrap();
    store
        .put(&key("/conf/page/q/0000"), b"x".to_vec(), Expect::Any)
        .await
        .unwrap();

    let prefix = Prefix::new("/conf/page/p/").unwrap();
    let mut seen = Vec::new();
    let mut request = PageRequest::first(100);
    let mut pages = 0;
    loop {
        let page = store.range(&prefix, request.clone()).await.unwrap();
        assert!(page.items.len() <= 100);
        pages += 1;
        seen.extend(page.items.iter().map(|v| v.key.as_str().to_owned()));
        match page.next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..total).map(|i| format!("/conf/page/p/{i:04}")).collect();
    assert_eq!(seen, expected);

    // `limit: 0` means the maximum page; an exact fit reports no next page.
    let page = store.range(&prefix, PageRequest::first(0)).await.unwrap();
    assert_eq!(page.items.len(), total);
    assert_eq!(page.next, None);
    let page = store
        .range(&prefix, PageRequest::first(total))
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.next), (total, None));

    // A cursor inside the prefix continues after it.
    let page = store
        .range(
            &prefix,
            PageRequest {
                after: Some(key("/conf/page/p/0247")),
                limit: 10,
            },
        )
        .await
        .unwrap();
    let keys: Vec<_> = page.items.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["/conf/page/p/0248", "/conf/page/p/0249"]);
    assert!(page.revision >= 1);
}

/// Watches deliver every change under a prefix in revision order, transactions together,
/// and resume after a disconnect with nothing lost and nothing repeated.
pub async fn watch_order_and_resume(store: Arc<dyn Store>) {
    let prefix = Prefix::new("/conf/watch/").unwrap();
    let start = store.revision().await.unwrap() + 1;
    // Live watch started before the writes (from = 0: changes after now).
    let live = store.watch(&prefix, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut expected: Vec<(u64, String, bool)> = Vec::new();
    for i in 0..30 {
        let k = key(&format!("/conf/watch/k{}", i % 7));
        let r = store
            .put(&k, format!("v{i}").into_bytes(), Expect::Any)
            .await
            .unwrap();
        expected.push((r, k.to_string(), true));
        // Writes outside the prefix must not show up.
        store
            .put(&key("/conf/watchnot/x"), b"x".to_vec(), Expect::Any)
            .await
            .unwrap();
        if i % 10 == 9 {
            let (ka, kb) = (
                key(&format!("/conf/watch/t{i}/a")),
                key(&format!("/conf/watch/t{i}/b")),
            );
            let c = store
                .txn(
                    Txn::new()
                        .put(ka.clone(), b"a".to_vec())
                        .put(kb.clone(), b"b".to_vec())
                        .delete(k.clone()),
                )
                .await
                .unwrap();
            expected.push((c.revision, ka.to_string(), true));
            expected.push((c.revision, kb.to_string(), true));
            expected.push((c.revision, k.to_string(), false));
        }
    }
    let summarize = |ev: &WatchEvent| {
        (
            ev.revision,
            ev.key.to_string(),
            matches!(ev.kind, EventKind::Put { .. }),
        )
    };
    let order =
        |v: &mut Vec<(u64, String, bool)>| v.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut expected_sorted = expected.clone();
    order(&mut expected_sorted);

    let got = take(live, expected.len()).await;
    let mut got_sorted: Vec<_> = got.iter().map(summarize).collect();
    assert!(
        got.windows(2).all(|w| w[0].revision <= w[1].revision),
        "events arrive in revision order"
    );
    order(&mut got_sorted);
    assert_eq!(
        got_sorted, expected_sorted,
        "live watch saw exactly the changes under the prefix"
    );

    // Replay from the start of history, stop after 10 events ("disconnect"; the 10th is the
    // last single put before the first transaction), resume from its revision + 1: together
    // the two streams hold every event exactly once.
    let first = take(store.watch(&prefix, start).await.unwrap(), 10).await;
    let resumed_from = first.last().unwrap().revision + 1;
    let rest = take(
        store.watch(&prefix, resumed_from).await.unwrap(),
        expected.len() - 10,
    )
    .await;
    assert!(rest.iter().all(|e| e.revision >= resumed_from));
    let mut union: Vec<_> = first.iter().chain(rest.iter()).map(summarize).collect();
    order(&mut union);
    assert_eq!(
        union, expected_sorted,
        "replay + resume saw every change exactly once"
    );
    let txn_revision = rest.first().unwrap().revision;
    assert_eq!(
        rest.iter().filter(|e| e.revision == txn_revision).count(),
        3,
        "a transaction's events arrive together"
    );

    // Values and versions come with put events.
    let ev = rest
        .iter()
        .find(|e| matches!(e.kind, EventKind::Put { .. }))
        .unwrap();
    let current = store.get(&ev.key).await.unwrap();
    if let (
        EventKind::Put {
            create_revision, ..
        },
        Some(cur),
    ) = (&ev.kind, current)
    {
        assert!(*create_revision <= cur.mod_revision);
    }
}

/// Oversized values, oversized transactions and duplicate keys are typed errors, before any
/// write.
pub async fn limits(store: &dyn Store) {
    let limits = store.limits();
    let before = store.revision().await.unwrap();
    let big = vec![0u8; limits.max_value_len + 1];
    let err = store
        .put(&key("/conf/limits/big"), big, Expect::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the store accepts at most 1048576"),
        "{err}"
    );
    let exact = vec![7u8; limits.max_value_len];
    store
        .put(&key("/conf/limits/exact"), exact.clone(), Expect::Any)
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&key("/conf/limits/exact"))
            .await
            .unwrap()
            .unwrap()
            .value,
        exact
    );

    let mut many = Txn::new();
    for i in 0..=limits.max_txn_ops {
        many = many.put(key(&format!("/conf/limits/m{i}")), vec![]);
    }
    let err = store.txn(many).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TxnTooLarge {
                what: "operations",
                ..
            }
        ),
        "{err:?}"
    );
    let dup = Txn::new()
        .put(key("/conf/limits/d"), vec![])
        .put(key("/conf/limits/d"), vec![1]);
    assert!(matches!(
        store.txn(dup).await.unwrap_err(),
        StoreError::DuplicateKey { .. }
    ));
    assert_eq!(
        store.revision().await.unwrap(),
        before + 1,
        "only the exact-size put was written"
    );
}

async fn take(mut stream: WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("watch stalled after {} of {n} events", out.len()));
        match next {
            Some(Ok(ev)) => out.push(ev),
            Some(Err(e)) => panic!("watch failed after {} events: {e}", out.len()),
            None => panic!("watch ended after {} of {n} events", out.len()),
        }
    }
    out
}

/// Reads every key under `prefix` through the pages, as a map.
pub async fn read_all(store: &dyn Store, prefix: &Prefix) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut request = PageRequest::first(0);
    loop {
        let page = store.range(prefix, request.clone()).await.unwrap();
        for v in page.items {
            out.insert(v.key.to_string(), v.value);
        }
        match page.next {
            Some(next) => request.after = Some(next),
            None => return out,
        }
    }
}
