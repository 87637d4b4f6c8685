//! 1,200 random tamper operations on a stored log: bit flips in entries, node hashes, the
//! head and checkpoints; deleted and reordered entries; truncation with and without covering
//! tracks; rollback to an older state; forks re-signed with the log's own key. Every one must
//! be caught, by `verify_log` or by a witness that saw the log before, with an error that
//! says what and where.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringfence_audit::note::{Signer, TYPE_COSIGNATURE, TYPE_ED25519};
use ringfence_audit::rfc9162::Hash;
use ringfence_audit::{
    AuditLog, Decision, Event, LogOptions, VerifyError, Witness, WitnessError, verify_log,
};
use ringfence_core::{SpiffeId, UnixTime};
use ringfence_store::{Expect, Key, PageRequest, Prefix, RedbOptions, RedbStore, Store, Txn};

const ORIGIN: &str = "tamper.test/audit";
const SIZE: u64 = 64;
const ROUNDS: usize = 1200;

fn event(tag: &str, i: u64) -> Event {
    Event::new(
        UnixTime::from_millis(1_700_000_000_000 + i),
        SpiffeId::parse("spiffe://tamper.test/ringfence/controlplane").unwrap(),
        "test.tamper",
        format!("{tag}-{i}"),
        Decision::Info,
        "fixture",
    )
}

fn options() -> LogOptions {
    LogOptions {
        origin: ORIGIN.into(),
        checkpoint_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    }
}

type Snapshot = BTreeMap<String, Vec<u8>>;

async fn snapshot(store: &dyn Store) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut req = PageRequest::first(0);
    loop {
        let page = store
            .range(&Prefix::new("/audit/").unwrap(), req.clone())
            .await
            .unwrap();
        for v in page.items {
            out.insert(v.key.to_string(), v.value);
        }
        match page.next {
            Some(k) => req.after = Some(k),
            None => return out,
        }
    }
}

/// Makes the store hold exactly `snap` under /audit/.
async fn restore(store: &dyn Store, snap: &Snapshot) {
    let now = snapshot(store).await;
    let mut ops = Vec::new();
    for (k, v) in snap {
        if now.get(k) != Some(v) {
            ops.push((k.clone(), Some(v.clone())));
        }
    }
    for k in now.keys().filter(|k| !snap.contains_key(*k)) {
        ops.push((k.clone(), None));
    }
    for chunk in ops.chunks(60) {
        let mut txn = Txn::new();
        for (k, v) in chunk {
            let key = Key::new(k.clone()).unwrap();
            txn = match v {
                Some(v) => txn.put(key, v.clone()),
                None => txn.delete(key),
            };
        }
        store.txn(txn).await.unwrap();
    }
}

fn entry_key(i: u64) -> String {
    format!("/audit/e/{i:020}")
}

/// A log with the same key whose history differs from entry `at` on, with checkpoints of
/// every size: what an attacker holding the log's key could produce.
async fn forked(
    key: &str,
    at: u64,
    size: u64,
) -> (Snapshot, Vec<(u64, String)>, AuditLog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let log = AuditLog::open(Arc::clone(&store), Signer::parse(key).unwrap(), options())
        .await
        .unwrap();
    let mut checkpoints = Vec::new();
    for i in 0..size {
        let tag = if i < at { "main" } else { "fork" };
        log.append(&event(tag, i)).await.unwrap();
        if [20, 40, SIZE, size].contains(&(i + 1)) {
            checkpoints.push((i + 1, log.publish_checkpoint().await.unwrap().text));
        }
    }
    (snapshot(store.as_ref()).await, checkpoints, log, dir)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    FlipEntryByte,
    FlipNodeHash,
    FlipHead,
    FlipCheckpoint,
    DeleteEntry,
    SwapEntries,
    TruncateTail,
    TruncateCoveringTracks,
    RollbackToOlderState,
    ForkSameSize,
    ForkLonger,
}

const OPS: [Op; 11] = [
    Op::FlipEntryByte,
    Op::FlipNodeHash,
    Op::FlipHead,
    Op::FlipCheckpoint,
    Op::DeleteEntry,
    Op::SwapEntries,
    Op::TruncateTail,
    Op::TruncateCoveringTracks,
    Op::RollbackToOlderState,
    Op::ForkSameSize,
    Op::ForkLonger,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tamper_operation_is_detected_with_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let key = Signer::generate(ORIGIN, TYPE_ED25519)
        .unwrap()
        .to_key_string();
    let log = AuditLog::open(Arc::clone(&store), Signer::parse(&key).unwrap(), options())
        .await
        .unwrap();
    let vkey = log.verifier();

    let witness_key = Signer::generate("witness.tamper.test", TYPE_COSIGNATURE).unwrap();
    let witness = Witness::new(
        vkey.clone(),
        ORIGIN,
        witness_key,
        &dir.path().join("witness.json"),
    );

    let mut older_state = None;
    for i in 0..SIZE {
        log.append(&event("main", i)).await.unwrap();
        if [20, 40, SIZE].contains(&(i + 1)) {
            let cp = log.publish_checkpoint().await.unwrap();
            let proof = match witness.state().unwrap() {
                Some(s) => log.consistency_proof(s.size, cp.size).await.unwrap(),
                None => vec![],
            };
            witness
                .witness(cp.text.as_bytes(), &proof, 1_700_000_000)
                .unwrap();
            if i + 1 == 40 {
                older_state = Some(snapshot(store.as_ref()).await);
            }
        }
    }
    let older_state = older_state.unwrap();
    let pristine = snapshot(store.as_ref()).await;
    verify_log(&store, "/audit", &vkey, ORIGIN, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(witness.state().unwrap().unwrap().size, SIZE);

    // Forks made with the log's own key, diverging at several points.
    let mut forks = Vec::new();
    for at in [0, 13, 39, 63] {
        forks.push(forked(&key, at, SIZE + 6).await);
    }

    let mut rng = StdRng::seed_from_u64(9162);
    let mut detected: HashMap<Op, usize> = HashMap::new();
    for round in 0..ROUNDS {
        let op = OPS[rng.random_range(0..OPS.len())];
        let mut expect_where: Option<String> = None;
        let mut damaged_entry: Option<u64> = None;
        let mut witness_input: Option<(String, Vec<Hash>)> = None;
        match op {
            Op::FlipEntryByte | Op::FlipNodeHash => {
                let i = rng.random_range(0..SIZE);
                let mut record = pristine[&entry_key(i)].clone();
                let nodes = usize::from(record[0]) * 32;
                let at = if op == Op::FlipNodeHash {
                    1 + rng.random_range(0..nodes)
                } else {
                    1 + nodes + rng.random_range(0..record.len() - 1 - nodes)
                };
                record[at] ^= 1 << rng.random_range(0..8);
                put(store.as_ref(), &entry_key(i), record).await;
                // A changed entry is named exactly; a changed node hash names the run of
                // entries under that node (checked below to contain entry i).
                expect_where = Some(if op == Op::FlipEntryByte {
                    format!("entry {i}:")
                } else {
                    "entr".into()
                });
                damaged_entry = Some(i);
            }
            Op::FlipHead => {
                let mut head = pristine["/audit/head"].clone();
                let at = rng.random_range(8..head.len());
                head[at] ^= 1 << rng.random_range(0..8);
                put(store.as_ref(), "/audit/head", head).await;
                expect_where = Some(format!(
                    "the first {SIZE} entries do not hash to the root in the head"
                ));
            }
            Op::FlipCheckpoint => {
                let keys: Vec<&String> = pristine
                    .keys()
                    .filter(|k| k.starts_with("/audit/cp/"))
                    .collect();
                let k = keys[rng.random_range(0..keys.len())].clone();
                let mut cp = pristine[&k].clone();
                let at = rng.random_range(0..cp.len());
                cp[at] ^= 1 << rng.random_range(0..7);
                put(store.as_ref(), &k, cp).await;
                expect_where = Some("checkpoint ".into());
            }
            Op::DeleteEntry => {
                let i = rng.random_range(0..SIZE);
                delete(store.as_ref(), &entry_key(i)).await;
                expect_where = Some(format!("entry {i} is missing"));
            }
            Op::SwapEntries => {
                let i = rng.random_range(0..SIZE - 1);
                let j = rng.random_range(i + 1..SIZE);
                put(
                    store.as_ref(),
                    &entry_key(i),
                    pristine[&entry_key(j)].clone(),
                )
                .await;
                put(
                    store.as_ref(),
                    &entry_key(j),
                    pristine[&entry_key(i)].clone(),
                )
                .await;
                expect_where = Some("entr".into());
                damaged_entry = Some(i);
            }
            Op::TruncateTail => {
                // Drop the newest entries and rewrite the head to match: the signed
                // checkpoints still cover them.
                let k = rng.random_range(1..SIZE);
                let mut state = pristine.clone();
                for i in k..SIZE {
                    state.remove(&entry_key(i));
                }
                state.insert("/audit/head".into(), head_for(&pristine, k));
                restore(store.as_ref(), &state).await;
                expect_where = Some("entries were removed".into());
            }
            Op::TruncateCoveringTracks => {
                // Truncate, rewrite the head, drop the checkpoints that covered the removed
                // entries and put an older one back as the latest: self-consistent again.
                let k = rng.random_range(20..SIZE);
                let kept = if k >= 40 { 40 } else { 20 };
                let mut state = pristine.clone();
                for i in k..SIZE {
                    state.remove(&entry_key(i));
                }
                state.insert("/audit/head".into(), head_for(&pristine, k));
                state.retain(|key, _| {
                    !key.starts_with("/audit/cp/0") || key <= &format!("/audit/cp/{kept:020}")
                });
                let latest = pristine[&format!("/audit/cp/{kept:020}")].clone();
                state.insert("/audit/cp/latest".into(), latest.clone());
                restore(store.as_ref(), &state).await;
                witness_input = Some((String::from_utf8(latest).unwrap(), vec![]));
            }
            Op::RollbackToOlderState => {
                // A self-consistent older log: only someone who saw the newer one can tell.
                restore(store.as_ref(), &older_state).await;
                let latest = String::from_utf8(older_state["/audit/cp/latest"].clone()).unwrap();
                witness_input = Some((latest, vec![]));
            }
            Op::ForkSameSize | Op::ForkLonger => {
                let (snap, checkpoints, fork_log, _) = &forks[rng.random_range(0..forks.len())];
                restore(store.as_ref(), snap).await;
                let (size, text) = if op == Op::ForkSameSize {
                    checkpoints
                        .iter()
                        .find(|(s, _)| *s == SIZE)
                        .unwrap()
                        .clone()
                } else {
                    checkpoints.last().unwrap().clone()
                };
                // The best proof the forked log can give from the witness's size.
                let proof = fork_log
                    .consistency_proof(SIZE.min(size), size)
                    .await
                    .unwrap();
                witness_input = Some((text, proof));
            }
        }

        let verdict = verify_log(&store, "/audit", &vkey, ORIGIN, None, |_, _| {}).await;
        if let (Some(i), Err(VerifyError::Entry { first, index, .. })) = (damaged_entry, &verdict) {
            assert!(
                *first <= i && i <= *index,
                "round {round} {op:?}: damage at entry {i} reported at entries {first}..={index}"
            );
        }
        let caught = match (&expect_where, verdict) {
            (Some(want), Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(want),
                    "round {round} {op:?}: error {msg:?} does not say {want:?}"
                );
                true
            }
            (Some(want), Ok(_)) => {
                panic!("round {round} {op:?}: verify missed it (expected {want:?})")
            }
            (None, Err(e)) => {
                // Verification may also catch it; then it must still say where.
                let msg = e.to_string();
                assert!(
                    msg.contains("entry") || msg.contains("checkpoint") || msg.contains("entries"),
                    "{msg}"
                );
                true
            }
            (None, Ok(_)) => false,
        };
        if let Some((text, proof)) = witness_input {
            let err = witness
                .witness(text.as_bytes(), &proof, 1_700_000_001)
                .expect_err("the witness must refuse a rolled-back or forked log");
            let msg = err.to_string();
            match op {
                Op::TruncateCoveringTracks | Op::RollbackToOlderState => {
                    assert!(
                        matches!(
                            err,
                            WitnessError::Rollback {
                                old: SIZE,
                                new: 20 | 40
                            }
                        ),
                        "{msg}"
                    );
                    assert!(msg.contains("ROLLBACK"), "{msg}");
                }
                Op::ForkSameSize => {
                    assert!(matches!(err, WitnessError::SplitView { .. }), "{msg}");
                    assert!(msg.contains("FORK (split view)"), "{msg}");
                }
                _ => {
                    assert!(matches!(err, WitnessError::Inconsistent { .. }), "{msg}");
                    assert!(msg.contains("not an extension"), "{msg}");
                }
            }
        } else {
            assert!(caught, "round {round} {op:?}: nobody caught it");
        }
        *detected.entry(op).or_default() += 1;
        restore(store.as_ref(), &pristine).await;
    }
    verify_log(&store, "/audit", &vkey, ORIGIN, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        witness.state().unwrap().unwrap().size,
        SIZE,
        "no tampered checkpoint was accepted"
    );
    let mut summary: Vec<_> = detected.into_iter().collect();
    summary.sort();
    eprintln!("{ROUNDS} tamper operations, all detected: {summary:?}");
    assert_eq!(
        summary.len(),
        OPS.len(),
        "every kind of tampering was exercised"
    );
}

/// A head for the first `k` entries of the pristine log (what an attacker would write after
/// truncating).
fn head_for(pristine: &Snapshot, k: u64) -> Vec<u8> {
    use ringfence_audit::rfc9162::{Frontier, leaf_hash};
    let mut f = Frontier::default();
    for i in 0..k {
        let record = &pristine[&entry_key(i)];
        let nodes = usize::from(record[0]) * 32;
        f.push(leaf_hash(&record[1 + nodes..]));
    }
    let mut out = k.to_le_bytes().to_vec();
    out.extend_from_slice(&f.root());
    out
}

async fn put(store: &dyn Store, key: &str, value: Vec<u8>) {
    store
        .put(&Key::new(key).unwrap(), value, Expect::Any)
        .await
        .unwrap();
}

async fn delete(store: &dyn Store, key: &str) {
    store
        .delete(&Key::new(key).unwrap(), Expect::Any)
        .await
        .unwrap();
}
