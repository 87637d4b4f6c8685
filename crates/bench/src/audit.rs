//! The audit benchmark: durable appends/s from 64 concurrent writers into a log of
//! `--entries` entries (default 1,000,000) on the embedded store, the time from append to the
//! first published checkpoint that covers it, proof generation from storage and proof
//! verification at full size; the Store's raw put rate at the same concurrency, in the same
//! run, for the ratio.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ringfence_audit::checkpoint::Checkpoint;
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::rfc9162::{leaf_hash, verify_consistency, verify_inclusion};
use ringfence_audit::{AuditLog, Decision, Event, LogOptions};
use ringfence_core::{Clock, SpiffeId, SystemClock};
use ringfence_store::{Expect, Key, RedbOptions, RedbStore, Store};
use serde_json::json;
use tokio::sync::Mutex;

use crate::stats::figures;

const WRITERS: usize = 64;

pub async fn run(entries: u64, dir: &Path) -> Result<()> {
    let base = tempfile::Builder::new()
        .prefix("ringfence-bench-audit-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    eprintln!(
        "audit benchmark: {entries} entries, {WRITERS} writers, scratch files in {}",
        base.path().display()
    );

    // The raw Store rate first, on its own file, same disk, same concurrency.
    let raw_store: Arc<dyn Store> = Arc::new(RedbStore::open_in(
        &base.path().join("raw"),
        RedbOptions::default(),
    )?);
    let raw = raw_put_rate(raw_store, Duration::from_secs(3)).await?;
    eprintln!("  raw store put, concurrency {WRITERS}: {raw:.0}/s");

    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in(
        &base.path().join("log"),
        RedbOptions::default(),
    )?);
    let signer = Signer::generate("bench.ringfence/audit", TYPE_ED25519)?;
    let verifier = signer.verifier();
    let options = LogOptions {
        origin: signer.name().to_owned(),
        ..LogOptions::default()
    };
    let interval = options.checkpoint_interval;
    let log = AuditLog::open(Arc::clone(&store), signer, options).await?;
    let _publisher = log.spawn_publisher();

    // Checkpoint publication times, to measure time-to-checkpoint.
    let published: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut cps = log.subscribe_checkpoints();
    let recorder = {
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            while cps.changed().await.is_ok() {
                let size = cps.borrow_and_update().as_ref().map(|p| p.size);
                if let Some(size) = size {
                    published.lock().await.push((size, Instant::now()));
                }
            }
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let actor = SpiffeId::parse("spiffe://bench.ringfence/ringfence/controlplane")?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (log, next, actor) = (log.clone(), Arc::clone(&next), actor.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sampled = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= entries {
                    break;
                }
                let event = Event::new(
                    SystemClock.now(),
                    actor.clone(),
                    "identity.issue",
                    format!("spiffe://bench.ringfence/ns/prod/svc/s{}", n % 1000),
                    Decision::Allow,
                    "admitted and placed on node-7",
                )
                .with_detail("serial", format!("{n:016x}"));
                let t = Instant::now();
                let index = log.append(&event).await?;
                latencies.push(t.elapsed());
                if n % 97 == 0 {
                    sampled.push((index, t));
                }
            }
            Ok::<_, anyhow::Error>((latencies, sampled))
        }));
    }
    let mut latencies = Vec::new();
    let mut sampled = Vec::new();
    let mut last_report = Instant::now();
    for t in tasks {
        let (l, s) = t.await??;
        latencies.extend(l);
        sampled.extend(s);
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("  ... {} entries appended", log.head().size);
            last_report = Instant::now();
        }
    }
    let append = figures(latencies, started.elapsed());
    eprintln!(
        "  appends: {:.0}/s, p99 {:.2} ms",
        append.per_second, append.p99_ms
    );

    // Let the last checkpoint land, then match each sampled append to the first checkpoint
    // that covers it.
    let deadline = Instant::now() + interval * 3;
    while log.latest_checkpoint().map_or(0, |p| p.size) < log.head().size
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorder.abort();
    let published = published.lock().await.clone();
    let mut to_checkpoint = Vec::new();
    for (index, appended_at) in &sampled {
        if let Some((_, at)) = published.iter().find(|(size, _)| size > index) {
            to_checkpoint.push(at.saturating_duration_since(*appended_at));
        }
    }
    let cp_figures = figures(to_checkpoint, Duration::from_secs(1));
    eprintln!(
        "  append to checkpoint: p50 {:.0} ms, p99 {:.0} ms",
        cp_figures.p50_ms, cp_figures.p99_ms
    );

    // Proofs at full size.
    let latest = log.latest_checkpoint().context("no checkpoint published")?;
    let (cp, _) = Checkpoint::open(latest.text.as_bytes(), &verifier, log.origin())?;
    let size = cp.size;
    let samples = 1000u64;
    let mut gen_inclusion = Vec::new();
    let mut proofs = Vec::new();
    for k in 0..samples {
        let index = (k * 7919 * 104_729) % size;
        let t = Instant::now();
        let proof = log.inclusion_proof(index, size).await?;
        gen_inclusion.push(t.elapsed());
        proofs.push((index, leaf_hash(&log.entry(index).await?), proof));
    }
    let mut gen_consistency = Vec::new();
    let mut cproofs = Vec::new();
    for k in 1..=samples / 10 {
        let from = (k * 104_729) % size;
        let t = Instant::now();
        let proof = log.consistency_proof(from.max(1), size).await?;
        gen_consistency.push(t.elapsed());
        cproofs.push((from.max(1), log.root_at(from.max(1)).await?, proof));
    }
    let rounds = 10;
    let t = Instant::now();
    for _ in 0..rounds {
        for (index, leaf, proof) in &proofs {
            verify_inclusion(*index, size, leaf, proof, &cp.root)?;
        }
    }
    let verify_inclusion_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * proofs.len()) as f64;
    let t = Instant::now();
    for _ in 0..rounds {
        for (from, root1, proof) in &cproofs {
            verify_consistency(*from, size, proof, root1, &cp.root)?;
        }
    }
    let verify_consistency_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * cproofs.len()) as f64;
    let t = Instant::now();
    for _ in 0..1000 {
        Checkpoint::open(latest.text.as_bytes(), &verifier, log.origin())?;
    }
    let checkpoint_verify_us = t.elapsed().as_secs_f64() * 1e6 / 1000.0;
    let gi = figures(gen_inclusion, Duration::from_secs(1));
    let gc = figures(gen_consistency, Duration::from_secs(1));

    let ratio = append.per_second / raw;
    println!();
    println!("{:<44} {:>14}", "figure", "value");
    let rows = [
        ("entries in the log", format!("{size}")),
        (
            "durable appends/s (64 writers)",
            format!("{:.0}", append.per_second),
        ),
        (
            "append latency p50 / p99 (ms)",
            format!("{:.2} / {:.2}", append.p50_ms, append.p99_ms),
        ),
        ("raw store puts/s (64 writers)", format!("{raw:.0}")),
        ("appends / raw puts", format!("{ratio:.2}x")),
        (
            "append to checkpoint p50 / p99 (ms)",
            format!("{:.0} / {:.0}", cp_figures.p50_ms, cp_figures.p99_ms),
        ),
        (
            "inclusion proof generation p50 / p99 (ms)",
            format!("{:.3} / {:.3}", gi.p50_ms, gi.p99_ms),
        ),
        (
            "consistency proof generation p50 / p99 (ms)",
            format!("{:.3} / {:.3}", gc.p50_ms, gc.p99_ms),
        ),
        (
            "inclusion proof verification (us)",
            format!("{verify_inclusion_us:.2}"),
        ),
        (
            "consistency proof verification (us)",
            format!("{verify_consistency_us:.2}"),
        ),
        (
            "checkpoint signature verification (us)",
            format!("{checkpoint_verify_us:.1}"),
        ),
    ];
    for (k, v) in &rows {
        println!("{k:<44} {v:>14}");
    }
    let goals = json!({
        "appends_per_s_ge_5000": append.per_second >= 5000.0,
        "checkpoint_p99_le_1s": cp_figures.p99_ms <= 1000.0,
        "verify_le_20us": verify_inclusion_us <= 20.0 && verify_consistency_us <= 20.0,
    });
    println!();
    println!("goals: {goals}");
    println!(
        "{}",
        json!({
            "bench": "audit",
            "entries": size,
            "appends_per_s": append.per_second.round(),
            "append_p50_ms": append.p50_ms, "append_p99_ms": append.p99_ms,
            "raw_store_puts_per_s": raw.round(),
            "appends_vs_raw_puts": (ratio * 1000.0).round() / 1000.0,
            "append_to_checkpoint_p50_ms": cp_figures.p50_ms, "append_to_checkpoint_p99_ms": cp_figures.p99_ms,
            "inclusion_proof_gen_p99_ms": gi.p99_ms, "consistency_proof_gen_p99_ms": gc.p99_ms,
            "inclusion_verify_us": verify_inclusion_us, "consistency_verify_us": verify_consistency_us,
            "checkpoint_signature_verify_us": checkpoint_verify_us,
            "goals_met": goals,
        })
    );
    Ok(())
}

async fn raw_put_rate(store: Arc<dyn Store>, duration: Duration) -> Result<f64> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..WRITERS {
        let (store, count) = (Arc::clone(&store), Arc::clone(&count));
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                store
                    .put(
                        &Key::new(format!("/raw/{task}/{i}"))?,
                        vec![7; 300],
                        Expect::Any,
                    )
                    .await?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
