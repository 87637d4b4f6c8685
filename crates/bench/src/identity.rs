//! The identity benchmark: X.509-SVIDs issued per second end to end (CSR checks, signature
//! verification, signing, and the audit append that must succeed before an SVID is handed
//! out), p99 latency, a burst re-issue of 10,000 SVIDs with memory before and after, and the
//! P-256 sign and verify ceiling measured by the same harness for the ratio.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use rcgen::{CertificateParams, SanType};
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditLog, LogOptions};
use ringfence_core::{MachineId, SpiffeId, SystemClock, TrustDomain, UnixTime};
use ringfence_identity::{Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService};
use ringfence_store::{RedbOptions, RedbStore, Store};
use serde_json::json;

use crate::stats::figures;

const TASKS: usize = 16;

struct Placed;

impl IssuanceAuthority for Placed {
    fn authorize(
        &self,
        machine: &MachineId,
        id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Ok(IssuanceAuthorization {
            spiffe_id: id.clone(),
            machine: machine.clone(),
            not_after: UnixTime::from_millis(u64::MAX),
        })
    }
}

pub async fn run(count: usize, dir: &Path) -> Result<()> {
    let base = tempfile::Builder::new()
        .prefix("ringfence-bench-identity-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a scratch directory in {}", dir.display()))?;
    eprintln!(
        "identity benchmark: {count} CSRs per run, {TASKS} concurrent requests, scratch files in {}",
        base.path().display()
    );

    // The ceiling: raw P-256 signing and verification, same harness, same cores.
    let (sign_per_s, verify_per_s) = p256_ceiling(Duration::from_secs(2))?;
    eprintln!(
        "  P-256 ceiling: {sign_per_s:.0} signs/s, {verify_per_s:.0} verifies/s (both cores)"
    );

    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in(
        base.path(),
        RedbOptions {
            cache_bytes: 16 * 1024 * 1024,
            ..RedbOptions::default()
        },
    )?);
    let key = Signer::generate("bench.ringfence/audit", TYPE_ED25519)?;
    let log = AuditLog::open(
        store,
        key,
        LogOptions {
            origin: "bench.ringfence/audit".into(),
            ..LogOptions::default()
        },
    )
    .await?;
    let td = TrustDomain::parse("bench.ringfence")?;
    let now = ringfence_core::Clock::now(&SystemClock);
    let ca = Arc::new(CaSet::new(Ca::generate(
        td,
        now,
        Duration::from_secs(86_400),
    )?));
    let service = Arc::new(IssuanceService::new(
        ca,
        Arc::new(Placed),
        Arc::new(log.clone()),
        Arc::new(SystemClock),
    )?);

    // Workloads make their CSRs (their own CPU, not the CA's): prepared before timing.
    eprintln!("  preparing {count} CSRs ...");
    let csrs = Arc::new(make_csrs(count)?);
    let machine = MachineId::parse("node-1")?;

    let (steady, latencies) = issue_all(&service, &csrs, &machine).await?;
    let steady_fig = figures(latencies, steady);
    eprintln!(
        "  steady: {:.0} SVIDs/s, p99 {:.2} ms",
        steady_fig.per_second, steady_fig.p99_ms
    );

    // Burst: the whole fleet re-issues at once, three times; memory must level off (caches
    // fill during the first bursts, then nothing grows).
    let rss_start = rss_kib();
    let (burst, _) = issue_all(&service, &csrs, &machine).await?;
    let mut rss_after_each = vec![rss_kib()];
    for _ in 0..5 {
        issue_all(&service, &csrs, &machine).await?;
        rss_after_each.push(rss_kib());
    }
    // The audit store's page cache (16 MiB here) and the allocator fill during the first
    // bursts; after that, memory must not grow.
    let rss_before = rss_after_each.get(3).copied().unwrap_or(f64::NAN);
    let rss_after = rss_after_each.last().copied().unwrap_or(f64::NAN);
    eprintln!("  burst of {count}: {:.2} s", burst.as_secs_f64());

    let ratio = steady_fig.per_second / sign_per_s;
    println!();
    println!("{:<50} {:>20}", "figure", "value");
    for (k, v) in [
        (
            "SVIDs issued/s (CSR verify + sign + audit)",
            format!("{:.0}", steady_fig.per_second),
        ),
        (
            "issuance latency p50 / p99 (ms)",
            format!("{:.2} / {:.2}", steady_fig.p50_ms, steady_fig.p99_ms),
        ),
        ("P-256 signs/s (ceiling)", format!("{sign_per_s:.0}")),
        ("P-256 verifies/s (ceiling)", format!("{verify_per_s:.0}")),
        ("issuance / sign ceiling", format!("{ratio:.2}x")),
        (
            "issuance / verify ceiling",
            format!("{:.2}x", steady_fig.per_second / verify_per_s),
        ),
        (
            &*format!("burst re-issue of {count} (s)"),
            format!("{:.2}", burst.as_secs_f64()),
        ),
        (
            "RSS after bursts 1..6 (MiB)",
            rss_after_each
                .iter()
                .map(|k| format!("{:.0}", k / 1024.0))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("audit entries written", format!("{}", log.head().size)),
    ] {
        println!("{k:<50} {v:>20}");
    }
    let goals = json!({
        "svids_per_s_ge_5000": steady_fig.per_second >= 5000.0,
        "burst_10000_le_5s": count >= 10_000 && burst <= Duration::from_secs(5),
        "memory_flat": rss_after <= rss_before * 1.05,
    });
    println!();
    println!("goals: {goals}");
    println!(
        "{}",
        json!({
            "bench": "identity",
            "svids_per_s": steady_fig.per_second.round(),
            "issue_p50_ms": steady_fig.p50_ms, "issue_p99_ms": steady_fig.p99_ms,
            "p256_sign_per_s": sign_per_s.round(), "p256_verify_per_s": verify_per_s.round(),
            "issuance_vs_sign_ceiling": (ratio * 1000.0).round() / 1000.0,
            "burst": count, "burst_s": burst.as_secs_f64(),
            "rss_start_kib": rss_start, "rss_after_each_burst_kib": rss_after_each,
            "goals_met": goals,
        })
    );
    Ok(())
}

fn make_csrs(count: usize) -> Result<Vec<Vec<u8>>> {
    (0..count)
        .map(|i| {
            let key = rcgen::KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.subject_alt_names = vec![SanType::URI(
                format!("spiffe://bench.ringfence/ns/prod/svc/s{i}").try_into()?,
            )];
            Ok(params.serialize_request(&key)?.der().to_vec())
        })
        .collect()
}

async fn issue_all(
    service: &Arc<IssuanceService>,
    csrs: &Arc<Vec<Vec<u8>>>,
    machine: &MachineId,
) -> Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (service, csrs, next, machine) = (
            Arc::clone(service),
            Arc::clone(csrs),
            Arc::clone(&next),
            machine.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(csr) = csrs.get(i) else { break };
                let t = Instant::now();
                service.issue(csr, &machine).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((started.elapsed(), all))
}

/// Signs and verifies per second with P-256 on both cores (two threads).
fn p256_ceiling(duration: Duration) -> Result<(f64, f64)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let pair = Arc::new(
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("key"))?,
    );
    let msg = [7u8; 300];
    let sig = pair.sign(&rng, &msg).map_err(|_| anyhow::anyhow!("sign"))?;
    let public = pair.public_key().as_ref().to_vec();
    let run = |f: Arc<dyn Fn() + Send + Sync>| -> f64 {
        let deadline = Instant::now() + duration;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        f();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        total as f64 / duration.as_secs_f64()
    };
    let signer = Arc::clone(&pair);
    let signs = run(Arc::new(move || {
        let _ = signer.sign(&SystemRandom::new(), &msg);
    }));
    let sig_bytes = sig.as_ref().to_vec();
    let verifies = run(Arc::new(move || {
        let _ = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public).verify(&msg, &sig_bytes);
    }));
    Ok((signs, verifies))
}

/// Resident set size of this process, KiB.
fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
                })
                .flatten()
        })
        .unwrap_or(f64::NAN)
}
