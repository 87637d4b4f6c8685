//! `ringfence up`: the whole chain on one machine, with embedded defaults — the Store, the
//! audit log and the CA in the data directory; the control plane; four local agents as
//! machines (one foundational, two production, one development); and a small demo application:
//! three services whose images are OCI layouts built locally, with SLSA provenance and code
//! reviews signed by clearly labelled local demo keys. Each job goes through Binary
//! Authorization, is placed under the Workload Security Rings, runs in the sandbox on its
//! machine, and obtains its SVID from the CA. A live status table follows the tasks; then
//! continuous verification runs until Ctrl-C. Running it again resumes the same state.
//!
//! The mesh joins this command when it lands.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ringfence_admission::report;
use ringfence_admission::verdict::{Attestation, Request};
use ringfence_agent::node::{AgentConfig, ControlPlaneApi};
use ringfence_agent::{Backoff, RunnerConfig};
use ringfence_bab::Gate;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_bab::manifest::JobManifest;
use ringfence_bab::notify::Outbox;
use ringfence_controlplane::{ControlPlane, JobState, Registration};
use ringfence_core::{Clock, SpiffeId, SystemClock};
use ringfence_identity::IssuanceService;
use ringfence_provenance::dsse::{self, SigningKey};
use ringfence_provenance::{oci, review, slsa, statement};
use ringfence_sched::{Pool, Resources};
use ringfence_store::open_store;
use serde_json::json;

use crate::config::Settings;
use crate::exit;

const DEMO_COMMIT: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
const DEMO_BUILDER: &str = "https://demo-builder.ringfence.local/v1";
const DEMO_REPO: &str = "https://git.ringfence.local/demo";
const TRUST_DOMAIN: &str = "ringfence.local";
const BUSYBOX: &str = "/bin/busybox";
/// Host uids for the demo tasks: a range of their own per local agent.
const UID_BASE: u32 = 2_100_000;
const UIDS_PER_AGENT: u32 = 64;

const STEPS: u8 = 7;

fn step(n: u8, what: &str) {
    println!("[{n}/{STEPS}] {what}");
}

/// The local machines: id and pool.
const MACHINES: [(&str, Pool); 4] = [
    ("found-1", Pool::Foundational),
    ("prod-1", Pool::Production),
    ("prod-2", Pool::Production),
    ("dev-1", Pool::Development),
];

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

/// Signs `stmt` into `path` unless the envelope there already covers the same subjects (so a
/// rerun keeps its attestations, and a rebuilt image gets new ones).
fn sign_once(path: &Path, stmt: &serde_json::Value, keys: &[&SigningKey]) -> Result<()> {
    let same_subjects = || -> Option<bool> {
        use base64::Engine as _;
        let env: dsse::Envelope = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env.payload)
            .ok()?;
        let old: serde_json::Value = serde_json::from_slice(&payload).ok()?;
        Some(old.get("subject") == stmt.get("subject"))
    };
    if same_subjects() != Some(true) {
        let env = dsse::sign(statement::PAYLOAD_TYPE, &serde_json::to_vec(stmt)?, keys)?;
        std::fs::write(path, serde_json::to_vec_pretty(&env)?)?;
    }
    Ok(())
}

pub async fn run(
    once: bool,
    api: std::net::SocketAddr,
    http: std::net::SocketAddr,
    settings: &Settings,
) -> Result<u8> {
    // Ctrl-C is ours from the start (installed now, not when the wait begins), so an
    // interrupt at any moment ends in a clean stop of the agents and their tasks.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle Ctrl-C")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let ctrl_c = stop_tx.clone();
        tokio::spawn(async move {
            let _ = sigint.recv().await;
            let _ = ctrl_c.send(true);
        });
    }
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
    let _publisher = log.spawn_publisher();
    let audit: Arc<dyn ringfence_audit::AuditSink> = Arc::new(log);

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
    // The demo services are shell scripts; their images carry a static busybox to run them.
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("the demo images need a static busybox at {BUSYBOX} (Debian: busybox-static)")
    })?;
    let mut jobs = Vec::new();
    for svc in &SERVICES {
        let script = format!(
            "#!/bin/busybox sh\necho \"{} (Ringfence demo) started\"\n/bin/busybox test -S /run/spiffe/workload.sock && echo \"its Workload API: $SPIFFE_ENDPOINT_SOCKET\"\nexec /bin/busybox sleep 86400\n",
            svc.name
        );
        let layer = oci::tar(&[
            ("bin/busybox", 0o755, busybox.as_slice()),
            (&format!("bin/{}", svc.name), 0o755, script.as_bytes()),
        ]);
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
        jobs.push((svc, job_path, atts));
    }

    step(4, "service policies (Binary Authorization)");
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
        Arc::clone(&audit),
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

    step(
        5,
        "the CA, the control plane, and four local agents as machines",
    );
    let agents_dir = agents_root(data);
    if agents_dir != data.join("agents") {
        println!(
            "      task directories in {} (the tasks' own uids cannot reach {})",
            agents_dir.display(),
            data.display()
        );
    }
    let id_dir = data.join("identity");
    if crate::identity_cmd::ensure_ca(&id_dir, TRUST_DOMAIN)? {
        println!(
            "      created the CA for {TRUST_DOMAIN} in {}",
            id_dir.display()
        );
    }
    let ca = Arc::new(crate::identity_cmd::load_set(
        &id_dir,
        Duration::from_secs(3600),
    )?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cp = ControlPlane::new(
        Arc::clone(&store),
        Arc::clone(&audit),
        gate.clone(),
        Arc::clone(&clock),
        ringfence_controlplane::Settings::new(ca.trust_domain().clone()),
    )?;
    let issuance = Arc::new(IssuanceService::new(
        Arc::clone(&ca),
        cp.authority(),
        Arc::clone(&audit),
        Arc::clone(&clock),
    )?);
    // Placements from an earlier run are authorized from the start.
    cp.refresh().await?;
    // The API, for `ringfence --server` while this runs (the Store is ours alone).
    let parts = ringfence_controlplane::server::ServerParts {
        cp: cp.clone(),
        store: Arc::clone(&store),
        audit: Arc::clone(&audit),
        ca: Arc::clone(&ca),
        artifacts: artifacts.clone(),
        scratch: data.join("server-scratch"),
        people: Some(data.join("people.toml")),
        clock: Arc::clone(&clock),
        tokens: Arc::new(
            ringfence_controlplane::server::token_service(
                &data.join("identity"),
                ca.trust_domain(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
    };
    let api_task = match crate::server_cmd::start(
        parts,
        api,
        Some(http),
        None,
        Duration::from_secs(3600),
        data,
        stop_rx.clone(),
    )
    .await
    {
        Ok((bound, server, renewer)) => {
            println!(
                "      control-plane API on {} (mTLS; bootstrap admin certificate in {})",
                bound.api,
                data.join("admin").display()
            );
            Some((bound, server, renewer))
        }
        Err(e) => {
            println!("      no control-plane API: {e:#} (use --api to pick another address)");
            None
        }
    };
    for (id, pool) in MACHINES {
        cp.assign_pool(id, pool, "ringfence-up").await?;
    }
    let local: Arc<dyn ControlPlaneApi> = Arc::new(ringfence_agent::node::Local {
        cp: cp.clone(),
        artifacts: artifacts.clone(),
        issuance,
        audit: Arc::clone(&audit),
    });
    let mut agents = Vec::new();
    let can_run = can_run_tasks();
    match &can_run {
        Ok(()) => {
            let exe = std::env::current_exe().context("cannot find the ringfence binary")?;
            let init = sandbox_init(&exe);
            for (i, (id, _)) in MACHINES.iter().enumerate() {
                let cfg = AgentConfig {
                    registration: Registration {
                        machine: (*id).to_owned(),
                        capacity: Resources {
                            cpu_milli: 2000,
                            memory_mib: 2048,
                        },
                        address: "127.0.0.1".into(),
                    },
                    runner: RunnerConfig {
                        root: agents_dir.join(id),
                        init_program: init.clone(),
                        uid_base: UID_BASE + (i as u32) * UIDS_PER_AGENT,
                        uid_count: UIDS_PER_AGENT,
                        backoff: Backoff::default(),
                        log_max_bytes: 1 << 20,
                    },
                    poll: Duration::from_millis(300),
                    profile: "default".into(),
                };
                agents.push(tokio::spawn(ringfence_agent::node::run(
                    Arc::clone(&local),
                    cfg,
                    Arc::clone(&clock),
                    stop_rx.clone(),
                )));
            }
            // Wait for the agents to register before placing anything.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let now = clock.now();
                let alive = cp
                    .machines()
                    .await?
                    .iter()
                    .filter(|m| now.since(m.last_seen) < Duration::from_secs(2))
                    .count();
                if alive >= MACHINES.len() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for (id, pool) in MACHINES {
                println!("      {id:<8} {pool} pool (on the control plane's own host)");
            }
        }
        Err(why) => println!("      tasks will not run here: {why}"),
    }

    step(
        6,
        "jobs: admission, then placement (every verdict and placement in the audit log)",
    );
    for (svc, job_path, atts) in &jobs {
        let manifest = std::fs::read(job_path)?;
        // Running again resumes: a job already placed from this very manifest stays as it is.
        if let Ok(existing) = cp.job("demo", &format!("{}-1", svc.name)).await
            && existing.manifest.as_bytes() == manifest.as_slice()
            && matches!(existing.state, JobState::Placed | JobState::Pending(_))
        {
            println!(
                "      {:<7} already admitted and placed ({})",
                svc.name, existing.state
            );
            continue;
        }
        let atts: Vec<Attestation> = atts
            .iter()
            .map(|(name, bytes)| {
                Ok(Attestation {
                    source: name.clone(),
                    envelope: dsse::parse(bytes)?,
                })
            })
            .collect::<Result<_>>()?;
        let job = cp
            .submit(&manifest, &atts, &Request::Normal, "ringfence-up")
            .await?;
        let admitted = job.admission.is_some() && !matches!(job.state, JobState::Refused(_));
        let basis = job.basis();
        let place = match &job.state {
            JobState::Placed => format!(
                "placed on {}",
                job.tasks
                    .iter()
                    .filter_map(|t| t.machine.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => other.to_string(),
        };
        println!(
            "      {:<7} {} ({basis}), {place}",
            svc.name,
            if admitted { "admitted" } else { "DENIED" },
        );
    }

    step(7, "tasks (live; each in the sandbox with its own SVID)");
    if can_run.is_ok() {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        loop {
            let (table, done, failed) = status_table(&cp).await?;
            if table != last {
                for line in table.lines() {
                    println!("      {line}");
                }
                println!();
                last = table;
            }
            if done {
                println!("      every task runs with its SVID");
                break;
            }
            if *stop_rx.borrow() {
                break;
            }
            if failed {
                println!(
                    "      a task could not start (DETAIL says why); its agent does not retry it until its job changes"
                );
                break;
            }
            if std::time::Instant::now() > deadline {
                println!(
                    "      not every task is running with its SVID after 60 s; see the agents' logs under {}",
                    agents_dir.display()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let r = gate.report().await?;
    println!("      Binary Authorization conformance:");
    for line in report::table(&r).lines() {
        println!("      {line}");
    }
    let d = data.display();
    let server = match &api_task {
        Some((b, _, _)) => format!("--server {}", b.api),
        None => format!("--data-dir {d}"),
    };
    println!(
        "\nTry next (while this runs: the API; the embedded store is in use):\n  ringfence --data-dir {d} {server} job list                 # the jobs, their verdicts and machines (job status|stop)\n  ringfence --data-dir {d} {server} machine list             # the machines and their pools\n  ringfence --data-dir {d} {server} bab policy apply FILE    # apply a service policy\n  curl -s http://{http}/metrics                              # API calls, machines, jobs and tasks\n  ringfence --data-dir {d} {server} job logs demo/web-1    # a task's output (read on this host)\n  cat {d}/notifications/*.jsonl                             # what the security team and the owners were told\nOnce stopped (they open the embedded store):\n  ringfence --data-dir {d} bab report                       # the conformance report (--output json)\n  ringfence --data-dir {d} audit tail                       # every verdict, placement and SVID, in the tamper-evident log\n  ringfence --data-dir {d} audit verify                     # recompute the log and check its signatures\n  ringfence --data-dir {d} artifact list                    # the demo images and their attestations\n  ringfence --data-dir {d} attest verify --policy {d}/demo/web.policy.yaml --image {d}/demo/web-oci \\\n      --repository registry.ringfence.local/demo/web --job {d}/demo/jobs/web.yaml\n  ringfence --data-dir {d} bab admit --job {d}/demo/jobs/worker.yaml --break-glass \"INC-1: demo\"\n"
    );
    if !once {
        println!(
            "Running: continuous verification (every policy change, and at least daily), the agents and their tasks. Ctrl-C stops."
        );
        let mut live = stop_rx.clone();
        let plane = cp.clone();
        let cv =
            tokio::spawn(async move { plane.run(Duration::from_secs(24 * 3600), stop_rx).await });
        let mut last = String::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = live.changed() => {}
            }
            if *live.borrow() {
                break;
            }
            if can_run.is_ok() {
                let (table, _, _) = status_table(&cp).await?;
                if table != last {
                    for line in table.lines() {
                        println!("      {line}");
                    }
                    last = table;
                }
            }
        }
        match cv.await {
            Ok(r) => r?,
            Err(e) => anyhow::bail!("the control plane stopped: {e}"),
        }
    }
    let _ = stop_tx.send(true);
    if let Some((_, server, renewer)) = api_task {
        renewer.abort();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("the API stopped with an error: {e}"),
            Err(e) => eprintln!("the API failed: {e}"),
        }
    }
    for a in agents {
        match a.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("an agent stopped with an error: {e}"),
            Err(e) => eprintln!("an agent failed: {e}"),
        }
    }
    if once {
        println!("stopped the agents and their tasks (--once)");
    } else {
        println!("stopped; run `ringfence up` again to resume");
    }
    Ok(exit::SUCCESS)
}

/// Where the local agents keep their tasks: `<data-dir>/agents`, unless a directory above it is
/// not searchable by other users (`/root` usually is not), since each task's own uid must reach
/// its root filesystem and `/work` there; then under `/run/ringfence/up/<hash of the data dir>`.
pub(crate) fn agents_root(data: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_owned());
    let reachable = abs
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable {
        return data.join("agents");
    }
    let hash = statement::Sha256::of(abs.as_os_str().as_encoded_bytes());
    std::path::PathBuf::from("/run/ringfence/up")
        .join(hash.hex().get(..12).unwrap_or("0"))
        .join("agents")
}

/// The sandbox's init: the small one beside this binary when it was built (it starts
/// faster), else this binary, which carries the same init. It runs as root, so the small one
/// only when it is owned like this binary and writable by nobody else.
pub(crate) fn sandbox_init(exe: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let small = exe.with_file_name("ringfence-sandbox-init");
    match (std::fs::metadata(&small), std::fs::metadata(exe)) {
        (Ok(m), Ok(e)) if m.is_file() && m.uid() == e.uid() && m.mode() & 0o022 == 0 => small,
        _ => exe.to_owned(),
    }
}

/// Why this host cannot run the demo tasks in the sandbox, if it cannot.
fn can_run_tasks() -> std::result::Result<(), String> {
    if !ringfence_sandbox::run::is_root() {
        return Err(
            "the sandbox needs root to give each task a uid of its own (run as root)".into(),
        );
    }
    Ok(())
}

/// The tasks' table, whether every placed task is running with an SVID, and whether one
/// failed to start.
async fn status_table(cp: &ControlPlane) -> Result<(String, bool, bool)> {
    let statuses = cp.task_statuses().await?;
    let pools: std::collections::BTreeMap<String, String> = cp
        .machines()
        .await?
        .into_iter()
        .map(|m| (m.id, m.pool.to_string()))
        .collect();
    let mut out = format!(
        "{:<24} {:<9} {:<12} {:<10} {:<5} {:>8}  DETAIL\n",
        "TASK", "MACHINE", "POOL", "STATE", "SVID", "RESTARTS"
    );
    let mut done = true;
    let mut failed = false;
    for job in cp.jobs().await? {
        for t in &job.tasks {
            let machine = t.machine.clone().unwrap_or_else(|| "-".into());
            let s = statuses.get(&t.id).filter(|s| s.machine == machine);
            let (state, svid, restarts, detail) = match s {
                Some(s) => (
                    s.report.state.as_str(),
                    if s.report.svid { "yes" } else { "no" },
                    s.report.restarts,
                    s.report.detail.as_str(),
                ),
                None if t.machine.is_none() => ("pending", "no", 0, ""),
                None => ("assigned", "no", 0, ""),
            };
            if state != "running" || svid != "yes" {
                done = false;
            }
            failed |= state == "failed";
            out.push_str(&format!(
                "{:<24} {:<9} {:<12} {:<10} {:<5} {:>8}  {detail}\n",
                t.id,
                machine,
                pools.get(&machine).map_or("-", String::as_str),
                state,
                svid,
                restarts
            ));
        }
    }
    Ok((out, done, failed))
}
