//! Binary Authorization verdicts: a policy requiring three attestations (SLSA provenance,
//! code review, a vulnerability scan) with two signatures each, evaluated one verdict at a
//! time on one core (p50/p99, verdicts/s); then a continuous-verification pass over 10,000
//! running jobs on every core. The ceiling — raw P-256 verifications on one core, six per
//! verdict — is measured by the same harness in the same run.

use std::time::{Duration, Instant};

use anyhow::Result;
use ringfence_admission::continuous::{Deployment, reverify};
use ringfence_admission::policy::{Policy, PolicySet};
use ringfence_admission::verdict::{Attestation, Job, Request, evaluate};
use ringfence_core::UnixTime;
use ringfence_provenance::dsse::{self, SigningKey};
use ringfence_provenance::statement::{self, Sha256};
use ringfence_provenance::{review, slsa};
use serde_json::json;

use crate::stats::figures;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const SCAN: &str = "https://in-toto.io/attestation/vulns/v0.2";

struct Setup {
    policies: PolicySet,
    job: Job,
    attestations: Vec<Attestation>,
    now: UnixTime,
}

/// The key type attestors sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (the default for builders and review systems)
    P256,
    /// Ed25519
    Ed25519,
}

fn keys(kind: KeyType) -> Result<[SigningKey; 2]> {
    let one = || match kind {
        KeyType::P256 => SigningKey::generate_p256(),
        KeyType::Ed25519 => SigningKey::generate_ed25519(),
    };
    Ok([one()?.0, one()?.0])
}

fn pems(keys: &[SigningKey; 2], name: &str) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "        - {{name: {name}-{i}, publicKey: {}}}\n",
                serde_json::to_string(&k.public_key().spki_pem()).unwrap_or_default()
            )
        })
        .collect()
}

fn sign(stmt: &serde_json::Value, keys: &[SigningKey; 2], name: &str) -> Result<Attestation> {
    Ok(Attestation {
        source: name.into(),
        envelope: dsse::sign(
            statement::PAYLOAD_TYPE,
            &serde_json::to_vec(stmt)?,
            &[&keys[0], &keys[1]],
        )?,
    })
}

fn setup(kind: KeyType) -> Result<Setup> {
    let (b, r, s) = (keys(kind)?, keys(kind)?, keys(kind)?);
    let yaml = format!(
        "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {{name: web}}\nspec:\n  namespace: payments\n  service: web\n  images: {{repositories: [\"registry.acme.test/payments/*\"]}}\n  builders:\n    - id: https://builder.acme.test/v1\n      threshold: 2\n      keys:\n{}  source: {{repositories: [\"https://git.acme.test/**\"], refs: [refs/heads/main]}}\n  review:\n    minReviewers: 1\n    configReviewed: true\n    threshold: 2\n    keys:\n{}  attestations:\n    - predicateType: {SCAN}\n      threshold: 2\n      keys:\n{}  maxAge: 30days\n",
        pems(&b, "ci"),
        pems(&r, "review").replace("        -", "      -"),
        pems(&s, "scan")
    );
    let policies = PolicySet::new(vec![Policy::from_yaml(&yaml)?])?;
    let image = Sha256::of(b"bench image");
    let config = Sha256::of(b"bench config");
    let prov = statement::build(
        &[("web", &image.to_string())],
        slsa::PREDICATE_TYPE,
        json!({"buildDefinition": {"buildType": slsa::RINGFENCE_BUILD_TYPE,
                "externalParameters": {"source": {"repository": "https://git.acme.test/payments/web", "ref": "refs/heads/main", "commit": COMMIT}}},
               "runDetails": {"builder": {"id": "https://builder.acme.test/v1"}, "metadata": {"finishedOn": "2026-11-25T10:00:00Z"}}}),
    );
    let rev = statement::build(
        &[
            ("src", &format!("gitCommit:{COMMIT}")),
            ("job.yaml", &config.to_string()),
        ],
        review::PREDICATE_TYPE,
        json!({"repository": "https://git.acme.test/payments/web", "ref": "refs/heads/main", "commit": COMMIT, "author": "alice",
               "reviewers": [{"name": "bob", "timestamp": "2026-11-25T09:00:00Z"}], "mergedOn": "2026-11-25T09:30:00Z"}),
    );
    let scan = statement::build(
        &[("web", &image.to_string())],
        SCAN,
        json!({"scanner": {"result": []}}),
    );
    Ok(Setup {
        policies,
        job: Job {
            name: "web-1".into(),
            namespace: "payments".into(),
            service: "web".into(),
            environment: "production".into(),
            image: format!("registry.acme.test/payments/web@{image}"),
            config_digest: config,
        },
        attestations: vec![
            sign(&prov, &b, "provenance")?,
            sign(&rev, &r, "review")?,
            sign(&scan, &s, "scan")?,
        ],
        now: slsa::parse_time("2026-11-25T12:00:00Z")?,
    })
}

/// Raw verifications per second on one core: a key parsed once, a signature over a 1 KiB
/// message (about one statement's PAE), straight through aws-lc.
fn verify_ceiling(period: Duration, kind: KeyType) -> Result<f64> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair, ParsedPublicKey,
    };
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let message = vec![7u8; 1024];
    let (key, sig) = if kind == KeyType::Ed25519 {
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("keygen"))?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow::anyhow!("key"))?;
        let sig = pair.sign(&message).as_ref().to_vec();
        let key = ParsedPublicKey::new(&ED25519, pair.public_key().as_ref())
            .map_err(|_| anyhow::anyhow!("parse"))?;
        (key, sig)
    } else {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("keygen"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref())
            .map_err(|_| anyhow::anyhow!("key"))?;
        let sig = pair
            .sign(&rng, &message)
            .map_err(|_| anyhow::anyhow!("sign"))?
            .as_ref()
            .to_vec();
        let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pair.public_key().as_ref())
            .map_err(|_| anyhow::anyhow!("parse"))?;
        (key, sig)
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < period {
        key.verify_sig(&message, &sig)
            .map_err(|_| anyhow::anyhow!("verify"))?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub fn run(seconds: f64, jobs: usize, kind: KeyType) -> Result<()> {
    let s = setup(kind)?;
    let first = evaluate(
        &s.policies,
        &s.job,
        &s.attestations,
        s.now,
        &Request::Normal,
    );
    anyhow::ensure!(
        first.admit && first.findings.is_empty(),
        "the bench job must be compliant: {:?}",
        first.findings
    );
    let period = Duration::from_secs_f64(seconds);

    eprintln!("measuring the {kind:?} verify ceiling (one core, {seconds}s)...");
    let ceiling_verifies = verify_ceiling(period, kind)?;
    let ceiling_verdicts = ceiling_verifies / 6.0;

    eprintln!("measuring verdicts (one core, {seconds}s)...");
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < period {
        let t = Instant::now();
        let v = evaluate(
            &s.policies,
            &s.job,
            &s.attestations,
            s.now,
            &Request::Normal,
        );
        samples.push(t.elapsed());
        anyhow::ensure!(v.admit, "verdict changed");
    }
    let f = figures(samples, start.elapsed());

    eprintln!("building {jobs} running jobs and re-verifying them...");
    let deployments: Vec<Deployment> = (0..jobs)
        .map(|i| {
            let mut job = s.job.clone();
            job.name = format!("web-{i}");
            Deployment {
                id: format!("d{i}"),
                job,
                attestations: s.attestations.clone(),
                admitted: first.clone(),
                deployed_at: s.now,
            }
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let t = Instant::now();
    let statuses = reverify(&s.policies, &deployments, s.now, threads);
    let reverify_all = t.elapsed();
    anyhow::ensure!(
        statuses.iter().all(|x| x.flags.is_empty()),
        "re-verification flagged a compliant job"
    );

    let rows = [
        ("verdicts/s (one core)", format!("{:.0}", f.per_second)),
        ("verdict p50", format!("{:.3} ms", f.p50_ms)),
        ("verdict p99", format!("{:.3} ms", f.p99_ms)),
        (
            "verifies/s (one core, ceiling)",
            format!("{ceiling_verifies:.0}"),
        ),
        (
            "ceiling verdicts/s (6 verifies each)",
            format!("{ceiling_verdicts:.0}"),
        ),
        (
            "verdicts / ceiling",
            format!("{:.2}x", f.per_second / ceiling_verdicts),
        ),
        (
            "continuous verification",
            format!(
                "{jobs} jobs in {:.2} s on {threads} core(s)",
                reverify_all.as_secs_f64()
            ),
        ),
    ];
    println!("\nBinary Authorization (3 attestations x 2 {kind:?} signatures)");
    for (k, v) in rows {
        println!("  {k:<40} {v}");
    }
    let goals_met = f.p99_ms <= 2.0 && f.per_second >= 2000.0 && reverify_all.as_secs_f64() <= 5.0;
    println!(
        "  goals (p99 <= 2 ms, >= 2,000 verdicts/s/core, {jobs} jobs <= 5 s): {}",
        if goals_met { "met" } else { "NOT met" }
    );
    println!(
        "{}",
        json!({
            "bench": "admission",
            "key_type": format!("{kind:?}").to_lowercase(),
            "verdicts_per_s_one_core": f.per_second.round(),
            "verdict_p50_ms": (f.p50_ms * 1000.0).round() / 1000.0,
            "verdict_p99_ms": (f.p99_ms * 1000.0).round() / 1000.0,
            "verifies_per_s_one_core": ceiling_verifies.round(),
            "verdicts_vs_ceiling": ((f.per_second / ceiling_verdicts) * 1000.0).round() / 1000.0,
            "reverify_jobs": jobs,
            "reverify_seconds": (reverify_all.as_secs_f64() * 1000.0).round() / 1000.0,
            "reverify_threads": threads,
            "goals_met": goals_met,
        })
    );
    Ok(())
}
