//! The control plane: machines and pools, the job lifecycle, and the authority the CA asks.
//!
//! Flow of a job: submit → Binary Authorization (the gate audits its verdict before anything
//! is admitted) → placement under the Workload Security Rings (audited per task, before the
//! assignment is written) → the machine's agent runs it → the CA issues the task's SVID only
//! while the task is admitted, placed on the requesting machine, and not withheld by
//! continuous verification.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ringfence_admission::verdict::{Attestation, Basis, Request, Verdict};
use ringfence_audit::{AuditSink, Decision, Event};
use ringfence_bab::Gate;
use ringfence_bab::manifest::JobManifest;
use ringfence_core::{Clock, MachineId, Name, SpiffeId, TrustDomain, UnixTime};
use ringfence_identity::{IssuanceAuthority, IssuanceAuthorization};
use ringfence_sched::{Admission, Machine, Placed, Pool, Resources, Ring, Task};
use ringfence_store::{Expect, Key, PageRequest, Prefix, Store, StoreError, Txn};

use crate::model::{
    Assignment, Endpoint, HostTrust, JobRecord, JobState, MachineRecord, Registration,
    TaskPlacement, TaskReport, TaskStatus,
};

/// Most replicas of one job (a job's placement is one Store transaction).
pub const MAX_REPLICAS: u32 = 30;

/// Longest task id (`<namespace>.<service>.<job>.<replica>`), as agents accept them.
pub const MAX_TASK_ID: usize = 128;

/// Resources a task reserves when its manifest names none.
pub const DEFAULT_RESOURCES: Resources = Resources {
    cpu_milli: 100,
    memory_mib: 64,
};

/// Why the control plane could not act.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// The request is malformed; the message says how.
    #[error("{0}")]
    Invalid(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The audit log could not record a transition, so it did not happen.
    #[error("the audit log could not record this, so it was not done: {0}")]
    AuditUnavailable(String),
    /// Admission failed to decide.
    #[error(transparent)]
    Gate(#[from] ringfence_bab::GateError),
    /// The Store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data is unreadable.
    #[error("stored control-plane data at {key} is unreadable: {why}")]
    Corrupt {
        /// Where.
        key: String,
        /// Why.
        why: String,
    },
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The trust domain of every identity the control plane hands out.
    pub trust_domain: TrustDomain,
    /// A machine not heard from for this long takes no new tasks and its tasks are moved.
    pub machine_timeout: Duration,
    /// How long an issuance authorization lasts (the CA checks it at signing time).
    pub authorization_ttl: Duration,
    /// The issuance authority refuses everything when its view of placements is older.
    pub max_authority_staleness: Duration,
}

impl Settings {
    /// Defaults for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            machine_timeout: Duration::from_secs(15),
            authorization_ttl: Duration::from_secs(60),
            max_authority_staleness: Duration::from_secs(30),
        }
    }
}

/// Who may be issued what, as of the last refresh.
#[derive(Debug, Default)]
struct AuthorityView {
    /// (SPIFFE ID, machine) → the jobs with a task of that identity placed there.
    placed: BTreeMap<(String, String), BTreeSet<String>>,
    /// Jobs whose SVID renewal continuous verification withholds, with why.
    withheld: BTreeMap<String, String>,
    /// When it was built.
    at: Option<UnixTime>,
}

/// The control plane.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    audit: Arc<dyn AuditSink>,
    gate: Gate,
    clock: Arc<dyn Clock>,
    settings: Settings,
    actor: SpiffeId,
    view: RwLock<AuthorityView>,
    /// Placement decisions are made one at a time (one control-plane process per Store).
    placing: tokio::sync::Mutex<()>,
    /// When this control plane started: no machine counts as silent before it has had a
    /// full timeout to report to this process (a restart must not move every task).
    started: UnixTime,
}

fn key(segments: &[&str]) -> Result<Key, CpError> {
    Ok(Key::from_segments(segments.iter().copied())?)
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CpError> {
    serde_json::to_vec(v).map_err(|e| CpError::Invalid(e.to_string()))
}

fn parse_name(what: &str, v: &str) -> Result<(), CpError> {
    Name::parse(v)
        .map(|_| ())
        .map_err(|e| CpError::Invalid(format!("{what}: {e}")))
}

/// The ring a manifest asks for (default `hardened`).
pub fn parse_ring(s: Option<&str>) -> Result<Ring, CpError> {
    Ok(match s.unwrap_or("hardened") {
        "foundational" => Ring::Foundational,
        "sensitive" => Ring::Sensitive,
        "hardened" => Ring::Hardened,
        "unhardened" => Ring::Unhardened,
        other => {
            return Err(CpError::Invalid(format!(
                "ring {other:?}: use foundational, sensitive, hardened or unhardened"
            )));
        }
    })
}

fn admission_of(basis: Basis) -> Option<Admission> {
    Some(match basis {
        Basis::Compliant => Admission::Compliant,
        Basis::AllowAll => Admission::AllowAll,
        Basis::OptOut => Admission::OptOut,
        Basis::DryRun => Admission::DryRun,
        Basis::BreakGlass => Admission::BreakGlass,
        Basis::Denied => return None,
    })
}

fn describe(v: &Verdict) -> String {
    let mut s = v.basis.to_string();
    if let Some(j) = &v.justification {
        s.push_str(&format!(" (justification: {j})"));
    }
    if !v.findings.is_empty() {
        s.push_str(": ");
        s.push_str(
            &v.findings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    s
}

impl ControlPlane {
    /// A control plane over `store`, auditing to `audit`, admitting through `gate`.
    pub fn new(
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditSink>,
        gate: Gate,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Result<Self, CpError> {
        let actor = settings
            .trust_domain
            .workload(&["ringfence", "controlplane"])
            .map_err(|e| CpError::Invalid(e.to_string()))?;
        let started = clock.now();
        Ok(Self {
            inner: Arc::new(Inner {
                started,
                store,
                audit,
                gate,
                clock,
                settings,
                actor,
                view: RwLock::default(),
                placing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The identity of a service's tasks: `spiffe://<td>/ns/<namespace>/svc/<service>`.
    pub fn service_id(&self, namespace: &str, service: &str) -> Result<SpiffeId, CpError> {
        self.inner
            .settings
            .trust_domain
            .workload(&["ns", namespace, "svc", service])
            .map_err(|e| CpError::Invalid(e.to_string()))
    }

    /// The admission gate.
    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    async fn record(&self, event: Event) -> Result<(), CpError> {
        self.inner
            .audit
            .record(&event)
            .await
            .map_err(|e| CpError::AuditUnavailable(e.to_string()))
    }

    fn event(&self, action: &str, target: impl Into<String>, d: Decision, why: &str) -> Event {
        Event::new(
            self.inner.clock.now(),
            self.inner.actor.clone(),
            action,
            target,
            d,
            why,
        )
    }

    async fn list<T: serde::de::DeserializeOwned>(&self, p: &str) -> Result<Vec<T>, CpError> {
        let prefix = Prefix::new(p)?;
        let mut out = Vec::new();
        let mut page = PageRequest::first(0);
        loop {
            let got = self.inner.store.range(&prefix, page.clone()).await?;
            for v in got.items {
                out.push(
                    serde_json::from_slice(&v.value).map_err(|e| CpError::Corrupt {
                        key: v.key.to_string(),
                        why: e.to_string(),
                    })?,
                );
            }
            match got.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, k: &Key) -> Result<Option<T>, CpError> {
        match self.inner.store.get(k).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v.value)
                .map(Some)
                .map_err(|e| CpError::Corrupt {
                    key: k.to_string(),
                    why: e.to_string(),
                }),
        }
    }

    /// Puts a machine in a pool (an operator's decision; audited). It takes effect at the
    /// machine's next registration.
    pub async fn assign_pool(&self, machine: &str, pool: Pool, by: &str) -> Result<(), CpError> {
        MachineId::parse(machine).map_err(|e| CpError::Invalid(format!("machine: {e}")))?;
        self.record(
            self.event(
                "machine.pool",
                format!("machine/{machine}"),
                Decision::Info,
                &format!("assigned to the {pool} pool"),
            )
            .with_detail("by", by),
        )
        .await?;
        self.inner
            .store
            .put(&key(&["cp", "pools", machine])?, json(&pool)?, Expect::Any)
            .await?;
        Ok(())
    }

    /// Registers (or re-registers) a machine. The pool is the one an operator assigned
    /// (development when none was); `trust` is what the caller of this function knows about
    /// the host, never what the agent says (see [`HostTrust`]).
    pub async fn register(
        &self,
        reg: &Registration,
        trust: HostTrust,
    ) -> Result<MachineRecord, CpError> {
        MachineId::parse(&reg.machine).map_err(|e| CpError::Invalid(format!("machine: {e}")))?;
        reg.address
            .parse::<std::net::IpAddr>()
            .map_err(|e| CpError::Invalid(format!("address {:?}: {e}", reg.address)))?;
        let assigned: Option<Pool> = self.get(&key(&["cp", "pools", &reg.machine])?).await?;
        let pool = assigned.unwrap_or(Pool::Development);
        let k = key(&["cp", "machines", &reg.machine])?;
        let before: Option<MachineRecord> = self.get(&k).await?;
        let now = self.inner.clock.now();
        let record = MachineRecord {
            id: reg.machine.clone(),
            pool,
            trust,
            capacity: reg.capacity,
            address: reg.address.clone(),
            registered_at: before.as_ref().map_or(now, |b| b.registered_at),
            last_seen: now,
        };
        let why = match (trust, pool) {
            (HostTrust::Development, p) if p != Pool::Development => format!(
                "registered in development mode (no host attestation): assigned to {p} but serves only development work"
            ),
            (HostTrust::Development, _) => {
                "registered in development mode (no host attestation)".to_owned()
            }
            (HostTrust::ControlPlaneHost, p) => {
                format!("registered on the control plane's own host, pool {p}")
            }
        };
        self.record(
            self.event(
                "machine.register",
                format!("machine/{}", reg.machine),
                Decision::Info,
                &why,
            )
            .with_detail("address", &reg.address),
        )
        .await?;
        // A (re)starting agent knows nothing of its tasks yet: forget what it said before.
        let mut txn = Txn::new().put(k, json(&record)?);
        let stale: Vec<String> = self
            .task_statuses()
            .await?
            .into_iter()
            .filter(|(_, s)| s.machine == reg.machine)
            .map(|(task, _)| task)
            .collect();
        let mut ops = 1;
        for task in stale {
            txn = txn.delete(key(&["cp", "tasks", &task])?);
            ops += 1;
            if ops >= 60 {
                self.inner.store.txn(std::mem::take(&mut txn)).await?;
                ops = 0;
            }
        }
        if ops > 0 {
            self.inner.store.txn(txn).await?;
        }
        Ok(record)
    }

    /// The registered machines.
    pub async fn machines(&self) -> Result<Vec<MachineRecord>, CpError> {
        self.list("/cp/machines/").await
    }

    /// The jobs.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, CpError> {
        self.list("/cp/jobs/").await
    }

    /// One job.
    pub async fn job(&self, namespace: &str, name: &str) -> Result<JobRecord, CpError> {
        parse_name("namespace", namespace)?;
        parse_name("job", name)?;
        self.get(&key(&["cp", "jobs", namespace, name])?)
            .await?
            .ok_or_else(|| CpError::NotFound(format!("no job {namespace}/{name}")))
    }

    /// What `machine`'s agent must run.
    pub async fn assignments(&self, machine: &str) -> Result<Vec<Assignment>, CpError> {
        MachineId::parse(machine).map_err(|e| CpError::Invalid(format!("machine: {e}")))?;
        self.list(&format!("/cp/assignments/{machine}/")).await
    }

    /// The last reported status of every task.
    pub async fn task_statuses(&self) -> Result<BTreeMap<String, TaskStatus>, CpError> {
        Ok(self
            .list::<TaskStatus>("/cp/tasks/")
            .await?
            .into_iter()
            .map(|s| (s.report.task.clone(), s))
            .collect())
    }

    /// An agent's status report (also its heartbeat). Reports for tasks not assigned to that
    /// machine are refused.
    pub async fn report(&self, machine: &str, reports: &[TaskReport]) -> Result<(), CpError> {
        let mk = key(&["cp", "machines", machine])?;
        let Some(mut m) = self.get::<MachineRecord>(&mk).await? else {
            return Err(CpError::NotFound(format!(
                "machine {machine} is not registered"
            )));
        };
        let assigned: BTreeSet<String> = self
            .assignments(machine)
            .await?
            .into_iter()
            .map(|a| a.task)
            .collect();
        let now = self.inner.clock.now();
        m.last_seen = now;
        let mut txn = Txn::new().put(mk, json(&m)?);
        let mut ops = 1;
        for r in reports {
            if !assigned.contains(&r.task) {
                continue; // a task being stopped; its assignment is already gone
            }
            let status = TaskStatus {
                machine: machine.to_owned(),
                report: r.clone(),
                at: now,
            };
            txn = txn.put(key(&["cp", "tasks", &r.task])?, json(&status)?);
            ops += 1;
            if ops >= 60 {
                self.inner.store.txn(txn).await?;
                txn = Txn::new();
                ops = 0;
            }
        }
        if ops > 0 {
            self.inner.store.txn(txn).await?;
        }
        Ok(())
    }

    /// The endpoints of `namespace/service`: each running task's machine address and ports.
    pub async fn endpoints(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Vec<Endpoint>, CpError> {
        let machines: BTreeMap<String, MachineRecord> = self
            .machines()
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let statuses = self.task_statuses().await?;
        let mut out = Vec::new();
        for job in self.jobs().await? {
            if job.namespace != namespace || job.service != service {
                continue;
            }
            for t in &job.tasks {
                let Some(m) = t.machine.as_ref().and_then(|m| machines.get(m)) else {
                    continue;
                };
                let running = statuses
                    .get(&t.id)
                    .is_some_and(|s| s.machine == m.id && s.report.state == "running");
                if !running {
                    continue;
                }
                for (name, port) in &job.ports {
                    out.push(Endpoint {
                        task: t.id.clone(),
                        machine: m.id.clone(),
                        address: m.address.clone(),
                        port_name: name.clone(),
                        port: *port,
                    });
                }
            }
        }
        Ok(out)
    }

    fn alive(&self, m: &MachineRecord, now: UnixTime) -> bool {
        now.since(m.last_seen.max(self.inner.started)) < self.inner.settings.machine_timeout
    }

    /// The scheduler's view: every machine with the tasks placed on it (jobs other than
    /// `except`).
    async fn fleet(&self, except: Option<&str>) -> Result<Vec<Machine>, CpError> {
        let now = self.inner.clock.now();
        let jobs = self.jobs().await?;
        let mut fleet: Vec<Machine> = self
            .machines()
            .await?
            .into_iter()
            .map(|m| Machine {
                schedulable: self.alive(&m, now),
                attested: m.trust == HostTrust::ControlPlaneHost,
                id: m.id,
                pool: m.pool,
                capacity: m.capacity,
                tasks: Vec::new(),
            })
            .collect();
        for j in jobs.iter().filter(|j| Some(j.key().as_str()) != except) {
            for t in &j.tasks {
                if let Some(m) = fleet
                    .iter_mut()
                    .find(|m| t.machine.as_deref() == Some(m.id.as_str()))
                {
                    m.tasks.push(Placed {
                        task: t.id.clone(),
                        ring: j.ring,
                        resources: j.resources,
                    });
                }
            }
        }
        Ok(fleet)
    }

    /// Submits a job: admission, then placement. Returns the job as recorded; a refused job
    /// is returned with [`JobState::Refused`] and the reasons (and is not stored, so nothing
    /// of it runs). Submitting a job of the same name replaces it.
    pub async fn submit(
        &self,
        manifest: &[u8],
        attestations: &[Attestation],
        request: &Request,
        by: &str,
    ) -> Result<JobRecord, CpError> {
        let (m, job) = JobManifest::parse(manifest).map_err(CpError::Invalid)?;
        parse_name("namespace", &job.namespace)?;
        parse_name("job", &job.name)?;
        parse_name("service", &job.service)?;
        let ring = parse_ring(m.spec.ring.as_deref())?;
        if m.spec.replicas == 0 || m.spec.replicas > MAX_REPLICAS {
            return Err(CpError::Invalid(format!(
                "replicas: {} (use 1 to {MAX_REPLICAS})",
                m.spec.replicas
            )));
        }
        let memory_limit = m
            .spec
            .resources
            .memory
            .as_deref()
            .map(ringfence_sandbox::cgroup::parse_memory)
            .transpose()
            .map_err(|e| CpError::Invalid(format!("resources.memory: {e}")))?;
        let cpu_limit = m
            .spec
            .resources
            .cpu
            .as_deref()
            .map(ringfence_sandbox::cgroup::parse_cpu)
            .transpose()
            .map_err(|e| CpError::Invalid(format!("resources.cpu: {e}")))?;
        let resources = Resources {
            cpu_milli: cpu_limit.map_or(DEFAULT_RESOURCES.cpu_milli, |c| (c * 1000.0) as u64),
            memory_mib: memory_limit.map_or(DEFAULT_RESOURCES.memory_mib, |b| b.div_ceil(1 << 20)),
        };
        let digest = ringfence_admission::verdict::parse_image(&job.image)
            .map_err(|e| CpError::Invalid(format!("image {:?}: {e}", job.image)))?
            .digest
            .to_string();
        // `<namespace>.<service>.<job>.<replica>` names directories on the agents.
        let longest = format!(
            "{}.{}.{}.{}",
            job.namespace,
            job.service,
            job.name,
            m.spec.replicas.saturating_sub(1)
        );
        if longest.len() > MAX_TASK_ID {
            return Err(CpError::Invalid(format!(
                "task ids such as {longest} would be {} characters; namespace, service and job name together must leave them at most {MAX_TASK_ID}",
                longest.len()
            )));
        }
        let spiffe_id = self.service_id(&job.namespace, &job.service)?;

        let _placing = self.inner.placing.lock().await;
        // An SVID names the service, not its environment: one environment per service
        // identity, or a job admitted under a looser policy elsewhere would share it.
        if let Some(other) = self.jobs().await?.into_iter().find(|j| {
            j.namespace == job.namespace
                && j.service == job.service
                && j.environment != job.environment
                && j.state != JobState::Stopped
        }) {
            return Err(CpError::Invalid(format!(
                "{}/{} already runs in environment {} (job {}): one environment per service identity, since its SVID does not name the environment",
                job.namespace,
                job.service,
                other.environment,
                other.key()
            )));
        }
        let verdict = self
            .inner
            .gate
            .admit(&job, attestations, request, by)
            .await?;
        let mut record = JobRecord {
            namespace: job.namespace.clone(),
            name: job.name.clone(),
            service: job.service.clone(),
            environment: job.environment.clone(),
            manifest: String::from_utf8_lossy(manifest).into_owned(),
            image: job.image.clone(),
            digest,
            args: m.spec.args.clone(),
            env: m.spec.env.clone(),
            ports: m
                .spec
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.port))
                .collect(),
            ring,
            resources,
            memory_limit,
            cpu_limit,
            replicas: m.spec.replicas,
            admission: admission_of(verdict.basis),
            verdict: describe(&verdict),
            state: JobState::Placed,
            tasks: Vec::new(),
            by: by.to_owned(),
            submitted_at: self.inner.clock.now(),
        };
        let Some(admission) = record.admission.filter(|_| verdict.admit) else {
            record.state = JobState::Refused(format!("Binary Authorization: {}", record.verdict));
            return Ok(record);
        };
        let job_key = record.key();
        let mut fleet = self.fleet(Some(&job_key)).await?;
        let mut pending = Vec::new();
        for replica in 0..record.replicas {
            let id = format!("{}.{}.{}.{replica}", job.namespace, job.service, job.name);
            let task = Task {
                id: id.clone(),
                ring,
                admission,
                // Every task runs in the runtime sandbox.
                sandboxed: true,
                resources,
            };
            match ringfence_sched::place_and_record(&mut fleet, &task) {
                Ok(machine) => record.tasks.push(TaskPlacement {
                    id,
                    machine: Some(machine),
                }),
                Err(e @ ringfence_sched::SchedError::RingNotSupported { .. }) => {
                    let why = e.to_string();
                    self.record(
                        self.event("job.place", job_key.clone(), Decision::Deny, &why)
                            .with_detail("ring", ring.to_string()),
                    )
                    .await?;
                    record.tasks.clear();
                    record.state = JobState::Refused(why);
                    return Ok(record);
                }
                Err(e) => {
                    pending.push(e.to_string());
                    record.tasks.push(TaskPlacement { id, machine: None });
                }
            }
        }
        if !pending.is_empty() {
            record.state = JobState::Pending(pending.join("; "));
        }
        // Every placement is in the audit log before any agent can see it.
        for t in &record.tasks {
            let (d, why) = match &t.machine {
                Some(m) => (Decision::Allow, format!("placed on {m}")),
                None => (Decision::Info, "pending: fits nowhere yet".to_owned()),
            };
            self.record(
                self.event("job.place", t.id.clone(), d, &why)
                    .with_detail("job", &job_key)
                    .with_detail("ring", ring.to_string())
                    .with_detail("admission", format!("{admission:?}"))
                    .with_detail("spiffe_id", spiffe_id.as_str()),
            )
            .await?;
        }
        self.write_job(&record, &spiffe_id).await?;
        drop(_placing);
        self.refresh().await?;
        Ok(record)
    }

    /// Writes a job and replaces its assignments, in one transaction.
    async fn write_job(&self, record: &JobRecord, spiffe_id: &SpiffeId) -> Result<(), CpError> {
        let k = key(&["cp", "jobs", &record.namespace, &record.name])?;
        let mut txn = Txn::new().put(k.clone(), json(record)?);
        if let Some(old) = self.get::<JobRecord>(&k).await? {
            for t in &old.tasks {
                // An assignment that stays where it is is overwritten below, not deleted.
                let kept = record
                    .tasks
                    .iter()
                    .any(|n| n.id == t.id && n.machine == t.machine);
                if let Some(m) = t.machine.as_ref().filter(|_| !kept) {
                    txn = txn.delete(key(&["cp", "assignments", m, &t.id])?);
                }
            }
        }
        let env: Vec<String> = record.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for t in &record.tasks {
            let Some(m) = &t.machine else { continue };
            let a = Assignment {
                task: t.id.clone(),
                job: record.key(),
                spiffe_id: spiffe_id.clone(),
                digest: record.digest.clone(),
                args: record.args.clone(),
                env: env.clone(),
                ring: record.ring,
                resources: record.resources,
                memory_limit: record.memory_limit,
                cpu_limit: record.cpu_limit,
                ports: record.ports.clone(),
            };
            txn = txn.put(key(&["cp", "assignments", m, &t.id])?, json(&a)?);
        }
        // The authority learns the new placements before any agent can see them (so a task's
        // first CSR is never refused for a race), and forgets the old ones at once.
        let machines: Vec<&str> = record
            .tasks
            .iter()
            .filter_map(|t| t.machine.as_deref())
            .collect();
        self.view_replace_job(&record.key(), spiffe_id, &machines);
        if let Err(e) = self.inner.store.txn(txn).await {
            if self.refresh_locked().await.is_err() {
                // Nothing known for sure: refuse every issuance until a refresh succeeds.
                self.inner
                    .view
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .at = None;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Replaces a job's placements in the authority's view (none: the job is gone).
    fn view_replace_job(&self, job: &str, spiffe_id: &SpiffeId, machines: &[&str]) {
        let mut view = self.inner.view.write().unwrap_or_else(|p| p.into_inner());
        for jobs in view.placed.values_mut() {
            jobs.remove(job);
        }
        view.placed.retain(|_, jobs| !jobs.is_empty());
        for m in machines {
            view.placed
                .entry((spiffe_id.to_string(), (*m).to_owned()))
                .or_default()
                .insert(job.to_owned());
        }
    }

    /// Stops a job: its assignments go (agents stop its tasks), its deployment leaves
    /// continuous verification. Audited.
    pub async fn stop(&self, namespace: &str, name: &str, by: &str) -> Result<JobRecord, CpError> {
        let _placing = self.inner.placing.lock().await;
        let mut record = self.job(namespace, name).await?;
        self.record(
            self.event(
                "job.stop",
                record.key(),
                Decision::Info,
                "stopped on request",
            )
            .with_detail("by", by),
        )
        .await?;
        let k = key(&["cp", "jobs", namespace, name])?;
        let mut txn = Txn::new();
        for t in &record.tasks {
            if let Some(m) = &t.machine {
                txn = txn.delete(key(&["cp", "assignments", m, &t.id])?);
            }
        }
        record.tasks.clear();
        record.state = JobState::Stopped;
        txn = txn.put(k, json(&record)?);
        // Its identity is refused from now on, before its assignments go.
        let spiffe_id = self.service_id(&record.namespace, &record.service)?;
        self.view_replace_job(&record.key(), &spiffe_id, &[]);
        self.inner.store.txn(txn).await?;
        let job = ringfence_bab::manifest::JobManifest::parse(record.manifest.as_bytes())
            .map_err(CpError::Invalid)?
            .1;
        self.inner.gate.remove(&job, by).await?;
        drop(_placing);
        self.refresh().await?;
        Ok(record)
    }

    /// Moves the tasks of machines not heard from within the timeout, and places pending
    /// tasks where they now fit. Returns the task ids that moved or were placed.
    pub async fn reschedule(&self) -> Result<Vec<String>, CpError> {
        let _placing = self.inner.placing.lock().await;
        let now = self.inner.clock.now();
        let dead: BTreeSet<String> = self
            .machines()
            .await?
            .into_iter()
            .filter(|m| !self.alive(m, now))
            .map(|m| m.id)
            .collect();
        let mut moved = Vec::new();
        for mut job in self.jobs().await? {
            let needs = job.tasks.iter().any(|t| match &t.machine {
                None => true,
                Some(m) => dead.contains(m),
            });
            let Some(admission) = job.admission.filter(|_| needs) else {
                continue;
            };
            let mut fleet = self.fleet(Some(&job.key())).await?;
            // Keep the tasks that are fine where they are.
            for t in &job.tasks {
                if let Some(m) = t.machine.as_ref().filter(|m| !dead.contains(*m))
                    && let Some(fm) = fleet.iter_mut().find(|f| &f.id == m)
                {
                    fm.tasks.push(Placed {
                        task: t.id.clone(),
                        ring: job.ring,
                        resources: job.resources,
                    });
                }
            }
            let mut pending = Vec::new();
            let mut changed = false;
            let mut tasks = job.tasks.clone();
            for t in &mut tasks {
                if t.machine.as_ref().is_some_and(|m| !dead.contains(m)) {
                    continue;
                }
                let task = Task {
                    id: t.id.clone(),
                    ring: job.ring,
                    admission,
                    sandboxed: true,
                    resources: job.resources,
                };
                let from = t.machine.clone();
                match ringfence_sched::place_and_record(&mut fleet, &task) {
                    Ok(m) => {
                        let why = match &from {
                            Some(f) => format!("moved from {f} (not heard from) to {m}"),
                            None => format!("placed on {m}"),
                        };
                        self.record(
                            self.event("job.place", t.id.clone(), Decision::Allow, &why)
                                .with_detail("job", job.key()),
                        )
                        .await?;
                        t.machine = Some(m);
                        moved.push(t.id.clone());
                        changed = true;
                    }
                    Err(e) => {
                        if let Some(f) = &from {
                            changed = true;
                            self.record(
                                self.event(
                                    "job.place",
                                    t.id.clone(),
                                    Decision::Info,
                                    &format!("taken off {f} (not heard from); pending: {e}"),
                                )
                                .with_detail("job", job.key()),
                            )
                            .await?;
                        }
                        t.machine = None;
                        pending.push(e.to_string());
                    }
                }
            }
            if !changed {
                continue;
            }
            job.tasks = tasks;
            job.state = if pending.is_empty() {
                JobState::Placed
            } else {
                JobState::Pending(pending.join("; "))
            };
            let spiffe_id = self.service_id(&job.namespace, &job.service)?;
            self.write_job(&job, &spiffe_id).await?;
        }
        drop(_placing);
        if !moved.is_empty() {
            self.refresh().await?;
        }
        Ok(moved)
    }

    /// Rebuilds the issuance authority's view from the Store: the placements, and the jobs
    /// whose SVIDs continuous verification withholds.
    pub async fn refresh(&self) -> Result<(), CpError> {
        // Never between a placement change and its commit: a snapshot read before the commit
        // would undo the change in the view.
        let _placing = self.inner.placing.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<(), CpError> {
        let result = self.rebuild_view().await;
        if result.is_err() {
            // Unsure what is placed or withheld: refuse every issuance until a rebuild works
            // (SVIDs renew at half-life, so a short refusal costs nothing).
            self.inner
                .view
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .at = None;
        }
        result
    }

    async fn rebuild_view(&self) -> Result<(), CpError> {
        let mut view = AuthorityView::default();
        let prefix = Prefix::new("/cp/assignments/")?;
        let mut page = PageRequest::first(0);
        loop {
            let got = self.inner.store.range(&prefix, page.clone()).await?;
            for v in got.items {
                // The machine is the key's segment, written only by placement.
                let machine = v
                    .key
                    .as_str()
                    .trim_start_matches("/cp/assignments/")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let a: Assignment =
                    serde_json::from_slice(&v.value).map_err(|e| CpError::Corrupt {
                        key: v.key.to_string(),
                        why: e.to_string(),
                    })?;
                view.placed
                    .entry((a.spiffe_id.to_string(), machine))
                    .or_default()
                    .insert(a.job);
            }
            match got.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        for s in self.inner.gate.revoked().await? {
            let why = s
                .findings()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            view.withheld
                .insert(format!("{}/{}", s.job.namespace, s.job.name), why);
        }
        view.at = Some(self.inner.clock.now());
        *self.inner.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        Ok(())
    }

    /// The authority the CA asks before it signs a task's SVID.
    pub fn authority(&self) -> Arc<dyn IssuanceAuthority> {
        Arc::new(Authority(self.clone()))
    }

    /// Runs until `shutdown`: continuous verification (a pass when a policy changes and at
    /// least every `reverify_every`), the authority's view refreshed every second, and tasks
    /// of silent machines moved.
    pub async fn run(
        &self,
        reverify_every: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), CpError> {
        let gate = self.inner.gate.clone();
        let cv_shutdown = shutdown.clone();
        let cv = tokio::spawn(async move { gate.watch(reverify_every, cv_shutdown).await });
        let mut shutdown = shutdown;
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "refreshing the issuance authority failed");
            }
            if let Err(e) = self.reschedule().await {
                tracing::warn!(error = %e, "rescheduling failed");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        match cv.await {
            Ok(r) => r.map_err(CpError::from),
            Err(e) => Err(CpError::Invalid(format!(
                "continuous verification stopped: {e}"
            ))),
        }
    }
}

struct Authority(ControlPlane);

impl IssuanceAuthority for Authority {
    fn authorize(
        &self,
        machine: &MachineId,
        spiffe_id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        let inner = &self.0.inner;
        let now = inner.clock.now();
        let view = inner.view.read().unwrap_or_else(|p| p.into_inner());
        match view.at {
            Some(at) if now.since(at) <= inner.settings.max_authority_staleness => {}
            _ => {
                return Err(
                    "the control plane's view of placements is stale; refusing until it is refreshed"
                        .into(),
                );
            }
        }
        let Some(jobs) = view
            .placed
            .get(&(spiffe_id.to_string(), machine.as_str().to_owned()))
        else {
            return Err(format!(
                "no admitted task of {spiffe_id} is placed on machine {}",
                machine.as_str()
            ));
        };
        // An SVID names a service, not a job: if any job of this identity on this machine is
        // withheld, so is the identity (another job of the same service must not keep a
        // failing one's credentials alive).
        let withheld: Vec<String> = jobs
            .iter()
            .filter_map(|j| view.withheld.get(j).map(|why| format!("job {j}: {why}")))
            .collect();
        if !withheld.is_empty() {
            return Err(format!(
                "continuous verification withholds SVID renewal: {}",
                withheld.join("; ")
            ));
        }
        Ok(IssuanceAuthorization {
            spiffe_id: spiffe_id.clone(),
            machine: machine.clone(),
            not_after: now.saturating_add(inner.settings.authorization_ttl),
        })
    }
}
