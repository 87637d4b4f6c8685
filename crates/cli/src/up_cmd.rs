//! `ringfence up`: everything that runs today, on one machine, with embedded defaults — the
//! Store and the audit log in the data directory, and Binary Authorization admitting a small
//! demo application: three services whose images are OCI layouts built locally, with SLSA
//! provenance and code reviews signed by clearly labelled local demo keys. It then keeps
//! continuous verification running until Ctrl-C. Running it again resumes the same state.
//!
//! The control plane, agents and the mesh join this command as they land.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ringfence_admission::report;
use ringfence_admission::verdict::{Attestation, Request};
use ringfence_bab::Gate;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_bab::manifest::JobManifest;
use ringfence_bab::notify::Outbox;
use ringfence_core::{Clock, SpiffeId, SystemClock};
use ringfence_provenance::dsse::{self, SigningKey};
use ringfence_provenance::{oci, review, slsa, statement};
use ringfence_store::open_store;
use serde_json::json;

use crate::config::Settings;
use crate::exit;

const DEMO_COMMIT: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
const DEMO_BUILDER: &str = "https://demo-builder.ringfence.local/v1";
const DEMO_REPO: &str = "https://git.ringfence.local/demo";

fn step(n: u8, what: &str) {
    println!("[{n}/5] {what}");
}

fn demo_key(dir: &Path, name: &str) -> Result<SigningKey> {
    let path = dir.join(format!("{name}.key"));
    if !path.exists() {
        let (_, der) = SigningKey::generate_p256()?;
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
        crate::secrets::write_new(&path, pem.as_bytes())?;
    }
    crate::attest_cmd::load_key(&path)
}

fn pem_yaml(k: &SigningKey) -> String {
    serde_json::to_string(&k.public_key().spki_pem()).unwrap_or_default()
}

struct Service {
    name: &'static str,
    mode: &'static str,
    /// Whether the demo review covers the job's configuration.
    reviewed_config: bool,
}

const SERVICES: [Service; 3] = [
    Service {
        name: "web",
        mode: "enforce",
        reviewed_config: true,
    },
    Service {
        name: "worker",
        mode: "dry-run",
        reviewed_config: false,
    },
    Service {
        name: "docs",
        mode: "allow-all",
        reviewed_config: false,
    },
];

fn write_if_changed(path: &Path, contents: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(contents) {
        std::fs::write(path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn sign_once(path: &Path, stmt: &serde_json::Value, keys: &[&SigningKey]) -> Result<()> {
    if !path.exists() {
        let env = dsse::sign(statement::PAYLOAD_TYPE, &serde_json::to_vec(stmt)?, keys)?;
        std::fs::write(path, serde_json::to_vec_pretty(&env)?)?;
    }
    Ok(())
}

pub async fn run(once: bool, settings: &Settings) -> Result<u8> {
    let data = &settings.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    println!("ringfence up: data in {}", data.display());

    step(1, "store and audit log");
    let store = open_store(&settings.store, data)
        .await
        .context("cannot open the store")?;
    let audit_dir = data.join("audit");
    if crate::audit_cmd::ensure_log_key(&audit_dir)? {
        println!(
            "      created the audit log key {}",
            audit_dir.join("log.key").display()
        );
    }
    let log = crate::audit_cmd::open_log_on(Arc::clone(&store), &audit_dir).await?;

    step(
        2,
        "demo keys (LOCAL DEMO KEYS: a stand-in builder and review system, never for production)",
    );
    let demo = data.join("demo");
    std::fs::create_dir_all(demo.join("jobs"))?;
    std::fs::write(
        demo.join("README"),
        "Local demo keys and artifacts made by `ringfence up`. The builder and review keys here\n\
         stand in for a real build system and code-review system: never trust them in production.\n",
    )?;
    let builder = [
        demo_key(&demo, "demo-builder-a")?,
        demo_key(&demo, "demo-builder-b")?,
    ];
    let reviewer = demo_key(&demo, "demo-review")?;

    step(
        3,
        "demo images (OCI layouts), signed provenance and reviews, into the artifact store",
    );
    let artifacts = ArtifactStore::open(&data.join("artifacts"))?;
    let mut jobs = Vec::new();
    for svc in &SERVICES {
        let script = format!(
            "#!/bin/sh\necho \"{} (Ringfence demo) listening\"\nexec sleep 3600\n",
            svc.name
        );
        let layer = oci::tar(&[(&format!("bin/{}", svc.name), 0o755, script.as_bytes())]);
        let layout = demo.join(format!("{}-oci", svc.name));
        let digest = oci::write_layout(
            &layout,
            &json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": [format!("/bin/{}", svc.name)]}}),
            &[layer],
            &format!("{}:demo", svc.name),
        )?;
        let manifest = format!(
            "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: {n}-1, namespace: demo}}\nspec:\n  service: {n}\n  environment: production\n  image: registry.ringfence.local/demo/{n}@{digest}\n  args: [--port=8080]\n  replicas: 1\n  ring: hardened\n  ports: [{{name: http, port: 8080}}]\n",
            n = svc.name
        );
        let job_path = demo.join("jobs").join(format!("{}.yaml", svc.name));
        write_if_changed(&job_path, manifest.as_bytes())?;
        let (_, job) = JobManifest::parse(manifest.as_bytes()).map_err(anyhow::Error::msg)?;
        let prov = demo.join(format!("{}.provenance.dsse.json", svc.name));
        let rev = demo.join(format!("{}.review.dsse.json", svc.name));
        let now = slsa::format_time(SystemClock.now());
        sign_once(
            &prov,
            &statement::build(
                &[(svc.name, &digest.to_string())],
                slsa::PREDICATE_TYPE,
                json!({"buildDefinition": {"buildType": slsa::RINGFENCE_BUILD_TYPE,
                        "externalParameters": {"source": {"repository": format!("{DEMO_REPO}/{}", svc.name), "ref": "refs/heads/main", "commit": DEMO_COMMIT}}},
                       "runDetails": {"builder": {"id": DEMO_BUILDER}, "metadata": {"finishedOn": now}}}),
            ),
            &[&builder[0], &builder[1]],
        )?;
        let mut subjects = vec![("source".to_owned(), format!("gitCommit:{DEMO_COMMIT}"))];
        if svc.reviewed_config {
            subjects.push((
                format!("jobs/{}.yaml", svc.name),
                job.config_digest.to_string(),
            ));
        }
        let subjects: Vec<(&str, &str)> = subjects
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        sign_once(
            &rev,
            &statement::build(
                &subjects,
                review::PREDICATE_TYPE,
                json!({"repository": format!("{DEMO_REPO}/{}", svc.name), "ref": "refs/heads/main", "commit": DEMO_COMMIT,
                       "author": "alice", "reviewers": [{"name": "bob", "timestamp": now}],
                       "ownerApproval": {"name": "carol", "timestamp": now}, "mergedOn": now}),
            ),
            &[&reviewer],
        )?;
        let atts = [prov, rev]
            .iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok((name, std::fs::read(p)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let pushed = artifacts.push(&layout, &atts, SystemClock.now())?;
        println!("      {:<7} {}", svc.name, pushed.record.digest);
        jobs.push((svc, job, atts));
    }

    step(
        4,
        "service policies, then admission of each job (every verdict in the audit log)",
    );
    let mut notify = settings.notify_config();
    notify
        .sinks
        .entry("demo-owners".into())
        .or_insert_with(|| ringfence_bab::SinkConfig::File {
            path: data.join("notifications").join("demo-owners.jsonl"),
        });
    let outbox = Outbox::open(&data.join("outbox"), notify)?;
    let actor = SpiffeId::parse("spiffe://ringfence.local/ringfence/admission")?;
    let gate = Gate::new(
        Arc::clone(&store),
        Arc::new(log),
        outbox,
        Arc::new(SystemClock),
        actor,
    );
    for svc in &SERVICES {
        let spec = if svc.mode == "allow-all" {
            "  allowAll: {justification: \"public documentation, no user data\", approvedBy: carol}\n".to_owned()
        } else {
            format!(
                "  mode: {}\n  images: {{repositories: [\"registry.ringfence.local/demo/*\"]}}\n  builders:\n    - id: {DEMO_BUILDER}\n      threshold: 2\n      keys:\n        - {{name: demo-builder-a, publicKey: {}}}\n        - {{name: demo-builder-b, publicKey: {}}}\n  source: {{repositories: [\"{DEMO_REPO}/*\"], refs: [refs/heads/main]}}\n  review:\n    minReviewers: 1\n    ownerApproval: true\n    configReviewed: true\n    keys: [{{name: demo-review, publicKey: {}}}]\n  maxAge: 90days\n",
                svc.mode,
                pem_yaml(&builder[0]),
                pem_yaml(&builder[1]),
                pem_yaml(&reviewer)
            )
        };
        let yaml = format!(
            "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {{name: demo-{n}}}\nspec:\n  namespace: demo\n  service: {n}\n  environments: [production]\n{spec}{notify}",
            notify = if svc.mode == "allow-all" {
                ""
            } else {
                "  notify: {owners: demo-owners}\n"
            },
            n = svc.name
        );
        let path = demo.join(format!("{}.policy.yaml", svc.name));
        write_if_changed(&path, yaml.as_bytes())?;
        gate.apply_policy(&yaml, "ringfence-up").await?;
    }
    for (svc, job, atts) in &jobs {
        let atts: Vec<Attestation> = atts
            .iter()
            .map(|(name, bytes)| {
                Ok(Attestation {
                    source: name.clone(),
                    envelope: dsse::parse(bytes)?,
                })
            })
            .collect::<Result<_>>()?;
        let v = gate
            .admit(job, &atts, &Request::Normal, "ringfence-up")
            .await?;
        println!(
            "      {:<7} {} ({})",
            svc.name,
            if v.admit { "admitted" } else { "DENIED" },
            v.basis
        );
    }

    step(5, "conformance report");
    let r = gate.report().await?;
    for line in report::table(&r).lines() {
        println!("      {line}");
    }
    let d = data.display();
    println!(
        "\nTry next:\n  ringfence --data-dir {d} bab report                      # the report again (--output json)\n  ringfence --data-dir {d} audit tail                      # every verdict, in the tamper-evident log\n  ringfence --data-dir {d} audit verify                    # recompute the log and check its signatures\n  ringfence --data-dir {d} artifact list                   # the demo images and their attestations\n  ringfence --data-dir {d} attest verify --policy {d}/demo/web.policy.yaml --image {d}/demo/web-oci \\\n      --repository registry.ringfence.local/demo/web --job {d}/demo/jobs/web.yaml\n  ringfence --data-dir {d} bab admit --job {d}/demo/jobs/worker.yaml --break-glass \"INC-1: demo\"\n  cat {d}/notifications/*.jsonl                             # what the security team and the owners were told\n"
    );
    if once {
        return Ok(exit::SUCCESS);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    println!(
        "Continuous verification is running (every policy change, and at least daily). Ctrl-C stops."
    );
    gate.watch(Duration::from_secs(24 * 3600), rx).await?;
    println!("stopped; run `ringfence up` again to resume");
    Ok(exit::SUCCESS)
}
