//! The job lifecycle against a real embedded Store, the real audit log, the real admission
//! gate and the real CA: admission, placement under the Workload Security Rings, and the CA
//! issuing a task's SVID only to the machine its admitted task is placed on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

#[path = "../../admission/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringfence_admission::verdict::{Attestation, Request};
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditLog, Decision, Event, LogOptions, LogReader};
use ringfence_bab::Gate;
use ringfence_bab::notify::{NotifyConfig, Outbox};
use ringfence_controlplane::{
    ControlPlane, HostTrust, JobState, Registration, Settings, TaskReport,
};
use ringfence_core::{Clock, MachineId, ManualClock, SpiffeId, TrustDomain};
use ringfence_identity::workload_api::obtain;
use ringfence_identity::{Ca, CaSet, IssuanceService};
use ringfence_provenance::statement::Sha256;
use ringfence_sched::{Pool, Resources};
use ringfence_store::{RedbOptions, RedbStore, Store};

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    cp: ControlPlane,
    ca: Arc<IssuanceService>,
    f: Fixture,
}

const TD: &str = "acme.test";

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let clock = Arc::new(ManualClock::new(NOW));
    let signer = Signer::generate("acme.test/audit", TYPE_ED25519).unwrap();
    let log = Arc::new(
        AuditLog::open(
            Arc::clone(&store),
            signer,
            LogOptions {
                origin: "acme.test/audit".into(),
                ..LogOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let outbox = Outbox::open(&dir.path().join("outbox"), NotifyConfig::default()).unwrap();
    let gate = Gate::new(
        Arc::clone(&store),
        log.clone(),
        outbox,
        clock.clone(),
        SpiffeId::parse("spiffe://acme.test/ringfence/admission").unwrap(),
    );
    let td = TrustDomain::parse(TD).unwrap();
    let cp = ControlPlane::new(
        Arc::clone(&store),
        log.clone(),
        gate,
        clock.clone(),
        Settings::new(td.clone()),
    )
    .unwrap();
    let ca = Ca::generate(td, clock.now(), Duration::from_secs(86_400 * 30)).unwrap();
    let ca = Arc::new(
        IssuanceService::new(Arc::new(CaSet::new(ca)), cp.authority(), log, clock.clone()).unwrap(),
    );
    Env {
        _dir: dir,
        store,
        clock,
        cp,
        ca,
        f: Fixture::new(),
    }
}

const BIG: Resources = Resources {
    cpu_milli: 4000,
    memory_mib: 8192,
};

impl Env {
    async fn machine(&self, id: &str, pool: Pool, trust: HostTrust) {
        self.cp.assign_pool(id, pool, "ops").await.unwrap();
        self.cp
            .register(
                &Registration {
                    machine: id.into(),
                    capacity: BIG,
                    address: "127.0.0.1".into(),
                },
                trust,
            )
            .await
            .unwrap();
    }

    /// One foundational, two production, one development machine, on the control plane's
    /// host.
    async fn fleet(&self) {
        for (id, pool) in [
            ("found-1", Pool::Foundational),
            ("prod-1", Pool::Production),
            ("prod-2", Pool::Production),
            ("dev-1", Pool::Development),
        ] {
            self.machine(id, pool, HostTrust::ControlPlaneHost).await;
        }
    }

    fn manifest(&self, name: &str, ring: &str, replicas: u32) -> Vec<u8> {
        format!(
            "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: {name}, namespace: payments}}\nspec:\n  service: web\n  environment: production\n  image: registry.acme.test/payments/web@{}\n  args: [--port=8080]\n  replicas: {replicas}\n  ring: {ring}\n  ports: [{{name: http, port: 8080}}]\n",
            self.f.image
        )
        .into_bytes()
    }

    /// The attestations for `manifest` (its digest reviewed).
    fn attestations(&mut self, manifest: &[u8]) -> Vec<Attestation> {
        self.f.config = Sha256::of(manifest);
        self.f.attestations()
    }

    async fn policy(&self, mode: &str, extra: &str) {
        self.cp
            .gate()
            .apply_policy(&self.f.policy_yaml(mode, extra), "alice")
            .await
            .unwrap();
        self.cp.refresh().await.unwrap();
    }

    async fn events(&self) -> Vec<Event> {
        let reader = LogReader::open(Arc::clone(&self.store), &LogOptions::default().prefix)
            .await
            .unwrap();
        reader
            .entries(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, b)| Event::decode(&b).unwrap())
            .collect()
    }

    async fn issue(&self, machine: &str, id: &str) -> Result<SpiffeId, String> {
        obtain(
            &self.ca,
            &MachineId::parse(machine).unwrap(),
            &SpiffeId::parse(id).unwrap(),
            self.clock.as_ref(),
        )
        .await
        .map(|(m, _)| m.spiffe_id)
    }
}

const WEB: &str = "spiffe://acme.test/ns/payments/svc/web";

fn refused(r: Result<SpiffeId, String>) -> String {
    match r {
        Ok(id) => panic!("issued {id}, expected a refusal"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliant_job_is_placed_and_only_its_machine_gets_its_svid() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "sensitive", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    assert_eq!(job.state, JobState::Placed, "{}", job.verdict);
    let machine = job.tasks[0].machine.clone().unwrap();
    assert!(
        machine.starts_with("prod-"),
        "sensitive runs on production: {machine}"
    );
    let a = e.cp.assignments(&machine).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].task, "payments.web.web-1.0");
    assert_eq!(a[0].spiffe_id.as_str(), WEB);
    assert_eq!(a[0].digest, e.f.image.to_string());

    // The machine the task is placed on obtains the task's SVID.
    assert_eq!(e.issue(&machine, WEB).await.unwrap().as_str(), WEB);
    // Another machine asking for it is refused (an agent asking for a task it does not run).
    let other = if machine == "prod-1" {
        "prod-2"
    } else {
        "prod-1"
    };
    let why = refused(e.issue(other, WEB).await);
    assert!(
        why.contains(&format!(
            "no admitted task of {WEB} is placed on machine {other}"
        )),
        "{why}"
    );
    // The task's machine asking for another service's identity is refused.
    let why = refused(
        e.issue(&machine, "spiffe://acme.test/ns/payments/svc/ledger")
            .await,
    );
    assert!(
        why.contains("no admitted task of spiffe://acme.test/ns/payments/svc/ledger"),
        "{why}"
    );

    // Each transition is audited: the verdict, the placement, the issuance and both refusals.
    let ev = e.events().await;
    let pos = |action: &str, d: Decision| {
        ev.iter()
            .position(|x| x.action == action && x.decision == d)
            .unwrap_or_else(|| panic!("no {action} {d:?} in the audit log"))
    };
    assert!(pos("bab.admit", Decision::Allow) < pos("job.place", Decision::Allow));
    assert!(pos("job.place", Decision::Allow) < pos("identity.issue", Decision::Allow));
    let denials: Vec<_> = ev
        .iter()
        .filter(|x| x.action == "identity.issue" && x.decision == Decision::Deny)
        .collect();
    assert_eq!(denials.len(), 2);
    assert_eq!(denials[0].details["machine"], other);
    assert_eq!(
        denials[1].target,
        "spiffe://acme.test/ns/payments/svc/ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_job_is_refused_with_the_reason_and_nothing_is_assigned() {
    let e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "hardened", 2);
    let job =
        e.cp.submit(&m, &[], &Request::Normal, "mallory")
            .await
            .unwrap();
    let JobState::Refused(why) = &job.state else {
        panic!("admitted: {:?}", job.state);
    };
    assert!(why.starts_with("Binary Authorization: denied"), "{why}");
    assert!(why.contains("provenance"), "{why}");
    for m in ["found-1", "prod-1", "prod-2", "dev-1"] {
        assert!(e.cp.assignments(m).await.unwrap().is_empty());
    }
    assert!(e.cp.jobs().await.unwrap().is_empty());
    let why = refused(e.issue("prod-1", WEB).await);
    assert!(why.contains("no admitted task"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_admission_cannot_claim_the_sensitive_ring() {
    let e = env().await;
    e.fleet().await;
    e.policy("dry-run", "").await;
    let m = e.manifest("web-1", "sensitive", 1);
    let job =
        e.cp.submit(&m, &[], &Request::Normal, "alice")
            .await
            .unwrap();
    let JobState::Refused(why) = &job.state else {
        panic!("placed: {:?}", job.state);
    };
    assert!(
        why.contains("asks for ring sensitive, which a job admitted as DryRun"),
        "{why}"
    );
    // As hardened it runs (sandboxed), and the would-deny is in the audit log.
    let m = e.manifest("web-1", "hardened", 1);
    let job =
        e.cp.submit(&m, &[], &Request::Normal, "alice")
            .await
            .unwrap();
    assert_eq!(job.state, JobState::Placed);
    assert!(job.verdict.starts_with("dry-run"), "{}", job.verdict);
    assert!(
        e.events()
            .await
            .iter()
            .any(|x| x.action == "bab.admit" && x.decision == Decision::WouldDeny)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightening_a_policy_withholds_the_running_jobs_svid() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "hardened", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    let machine = job.tasks[0].machine.clone().unwrap();
    e.issue(&machine, WEB).await.unwrap();
    // Now two reviewers other than the author are required: the running job fails, and its
    // policy says failing jobs lose SVID renewal.
    let tightened =
        e.f.policy_yaml("enforce", "")
            .replace("minReviewers: 1", "minReviewers: 2");
    e.cp.gate().apply_policy(&tightened, "alice").await.unwrap();
    e.cp.refresh().await.unwrap();
    let why = refused(e.issue(&machine, WEB).await);
    assert!(
        why.contains("continuous verification withholds SVID renewal: job payments/web-1"),
        "{why}"
    );
    assert!(why.contains("review"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_job_stopped_and_redeployed_compliant_gets_its_svid_again() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "hardened", 1);
    let atts = e.attestations(&m);
    e.cp.submit(&m, &atts, &Request::Normal, "alice")
        .await
        .unwrap();
    let tightened =
        e.f.policy_yaml("enforce", "")
            .replace("minReviewers: 1", "minReviewers: 2");
    e.cp.gate().apply_policy(&tightened, "alice").await.unwrap();
    e.cp.stop("payments", "web-1", "alice").await.unwrap();
    // The policy is relaxed again and the same job deployed anew: nothing of the stopped
    // deployment's verdict may keep withholding the new one.
    e.cp.gate()
        .apply_policy(&e.f.policy_yaml("enforce", ""), "alice")
        .await
        .unwrap();
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    e.cp.refresh().await.unwrap();
    let machine = job.tasks[0].machine.clone().unwrap();
    assert_eq!(e.issue(&machine, WEB).await.unwrap().as_str(), WEB);
    assert!(e.cp.gate().revoked().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_in_development_mode_serve_only_development_work() {
    let mut e = env().await;
    // Assigned to production by an operator, but without host attestation.
    e.machine("prod-x", Pool::Production, HostTrust::Development)
        .await;
    e.machine("dev-x", Pool::Development, HostTrust::Development)
        .await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "sensitive", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    let JobState::Pending(why) = &job.state else {
        panic!("{:?}", job.state);
    };
    assert!(
        why.contains("prod-x: no host attestation: development pool only"),
        "{why}"
    );
    assert!(
        why.contains("dev-x: pool development does not serve ring sensitive"),
        "{why}"
    );
    let m = e.manifest("web-2", "hardened", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    assert_eq!(job.tasks[0].machine.as_deref(), Some("dev-x"));
    let ev = e.events().await;
    assert!(ev.iter().any(|x| {
        x.action == "machine.register"
            && x.reason
                .contains("assigned to production but serves only development work")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foundational_job_runs_alone_on_foundational_machines() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("core", "foundational", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    assert_eq!(job.tasks[0].machine.as_deref(), Some("found-1"));
    let m = e.manifest("web-1", "hardened", 5);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    for t in &job.tasks {
        assert_ne!(t.machine.as_deref(), Some("found-1"), "{t:?}");
    }
    assert_eq!(e.cp.assignments("found-1").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_of_a_silent_machine_move_and_it_loses_their_identity() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "sensitive", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    let first = job.tasks[0].machine.clone().unwrap();
    let other = if first == "prod-1" {
        "prod-2"
    } else {
        "prod-1"
    };
    // Time passes; every machine but the first reports in.
    e.clock.advance(Duration::from_secs(20));
    for m in ["found-1", other, "dev-1"] {
        e.cp.report(m, &[]).await.unwrap();
    }
    let moved = e.cp.reschedule().await.unwrap();
    assert_eq!(moved, ["payments.web.web-1.0"]);
    assert!(e.cp.assignments(&first).await.unwrap().is_empty());
    assert_eq!(e.cp.assignments(other).await.unwrap().len(), 1);
    let why = refused(e.issue(&first, WEB).await);
    assert!(why.contains("no admitted task"), "{why}");
    e.issue(other, WEB).await.unwrap();
    assert!(e.events().await.iter().any(|x| x.action == "job.place"
        && x.reason == format!("moved from {first} (not heard from) to {other}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_discovery_and_stop() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "hardened", 2);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    assert!(e.cp.endpoints("payments", "web").await.unwrap().is_empty());
    for t in &job.tasks {
        let machine = t.machine.as_ref().unwrap();
        let report = TaskReport {
            task: t.id.clone(),
            state: "running".into(),
            detail: String::new(),
            restarts: 0,
            svid: true,
        };
        e.cp.report(machine, &[report]).await.unwrap();
    }
    // A report for a task the machine does not run is not recorded.
    let forged = TaskReport {
        task: "payments.web.web-9.0".into(),
        state: "running".into(),
        detail: String::new(),
        restarts: 0,
        svid: true,
    };
    e.cp.report("dev-1", &[forged]).await.unwrap();
    assert_eq!(e.cp.task_statuses().await.unwrap().len(), 2);
    let ep = e.cp.endpoints("payments", "web").await.unwrap();
    assert_eq!(ep.len(), 2);
    assert!(ep.iter().all(|p| p.port == 8080 && p.port_name == "http"));
    let stopped = e.cp.stop("payments", "web-1", "alice").await.unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    for m in ["prod-1", "prod-2", "dev-1"] {
        assert!(e.cp.assignments(m).await.unwrap().is_empty());
    }
    let why = refused(e.issue("prod-1", WEB).await);
    assert!(why.contains("no admitted task"), "{why}");
    // Bad input is refused with the reason.
    let err =
        e.cp.submit(b"kind: Job", &[], &Request::Normal, "alice")
            .await
            .unwrap_err();
    assert!(err.to_string().contains("invalid job manifest"), "{err}");
    let m = e.manifest("web-3", "hardened", 31);
    let err =
        e.cp.submit(&m, &[], &Request::Normal, "alice")
            .await
            .unwrap_err();
    assert_eq!(err.to_string(), "replicas: 31 (use 1 to 30)");
    let m = e.manifest("web-3", "gold", 1);
    let err =
        e.cp.submit(&m, &[], &Request::Normal, "alice")
            .await
            .unwrap_err();
    assert!(err.to_string().contains("ring \"gold\""), "{err}");
    let err = e.cp.report("nobody", &[]).await.unwrap_err();
    assert_eq!(err.to_string(), "machine nobody is not registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_verification_status_withholds_every_identity() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "hardened", 1);
    let atts = e.attestations(&m);
    let job =
        e.cp.submit(&m, &atts, &Request::Normal, "alice")
            .await
            .unwrap();
    let machine = job.tasks[0].machine.clone().unwrap();
    e.issue(&machine, WEB).await.unwrap();
    // A damaged continuous-verification record: never read as "not withheld".
    e.store
        .put(
            &ringfence_store::Key::new("/bab/status/damaged").unwrap(),
            b"{not json".to_vec(),
            ringfence_store::Expect::Any,
        )
        .await
        .unwrap();
    let err = e.cp.refresh().await.unwrap_err();
    assert!(err.to_string().contains("/bab/status/damaged"), "{err}");
    let why = refused(e.issue(&machine, WEB).await);
    assert!(why.contains("view of placements is stale"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_identity_runs_in_one_environment_and_ids_stay_short() {
    let mut e = env().await;
    e.fleet().await;
    e.policy("enforce", "").await;
    let m = e.manifest("web-1", "hardened", 1);
    let atts = e.attestations(&m);
    e.cp.submit(&m, &atts, &Request::Normal, "alice")
        .await
        .unwrap();
    let staging = String::from_utf8(e.manifest("web-2", "hardened", 1))
        .unwrap()
        .replace("environment: production", "environment: staging");
    let err =
        e.cp.submit(staging.as_bytes(), &[], &Request::Normal, "alice")
            .await
            .unwrap_err();
    assert!(
        err.to_string()
            .contains("payments/web already runs in environment production (job payments/web-1)"),
        "{err}"
    );
    let long = "x".repeat(63);
    let m = String::from_utf8(e.manifest(&long, "hardened", 1))
        .unwrap()
        .replace("service: web", &format!("service: {long}"));
    let err =
        e.cp.submit(m.as_bytes(), &[], &Request::Normal, "alice")
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("must leave them at most 128"),
        "{err}"
    );
    let tag = String::from_utf8(e.manifest("web-3", "hardened", 1)).unwrap();
    let tag = tag.replace(&format!("@{}", e.f.image), ":latest");
    let err =
        e.cp.submit(tag.as_bytes(), &[], &Request::Normal, "alice")
            .await
            .unwrap_err();
    assert!(
        err.to_string()
            .contains("image \"registry.acme.test/payments/web:latest\""),
        "{err}"
    );
}
