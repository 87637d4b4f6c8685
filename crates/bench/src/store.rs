//! The Store benchmark: durable single puts and 3-key transactions at concurrency 1 and 64,
//! on the embedded redb store and on a real etcd member, plus raw etcd puts through the
//! etcd client with no Ringfence code in between, all on the same disk in one run.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ringfence_store::{EtcdOptions, EtcdStore, Expect, Key, RedbOptions, RedbStore, Store, Txn};
use ringfence_test_util::etcd::EtcdCluster;
use serde_json::json;

use crate::stats::{Figures, figures};

const VALUE_LEN: usize = 128;
const CONCURRENCIES: [usize; 2] = [1, 64];

/// One measured scenario.
struct Row {
    target: &'static str,
    op: &'static str,
    concurrency: usize,
    figures: Figures,
}

pub async fn run(duration: Duration, dir: &Path) -> Result<()> {
    let base = tempfile::Builder::new()
        .prefix("ringfence-bench-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    eprintln!(
        "store benchmark: {:.1} s per scenario, scratch files in {}",
        duration.as_secs_f64(),
        base.path().display()
    );
    let mut rows = Vec::new();

    let redb: Arc<dyn Store> = Arc::new(RedbStore::open_in(
        &base.path().join("redb"),
        RedbOptions::default(),
    )?);
    let mut cluster = EtcdCluster::start_in(1, base.path()).await?;
    let endpoints = cluster.endpoints();
    let etcd: Arc<dyn Store> =
        Arc::new(EtcdStore::connect(&endpoints, EtcdOptions::default()).await?);
    let raw = etcd_client::Client::connect(
        endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect::<Vec<_>>(),
        None,
    )
    .await?;

    for concurrency in CONCURRENCIES {
        for (target, store) in [("redb", &redb), ("etcd", &etcd)] {
            let s = Arc::clone(store);
            let f = measure(target, "put", concurrency, duration, move |task, i| {
                let s = Arc::clone(&s);
                async move {
                    let key = Key::new(format!("/bench/put/c{concurrency}/{task}/{i}"))?;
                    s.put(&key, vec![7; VALUE_LEN], Expect::Any).await?;
                    Ok(())
                }
            })
            .await?;
            rows.push(Row {
                target,
                op: "put",
                concurrency,
                figures: f,
            });

            let s = Arc::clone(store);
            let f = measure(target, "txn3", concurrency, duration, move |task, i| {
                let s = Arc::clone(&s);
                async move {
                    let mut txn = Txn::new();
                    for part in ["a", "b", "c"] {
                        txn = txn.put(
                            Key::new(format!("/bench/txn/c{concurrency}/{task}/{i}/{part}"))?,
                            vec![7; VALUE_LEN],
                        );
                    }
                    s.txn(txn).await?;
                    Ok(())
                }
            })
            .await?;
            rows.push(Row {
                target,
                op: "txn3",
                concurrency,
                figures: f,
            });
        }
        let client = raw.clone();
        let f = measure("etcd-raw", "put", concurrency, duration, move |task, i| {
            let mut c = client.clone();
            async move {
                c.put(
                    format!("/bench/raw/c{concurrency}/{task}/{i}"),
                    vec![7; VALUE_LEN],
                    None,
                )
                .await?;
                Ok(())
            }
        })
        .await?;
        rows.push(Row {
            target: "etcd-raw",
            op: "put",
            concurrency,
            figures: f,
        });
        let client = raw.clone();
        let f = measure("etcd-raw", "txn3", concurrency, duration, move |task, i| {
            let mut c = client.clone();
            async move {
                let ops: Vec<_> = ["a", "b", "c"]
                    .iter()
                    .map(|p| {
                        etcd_client::TxnOp::put(
                            format!("/bench/rawtxn/c{concurrency}/{task}/{i}/{p}"),
                            vec![7; VALUE_LEN],
                            None,
                        )
                    })
                    .collect();
                c.txn(etcd_client::Txn::new().and_then(ops)).await?;
                Ok(())
            }
        })
        .await?;
        rows.push(Row {
            target: "etcd-raw",
            op: "txn3",
            concurrency,
            figures: f,
        });
    }
    cluster.kill(0);
    report(&rows);
    Ok(())
}

/// Runs `op` from `concurrency` tasks for `duration`, timing each call.
async fn measure<F, Fut>(
    target: &str,
    op: &str,
    concurrency: usize,
    duration: Duration,
    f: F,
) -> Result<Figures>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    eprint!("  {target:<9} {op:<5} concurrency {concurrency:>3} ... ");
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                f(task, i).await?;
                samples.push(t.elapsed());
                i += 1;
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await??);
    }
    let result = figures(samples, start.elapsed());
    eprintln!("{:.0}/s", result.per_second);
    Ok(result)
}

fn find<'a>(rows: &'a [Row], target: &str, op: &str, concurrency: usize) -> Option<&'a Figures> {
    rows.iter()
        .find(|r| r.target == target && r.op == op && r.concurrency == concurrency)
        .map(|r| &r.figures)
}

fn report(rows: &[Row]) {
    println!();
    println!(
        "{:<10} {:<6} {:>5} {:>12} {:>10} {:>10} {:>9}",
        "target", "op", "conc", "commits/s", "p50 ms", "p99 ms", "ops"
    );
    for r in rows {
        println!(
            "{:<10} {:<6} {:>5} {:>12.0} {:>10.3} {:>10.3} {:>9}",
            r.target,
            r.op,
            r.concurrency,
            r.figures.per_second,
            r.figures.p50_ms,
            r.figures.p99_ms,
            r.figures.ops
        );
    }
    let rate = |t, o, c| find(rows, t, o, c).map_or(f64::NAN, |f| f.per_second);
    let redb64 = find(rows, "redb", "put", 64);
    let ratio64 = rate("etcd", "put", 64) / rate("etcd-raw", "put", 64);
    let ratio1 = rate("etcd", "put", 1) / rate("etcd-raw", "put", 1);
    let txn_ratio64 = rate("etcd", "txn3", 64) / rate("etcd-raw", "txn3", 64);
    let redb_rate_ok = redb64.is_some_and(|f| f.per_second >= 5000.0);
    let redb_p99_ok = redb64.is_some_and(|f| f.p99_ms <= 10.0);
    let etcd_ok = ratio64 >= 0.8;
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "goal: redb >= 5000 durable commits/s at concurrency 64: {:.0}/s ({})",
        rate("redb", "put", 64),
        mark(redb_rate_ok)
    );
    println!(
        "goal: redb p99 <= 10 ms at concurrency 64: {:.3} ms ({})",
        redb64.map_or(f64::NAN, |f| f.p99_ms),
        mark(redb_p99_ok)
    );
    println!(
        "goal: etcd backend >= 0.8x raw etcd put rate: {ratio64:.2}x at concurrency 64, {ratio1:.2}x at 1 ({})",
        mark(etcd_ok)
    );
    println!(
        "(same for 3-key transactions at concurrency 64: {txn_ratio64:.2}x raw etcd transactions)"
    );
    let results: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "target": r.target, "op": r.op, "concurrency": r.concurrency,
                "commits_per_s": round(r.figures.per_second), "p50_ms": round(r.figures.p50_ms),
                "p99_ms": round(r.figures.p99_ms), "ops": r.figures.ops,
            })
        })
        .collect();
    let summary = json!({
        "bench": "store",
        "results": results,
        "etcd_backend_vs_raw_put": { "c1": round(ratio1), "c64": round(ratio64) },
        "etcd_backend_vs_raw_txn3_c64": round(txn_ratio64),
        "goals_met": { "redb_rate": redb_rate_ok, "redb_p99": redb_p99_ok, "etcd_ratio": etcd_ok },
    });
    println!("{summary}");
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
