//! The Store conformance suite against both backends: the embedded redb store and a real etcd
//! member started by the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::sync::Arc;

use ringfence_store::{EtcdOptions, EtcdStore, RedbOptions, RedbStore, Store};
use ringfence_test_util::conformance;
use ringfence_test_util::etcd::EtcdCluster;

struct Redb {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

fn redb() -> Redb {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap();
    Redb {
        store: Arc::new(store),
        _dir: dir,
    }
}

async fn etcd() -> (Arc<dyn Store>, EtcdCluster) {
    let mut cluster = EtcdCluster::single().await.unwrap();
    let store = EtcdStore::connect(&cluster.endpoints(), EtcdOptions::default())
        .await
        .unwrap();
    (Arc::new(store), cluster)
}

macro_rules! conformance_tests {
    ($($name:ident => |$s:ident| $body:expr;)*) => {
        mod redb_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = redb();
                    let $s = Arc::clone(&fixture.store);
                    $body.await;
                }
            )*
        }
        mod etcd_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _cluster) = etcd().await;
                    let $s = store;
                    $body.await;
                }
            )*
        }
    };
}

conformance_tests! {
    versions_and_revisions => |s| conformance::versions_and_revisions(s.as_ref());
    compare_and_swap => |s| conformance::compare_and_swap(s.as_ref());
    cas_race_64_tasks_reach_exactly_64 => |s| conformance::cas_race(s, 64);
    txn_atomicity => |s| conformance::txn_atomicity(s.as_ref());
    txn_never_half_visible_under_concurrency => |s| conformance::txn_isolation_under_concurrency(s);
    paging => |s| conformance::paging(s.as_ref());
    watch_order_and_resume => |s| conformance::watch_order_and_resume(s);
    limits_are_typed_errors => |s| conformance::limits(s.as_ref());
}
