//! The chain end to end on real components: the control plane over a real Store and audit
//! log, the real admission gate and CA, and node agents running tasks in the real sandbox. A
//! compliant job runs and its task holds the right SVID (fetched by py-spiffe from the socket
//! bound into the task); tightening its policy stops the renewal; stopping the job ends the
//! task.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

#[path = "../../admission/tests/common/mod.rs"]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringfence_admission::verdict::Request;
use ringfence_agent::node::{AgentConfig, ControlPlaneApi, Local};
use ringfence_agent::{Backoff, RunnerConfig};
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditLog, Decision, Event, LogOptions, LogReader};
use ringfence_bab::Gate;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_bab::notify::{NotifyConfig, Outbox};
use ringfence_controlplane::{ControlPlane, JobState, Registration, Settings};
use ringfence_core::{Clock, ManualClock, SpiffeId, TrustDomain};
use ringfence_identity::{Ca, CaSet, IssuanceService};
use ringfence_provenance::statement::Sha256;
use ringfence_sched::{Pool, Resources};
use ringfence_store::{RedbOptions, RedbStore, Store};

const WEB: &str = "spiffe://acme.test/ns/payments/svc/web";

struct Env {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    cp: ControlPlane,
    api: Arc<dyn ControlPlaneApi>,
    f: Fixture,
    stop: tokio::sync::watch::Sender<bool>,
    agents: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

async fn env() -> Env {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap();
    assert_eq!(
        uid, 0,
        "the spine suite runs tasks in the sandbox: it needs root"
    );
    let dir = tempfile::Builder::new()
        .prefix("ringfence-spine")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let clock = Arc::new(ManualClock::new(NOW));
    let log = Arc::new(
        AuditLog::open(
            Arc::clone(&store),
            Signer::generate("acme.test/audit", TYPE_ED25519).unwrap(),
            LogOptions {
                origin: "acme.test/audit".into(),
                ..LogOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let gate = Gate::new(
        Arc::clone(&store),
        log.clone(),
        Outbox::open(&dir.path().join("outbox"), NotifyConfig::default()).unwrap(),
        clock.clone(),
        SpiffeId::parse("spiffe://acme.test/ringfence/admission").unwrap(),
    );
    let td = TrustDomain::parse("acme.test").unwrap();
    let cp = ControlPlane::new(
        Arc::clone(&store),
        log.clone(),
        gate,
        clock.clone(),
        Settings::new(td.clone()),
    )
    .unwrap();
    let ca = Ca::generate(td, clock.now(), Duration::from_secs(86_400 * 30)).unwrap();
    let issuance = Arc::new(
        IssuanceService::new(
            Arc::new(CaSet::new(ca)),
            cp.authority(),
            log.clone(),
            clock.clone(),
        )
        .unwrap(),
    );

    // The image: the suite's static probe as its entrypoint.
    let probe = dir.path().join("probe");
    ringfence_test_util::probe::build(&probe).unwrap_or_else(|e| panic!("{e:#}"));
    let layer =
        ringfence_provenance::oci::tar(&[("bin/probe", 0o755, &std::fs::read(&probe).unwrap())]);
    let layout = dir.path().join("image");
    let digest = ringfence_provenance::oci::write_layout(
        &layout,
        &serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/probe"]}}),
        &[layer],
        "web:test",
    )
    .unwrap();
    let artifacts = ArtifactStore::open(&dir.path().join("artifacts")).unwrap();
    artifacts.push(&layout, &[], clock.now()).unwrap();
    let mut f = Fixture::new();
    f.image = digest;
    let api: Arc<dyn ControlPlaneApi> = Arc::new(Local {
        cp: cp.clone(),
        artifacts,
        issuance,
        audit: log,
    });
    let (stop, _) = tokio::sync::watch::channel(false);
    Env {
        dir,
        store,
        clock,
        cp,
        api,
        f,
        stop,
        agents: Vec::new(),
    }
}

impl Env {
    fn agent_root(&self, machine: &str) -> PathBuf {
        self.dir.path().join("agents").join(machine)
    }

    async fn agent(&mut self, machine: &str, pool: Pool) {
        self.cp.assign_pool(machine, pool, "ops").await.unwrap();
        // uids of their own per test process and agent.
        let n = u32::try_from(self.agents.len()).unwrap();
        let base = 400_000 + (std::process::id() % 5_000) * 64 + n * 16;
        let cfg = AgentConfig {
            registration: Registration {
                machine: machine.into(),
                capacity: Resources {
                    cpu_milli: 2000,
                    memory_mib: 2048,
                },
                address: "127.0.0.1".into(),
            },
            runner: RunnerConfig {
                root: self.agent_root(machine),
                init_program: PathBuf::from(env!("CARGO_BIN_EXE_ringfence")),
                uid_base: base,
                uid_count: 16,
                backoff: Backoff::default(),
                log_max_bytes: 1 << 20,
            },
            poll: Duration::from_millis(100),
            profile: "default".into(),
        };
        self.agents.push(tokio::spawn(ringfence_agent::node::run(
            Arc::clone(&self.api),
            cfg,
            self.clock.clone() as Arc<dyn Clock>,
            self.stop.subscribe(),
        )));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self
            .cp
            .machines()
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == machine)
        {
            assert!(
                Instant::now() < deadline,
                "agent {machine} did not register"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn manifest(&self, ring: &str) -> Vec<u8> {
        format!(
            "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: web-1, namespace: payments}}\nspec:\n  service: web\n  environment: production\n  image: registry.acme.test/payments/web@{}\n  args: [unix-connect, /run/spiffe/workload.sock]\n  ring: {ring}\n",
            self.f.image
        )
        .into_bytes()
    }

    async fn events(&self) -> Vec<Event> {
        LogReader::open(Arc::clone(&self.store), &LogOptions::default().prefix)
            .await
            .unwrap()
            .entries(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, b)| Event::decode(&b).unwrap())
            .collect()
    }

    /// Waits until `task` is reported running with its SVID.
    async fn running(&self, task: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.cp.task_statuses().await.unwrap();
            if let Some(s) = s.get(task)
                && s.report.state == "running"
                && s.report.svid
            {
                return s.machine.clone();
            }
            assert!(Instant::now() < deadline, "{task} is not running: {s:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        for a in self.agents {
            a.await.unwrap().unwrap();
        }
    }
}

/// The SPIFFE ID py-spiffe fetches from `socket`.
fn py_spiffe_id(socket: &Path) -> String {
    let script = format!(
        "from spiffe import WorkloadApiClient\nc = WorkloadApiClient(socket_path='unix://{}')\nprint(c.fetch_x509_svid().spiffe_id)\n",
        socket.display()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 is on the machine");
    assert!(
        out.status.success(),
        "py-spiffe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn processes_of_uid(uid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
                && std::fs::metadata(e.path()).is_ok_and(|m| m.uid() == uid)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliant_job_runs_in_the_sandbox_and_its_task_holds_its_svid() {
    let mut e = env().await;
    e.agent("prod-1", Pool::Production).await;
    e.agent("dev-1", Pool::Development).await;
    e.cp.gate()
        .apply_policy(&e.f.policy_yaml("enforce", ""), "alice")
        .await
        .unwrap();
    let m = e.manifest("sensitive");
    e.f.config = Sha256::of(&m);
    let job =
        e.cp.submit(&m, &e.f.attestations(), &Request::Normal, "alice")
            .await
            .unwrap();
    assert_eq!(job.state, JobState::Placed, "{}", job.verdict);
    let task = "payments.web.web-1.0";
    let machine = e.running(task).await;
    assert_eq!(machine, "prod-1", "sensitive runs only on production");

    // Inside its sandbox the task reached its Workload API socket at the documented path.
    let log = e
        .agent_root("prod-1")
        .join("tasks")
        .join(task)
        .join("stdout.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("/run/spiffe/workload.sock: connected") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {text:?}; stderr: {:?}; status: {:?}",
            log.display(),
            std::fs::read_to_string(log.with_file_name("stderr.log")),
            e.cp.task_statuses().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // That socket serves the task's SVID, with the right SPIFFE ID, to an unmodified client;
    // it belongs to the task's uid alone.
    let socket = e
        .agent_root("prod-1")
        .join("sockets")
        .join(task)
        .join("workload.sock");
    assert_eq!(py_spiffe_id(&socket), WEB);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let task_uid = meta.uid();
    assert_ne!(task_uid, 0);
    assert!(
        processes_of_uid(task_uid) > 0,
        "the task runs as its own uid"
    );
    let ev = e.events().await;
    let pos = |action: &str| {
        ev.iter()
            .position(|x| x.action == action && x.decision == Decision::Allow)
            .unwrap_or_else(|| panic!("no {action} in the audit log"))
    };
    assert!(pos("bab.admit") < pos("job.place"));
    assert!(pos("job.place") < pos("identity.issue"));

    // Tightened: two reviewers now. The running job fails its policy, whose
    // continuousVerification withholds SVID renewal: at half-life the renewal is refused.
    let tightened =
        e.f.policy_yaml("enforce", "")
            .replace("minReviewers: 1", "minReviewers: 2");
    e.cp.gate().apply_policy(&tightened, "alice").await.unwrap();
    e.cp.refresh().await.unwrap();
    let issued_before = e
        .events()
        .await
        .iter()
        .filter(|x| x.action == "identity.issue" && x.decision == Decision::Allow)
        .count();
    // Past half-life. (The manual clock jumps while the control plane's view is rebuilt every
    // second in a real deployment; here a renewal that lands between the jump and the rebuild
    // is refused as stale and retried a tenth of the lifetime later, so time moves on in
    // steps until the withholding itself is seen.)
    e.clock.advance(Duration::from_secs(31 * 60));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        e.cp.refresh().await.unwrap();
        let events = e.events().await;
        let withheld = events.iter().find(|x| {
            x.action == "identity.issue"
                && x.decision == Decision::Deny
                && x.target == WEB
                && x.reason.contains("continuous verification withholds")
        });
        if let Some(r) = withheld {
            assert_eq!(r.details["machine"], "prod-1");
            assert!(
                r.reason
                    .contains("continuous verification withholds SVID renewal: job payments/web-1"),
                "{}",
                r.reason
            );
            let issued_after = events
                .iter()
                .filter(|x| x.action == "identity.issue" && x.decision == Decision::Allow)
                .count();
            assert_eq!(
                issued_after, issued_before,
                "an SVID was renewed after the tightening"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the renewal was not refused");
        tokio::time::sleep(Duration::from_millis(300)).await;
        e.clock.advance(Duration::from_secs(60));
    }

    // Stopped: the assignment goes, and the agent ends the task's sandbox.
    e.cp.stop("payments", "web-1", "alice").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_of_uid(task_uid) > 0 {
        assert!(Instant::now() < deadline, "the stopped task still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_job_never_reaches_an_agent() {
    let mut e = env().await;
    e.agent("prod-1", Pool::Production).await;
    e.cp.gate()
        .apply_policy(&e.f.policy_yaml("enforce", ""), "alice")
        .await
        .unwrap();
    let m = e.manifest("hardened");
    let job =
        e.cp.submit(&m, &[], &Request::Normal, "mallory")
            .await
            .unwrap();
    let JobState::Refused(why) = &job.state else {
        panic!("{:?}", job.state)
    };
    assert!(why.contains("Binary Authorization: denied"), "{why}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(e.cp.task_statuses().await.unwrap().is_empty());
    assert!(!e.agent_root("prod-1").join("tasks").exists());
    e.shutdown().await;
}
