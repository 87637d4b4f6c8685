//! The job lifecycle end to end on this host: the control plane over the embedded Store and
//! the audit log, the CA, and four local agents running tasks in the sandbox. Submit-to-running
//! latency (admission, placement, the agent noticing its assignment, fetching the image,
//! starting the sandbox, the task's SVID issued and served) for jobs submitted one at a time
//! and all at once, then control-plane calls per second.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ringfence_admission::verdict::Request;
use ringfence_agent::node::{AgentConfig, ControlPlaneApi, Local};
use ringfence_agent::{Backoff, RunnerConfig};
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditLog, LogOptions};
use ringfence_bab::Gate;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_bab::notify::{NotifyConfig, Outbox};
use ringfence_controlplane::{ControlPlane, Registration, Settings, TaskReport};
use ringfence_core::{Clock, SpiffeId, SystemClock, TrustDomain};
use ringfence_identity::{Ca, CaSet, IssuanceService};
use ringfence_sched::{Pool, Resources};
use ringfence_store::{RedbOptions, RedbStore, Store};
use serde_json::json;

use crate::stats::{Figures, figures};

const MACHINES: [(&str, Pool); 4] = [
    ("found-1", Pool::Foundational),
    ("prod-1", Pool::Production),
    ("prod-2", Pool::Production),
    ("dev-1", Pool::Development),
];

fn manifest(name: &str, digest: &str) -> Vec<u8> {
    format!(
        "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  service: svc-{name}\n  environment: production\n  image: registry.bench.test/bench/app@{digest}\n  args: [unix-connect, /run/spiffe/workload.sock]\n  ring: hardened\n"
    )
    .into_bytes()
}

/// Submits `names` (all at once, in order) and returns each job's submit-to-running time.
async fn submit_and_wait(
    cp: &ControlPlane,
    names: &[String],
    digest: &str,
) -> Result<Vec<Duration>> {
    let mut started = BTreeMap::new();
    for n in names {
        let t0 = Instant::now();
        let job = cp
            .submit(&manifest(n, digest), &[], &Request::Normal, "bench")
            .await?;
        if job.tasks.iter().any(|t| t.machine.is_none()) {
            bail!("{n} was not placed: {}", job.state);
        }
        started.insert(format!("bench.svc-{n}.{n}.0"), t0);
    }
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !started.is_empty() {
        if Instant::now() > deadline {
            bail!("{} tasks never ran with an SVID", started.len());
        }
        for (task, s) in cp.task_statuses().await? {
            if s.report.state == "failed" {
                bail!("{task} failed: {}", s.report.detail);
            }
            if s.report.state == "running"
                && s.report.svid
                && let Some(t0) = started.remove(&task)
            {
                done.push(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(done)
}

async fn stop_all(cp: &ControlPlane, names: &[String]) -> Result<()> {
    for n in names {
        cp.stop("bench", n, "bench").await?;
    }
    // Until the agents have ended every task.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cp
        .task_statuses()
        .await?
        .values()
        .any(|s| s.report.state == "running")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn row(name: &str, f: &Figures) {
    println!(
        "{name:<44} {:>6} {:>10.1} {:>9.2} {:>9.2}",
        f.ops, f.per_second, f.p50_ms, f.p99_ms
    );
}

pub async fn run(jobs: usize, poll: Duration, dir: &Path) -> Result<()> {
    if !ringfence_sandbox::run::is_root() {
        bail!("the lifecycle benchmark runs tasks in the sandbox: run it as root");
    }
    let tmp = tempfile::Builder::new()
        .prefix("ringfence-bench-lifecycle")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a directory in {}", dir.display()))?;
    // The tasks' uids traverse it to reach their rootfs.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let root = tmp.path();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in(root, RedbOptions::default())?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log = Arc::new(
        AuditLog::open(
            Arc::clone(&store),
            Signer::generate("bench.test/audit", TYPE_ED25519)?,
            LogOptions {
                origin: "bench.test/audit".into(),
                ..LogOptions::default()
            },
        )
        .await?,
    );
    let gate = Gate::new(
        Arc::clone(&store),
        log.clone(),
        Outbox::open(&root.join("outbox"), NotifyConfig::default())?,
        Arc::clone(&clock),
        SpiffeId::parse("spiffe://bench.test/ringfence/admission")?,
    );
    // Every service of the benchmark under one allow-all policy per service: admission
    // evaluates and audits each verdict; its signature checks are measured by `admission`.
    let td = TrustDomain::parse("bench.test")?;
    let cp = ControlPlane::new(
        Arc::clone(&store),
        log.clone(),
        gate.clone(),
        Arc::clone(&clock),
        Settings::new(td.clone()),
    )?;
    let ca = Ca::generate(td, clock.now(), Duration::from_secs(86_400))?;
    let ca = Arc::new(CaSet::new(ca));
    let issuance = Arc::new(IssuanceService::new(
        Arc::clone(&ca),
        cp.authority(),
        log.clone(),
        Arc::clone(&clock),
    )?);

    // The image: the sandbox suites' static probe, waiting on its Workload API socket.
    let probe = root.join("probe");
    ringfence_test_util::probe::build(&probe)?;
    let layer = ringfence_provenance::oci::tar(&[("bin/probe", 0o755, &std::fs::read(&probe)?)]);
    let layout = root.join("image");
    let digest = ringfence_provenance::oci::write_layout(
        &layout,
        &json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/probe"]}}),
        &[layer],
        "app:bench",
    )?;
    let artifacts = ArtifactStore::open(&root.join("artifacts"))?;
    artifacts.push(&layout, &[], clock.now())?;
    let names = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    };
    let seq = names("s", jobs);
    let burst = names("b", jobs);
    for n in seq.iter().chain(&burst) {
        gate.apply_policy(
            &format!(
                "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {{name: {n}}}\nspec:\n  namespace: bench\n  service: svc-{n}\n  allowAll: {{justification: benchmark, approvedBy: bench}}\n"
            ),
            "bench",
        )
        .await?;
    }

    let api: Arc<dyn ControlPlaneApi> = Arc::new(Local {
        cp: cp.clone(),
        artifacts: artifacts.clone(),
        issuance,
        audit: log.clone(),
    });
    let init = crate::sandbox::sibling("ringfence-sandbox-init")?;
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut agents = Vec::new();
    for (i, (id, pool)) in MACHINES.iter().enumerate() {
        cp.assign_pool(id, *pool, "bench").await?;
        let base = 2_500_000 + u32::try_from(i)? * 256;
        agents.push(tokio::spawn(ringfence_agent::node::run(
            Arc::clone(&api),
            AgentConfig {
                registration: Registration {
                    machine: (*id).to_owned(),
                    capacity: Resources {
                        cpu_milli: 64_000,
                        memory_mib: 65_536,
                    },
                    address: "127.0.0.1".into(),
                },
                runner: RunnerConfig {
                    root: root.join("agents").join(id),
                    init_program: init.clone(),
                    uid_base: base,
                    uid_count: 256,
                    backoff: Backoff::default(),
                    log_max_bytes: 1 << 20,
                },
                poll,
                profile: "default".into(),
            },
            Arc::clone(&clock),
            stop.subscribe(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.refresh().await?;

    println!(
        "lifecycle: {jobs} jobs (hardened, allow-all), 4 local agents polling every {} ms, tasks in the sandbox",
        poll.as_millis()
    );
    println!(
        "{:<44} {:>6} {:>10} {:>9} {:>9}",
        "scenario", "ops", "ops/s", "p50 ms", "p99 ms"
    );
    // One at a time: nothing queued behind another job.
    let mut one = Vec::new();
    let t = Instant::now();
    for n in &seq {
        one.extend(submit_and_wait(&cp, std::slice::from_ref(n), &digest.to_string()).await?);
    }
    let one = figures(one, t.elapsed());
    row("submit-to-running, one job at a time", &one);
    stop_all(&cp, &seq).await?;
    // All at once.
    let t = Instant::now();
    let all = submit_and_wait(&cp, &burst, &digest.to_string()).await?;
    let all = figures(all, t.elapsed());
    row(&format!("submit-to-running, {jobs} jobs at once"), &all);

    // Control-plane calls, in process: what agents and users call most.
    let mut table = Vec::new();
    for (name, which) in [
        ("assignments(machine)", 0u8),
        ("report(machine, tasks) heartbeat", 1),
        ("job(namespace, name)", 2),
    ] {
        let t = Instant::now();
        let mut samples = Vec::new();
        while t.elapsed() < Duration::from_secs(2) {
            let s = Instant::now();
            match which {
                0 => drop(cp.assignments("prod-1").await?),
                1 => {
                    cp.report(
                        "dev-1",
                        &[TaskReport {
                            task: "none".into(),
                            state: "running".into(),
                            detail: String::new(),
                            restarts: 0,
                            svid: true,
                        }],
                    )
                    .await?
                }
                _ => drop(cp.job("bench", "b0").await?),
            }
            samples.push(s.elapsed());
        }
        let f = figures(samples, t.elapsed());
        row(name, &f);
        table.push((name, f));
    }

    // The same calls over the network API: gRPC over mTLS on loopback, with a machine SVID.
    let audit: Arc<dyn ringfence_audit::AuditSink> = log;
    let parts = ringfence_controlplane::server::ServerParts {
        cp: cp.clone(),
        store: Arc::clone(&store),
        audit: Arc::clone(&audit),
        ca: Arc::clone(&ca),
        artifacts,
        scratch: root.join("scratch"),
        people: None,
        clock: Arc::clone(&clock),
        tokens: Arc::new(
            ringfence_controlplane::server::token_service(&root.join("txn"), ca.trust_domain())
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(ringfence_controlplane::server::serve(
        parts,
        "127.0.0.1:0".parse()?,
        None,
        None,
        bound_tx,
        stop.subscribe(),
    ));
    let addr = bound_rx.await.context("the API did not start")?.api;
    // The task of job b0 and the machine it runs on: its SVID is what IssueSvid signs.
    let b0 = cp.job("bench", "b0").await?;
    let b0_machine = b0
        .tasks
        .first()
        .and_then(|t| t.machine.clone())
        .context("b0 is not placed")?;
    let node_for = |machine: String| {
        let (ca, audit, clock) = (Arc::clone(&ca), Arc::clone(&audit), Arc::clone(&clock));
        async move {
            let id = ca.trust_domain().workload(&["machine", &machine])?;
            let m = ringfence_controlplane::server::self_issue(&ca, &audit, &clock, &machine, &id)
                .await
                .map_err(anyhow::Error::msg)?;
            let (_, rx) = tokio::sync::watch::channel(Some(m));
            anyhow::Ok(ringfence_api::pb::node_client::NodeClient::new(
                ringfence_api::transport::control_plane_channel(addr, rx, Arc::clone(&clock))
                    .map_err(anyhow::Error::msg)?,
            ))
        }
    };
    let dev = node_for("dev-1".into()).await?;
    let owner = node_for(b0_machine.clone()).await?;
    let svc = SpiffeId::parse("spiffe://bench.test/ns/bench/svc/svc-b0")?;
    let csr = {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = vec![rcgen::SanType::URI(svc.as_str().try_into()?)];
        p.serialize_request(&key)?.der().to_vec()
    };
    // Warm the connections (the TLS handshake is not a call).
    dev.clone()
        .assignments(ringfence_api::pb::AssignmentsRequest {})
        .await?;
    owner
        .clone()
        .assignments(ringfence_api::pb::AssignmentsRequest {})
        .await?;
    for (name, which, concurrency) in [
        ("API Assignments (mTLS, 1 caller)", 0u8, 1usize),
        ("API Assignments (mTLS, 16 callers)", 0, 16),
        ("API Report heartbeat (mTLS, 1 caller)", 1, 1),
        ("API Report heartbeat (mTLS, 16 callers)", 1, 16),
        ("API IssueSvid, signed + audited (1 caller)", 2, 1),
    ] {
        let t = Instant::now();
        let mut callers = Vec::new();
        for _ in 0..concurrency {
            let (mut dev, mut owner, csr) = (dev.clone(), owner.clone(), csr.clone());
            callers.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                while t.elapsed() < Duration::from_secs(2) {
                    let s = Instant::now();
                    match which {
                        0 => drop(
                            dev.assignments(ringfence_api::pb::AssignmentsRequest {})
                                .await?,
                        ),
                        1 => drop(
                            dev.report(ringfence_api::pb::ReportRequest {
                                reports: vec![ringfence_api::pb::TaskReport {
                                    task: "none".into(),
                                    state: "running".into(),
                                    detail: String::new(),
                                    restarts: 0,
                                    svid: true,
                                }],
                            })
                            .await?,
                        ),
                        _ => drop(
                            owner
                                .issue_svid(ringfence_api::pb::CsrRequest {
                                    csr_der: csr.clone(),
                                })
                                .await?,
                        ),
                    }
                    samples.push(s.elapsed());
                }
                anyhow::Ok(samples)
            }));
        }
        let mut samples = Vec::new();
        for c in callers {
            samples.extend(c.await??);
        }
        let f = figures(samples, t.elapsed());
        row(name, &f);
        table.push((name, f));
    }
    stop.send_replace(true);
    server.await?.map_err(anyhow::Error::msg)?;
    for a in agents {
        a.await?.map_err(anyhow::Error::msg)?;
    }
    let j = |f: &Figures| json!({"ops": f.ops, "per_second": f.per_second, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms});
    println!(
        "{}",
        json!({
            "bench": "lifecycle",
            "jobs": jobs,
            "agent_poll_ms": poll.as_millis() as u64,
            "one_at_a_time": j(&one),
            "all_at_once": j(&all),
            "calls": table.iter().map(|(n, f)| ((*n).to_owned(), j(f))).collect::<serde_json::Map<_, _>>(),
        })
    );
    Ok(())
}
