//! The admission gate: loads the service policies and deployments from the Store, asks the
//! pure verdict, writes the audit entry **before** admitting (no audit entry, no deploy),
//! records admitted deployments, runs continuous verification passes and queues
//! notifications.
//!
//! Store layout (all JSON but policies, which keep the YAML as applied):
//! - `/bab/policies/<name>`: the policy YAML
//! - `/bab/deployments/<namespace>/<service>/<environment>/<job>`: the running deployment
//! - `/bab/status/<deployment-id>`: the last continuous-verification status

use std::sync::Arc;

use ringfence_admission::continuous::{self, Deployment, Flag, Status};
use ringfence_admission::policy::{Policy, PolicyError, PolicySet};
use ringfence_admission::report::{self, Report};
use ringfence_admission::verdict::{Attestation, Basis, Job, Request, Verdict, evaluate};
use ringfence_audit::{AuditError, AuditSink, Decision, Event};
use ringfence_core::{Clock, Name, SpiffeId};
use ringfence_store::{Compare, Expect, Key, PageRequest, Prefix, Store, StoreError, Txn};

use crate::notify::{NotifyError, Outbox};

/// Why the gate could not decide or act.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The audit log could not record the decision, so nothing was admitted.
    #[error(
        "the audit log could not record this deploy, so it is refused (admission writes the audit entry first): {0}"
    )]
    AuditUnavailable(AuditError),
    /// The Store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored or given policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Notifications could not be queued.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// A request was malformed.
    #[error("{0}")]
    Invalid(String),
    /// Stored data is unreadable.
    #[error("stored Binary Authorization data at {key} is unreadable: {why}")]
    Corrupt {
        /// Where.
        key: String,
        /// Why.
        why: String,
    },
}

/// The gate.
#[derive(Debug, Clone)]
pub struct Gate {
    store: Arc<dyn Store>,
    audit: Arc<dyn AuditSink>,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
    actor: SpiffeId,
}

/// Bumped by every policy change; the compare-and-swap guard of the policy set.
const POLICY_GENERATION: &str = "/bab/policy-generation";

/// A transaction that holds only if the policy set's generation is still `seen`, and bumps it.
fn policy_txn(generation: &Key, seen: Option<&ringfence_store::Versioned>) -> Txn {
    let next = seen
        .and_then(|v| {
            std::str::from_utf8(&v.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        .saturating_add(1);
    let expect = seen.map_or(Expect::Absent, |v| Expect::Revision(v.mod_revision));
    Txn::new()
        .compare(Compare::new(generation.clone(), expect))
        .put(generation.clone(), next.to_string().into_bytes())
}

fn prefix(p: &str) -> Result<Prefix, GateError> {
    Ok(Prefix::new(p)?)
}

/// The outcome of a policy change.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The policy as stored.
    pub policy: Policy,
    /// Whether it was new.
    pub created: bool,
    /// Every running job re-verified against the new policy set.
    pub statuses: Vec<Status>,
}

impl Gate {
    /// A gate over `store`, auditing to `audit` as `actor` (the admission service's id).
    pub fn new(
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditSink>,
        outbox: Outbox,
        clock: Arc<dyn Clock>,
        actor: SpiffeId,
    ) -> Self {
        Self {
            store,
            audit,
            outbox,
            clock,
            actor,
        }
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    async fn list(&self, p: &str) -> Result<Vec<(Key, Vec<u8>)>, GateError> {
        let prefix = prefix(p)?;
        let mut out = Vec::new();
        let mut page = PageRequest::first(0);
        loop {
            let got = self.store.range(&prefix, page.clone()).await?;
            out.extend(got.items.into_iter().map(|v| (v.key, v.value)));
            match got.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// The stored policies.
    pub async fn policies(&self) -> Result<PolicySet, GateError> {
        let mut policies = Vec::new();
        for (key, value) in self.list("/bab/policies/").await? {
            let text = String::from_utf8(value).map_err(|e| GateError::Corrupt {
                key: key.to_string(),
                why: e.to_string(),
            })?;
            policies.push(Policy::from_yaml(&text).map_err(|e| GateError::Corrupt {
                key: key.to_string(),
                why: e.to_string(),
            })?);
        }
        Ok(PolicySet::new(policies)?)
    }

    /// The running deployments.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, GateError> {
        self.list("/bab/deployments/")
            .await?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_slice(&value).map_err(|e| GateError::Corrupt {
                    key: key.to_string(),
                    why: e.to_string(),
                })
            })
            .collect()
    }

    async fn record(&self, event: Event) -> Result<(), GateError> {
        self.audit
            .record(&event)
            .await
            .map_err(GateError::AuditUnavailable)
    }

    /// Applies (creates or replaces) a policy, audits the change, and re-verifies every running
    /// job at once: tightening a policy flags the jobs it now refuses.
    ///
    /// The overlap check and the write are one compare-and-swap on the policy set's generation
    /// key, so two concurrent applies cannot both store policies that govern the same service.
    pub async fn apply_policy(&self, yaml: &str, by: &str) -> Result<Applied, GateError> {
        let policy = Policy::from_yaml(yaml)?;
        let key = Key::from_segments(["bab", "policies", policy.name()])?;
        let generation = Key::new(POLICY_GENERATION)?;
        let mut created = false;
        let mut stored = false;
        for _ in 0..5 {
            let gen_now = self.store.get(&generation).await?;
            let mut all: Vec<Policy> = self
                .policies()
                .await?
                .policies()
                .iter()
                .filter(|p| p.name() != policy.name())
                .cloned()
                .collect();
            all.push(policy.clone());
            PolicySet::new(all)?; // no two policies may govern the same service and environment
            created = self.store.get(&key).await?.is_none();
            self.record(
                Event::new(
                    self.clock.now(),
                    self.actor.clone(),
                    "bab.policy.apply",
                    format!("policy/{}", policy.name()),
                    Decision::Info,
                    format!(
                        "{} policy for {}/{} ({:?})",
                        if created { "created" } else { "replaced" },
                        policy.spec().namespace,
                        policy.spec().service,
                        policy.spec().mode
                    ),
                )
                .with_detail("by", by)
                .with_detail("digest", policy.digest.to_string()),
            )
            .await?;
            match self
                .store
                .txn(
                    policy_txn(&generation, gen_now.as_ref())
                        .put(key.clone(), yaml.as_bytes().to_vec()),
                )
                .await
            {
                Ok(_) => {
                    stored = true;
                    break;
                }
                Err(StoreError::Conflict { .. }) => {
                    tracing::info!("the policy set changed meanwhile; checking again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !stored {
            return Err(GateError::Invalid(
                "the policy set kept changing; try again".into(),
            ));
        }
        let statuses = self.reverify().await?;
        Ok(Applied {
            policy,
            created,
            statuses,
        })
    }

    /// Deletes a policy (its services then have none: new deploys are refused).
    pub async fn delete_policy(&self, name: &str, by: &str) -> Result<bool, GateError> {
        let key = Key::from_segments(["bab", "policies", name])?;
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        self.record(
            Event::new(
                self.clock.now(),
                self.actor.clone(),
                "bab.policy.delete",
                format!("policy/{name}"),
                Decision::Info,
                "policy deleted",
            )
            .with_detail("by", by),
        )
        .await?;
        let generation = Key::new(POLICY_GENERATION)?;
        let gen_now = self.store.get(&generation).await?;
        self.store
            .txn(policy_txn(&generation, gen_now.as_ref()).delete(key))
            .await?;
        self.reverify().await?;
        Ok(true)
    }

    /// Decides on a deploy. The audit entry is written before anything is admitted; if it
    /// cannot be written the deploy is refused with [`GateError::AuditUnavailable`].
    pub async fn admit(
        &self,
        job: &Job,
        attestations: &[Attestation],
        request: &Request,
        by: &str,
    ) -> Result<Verdict, GateError> {
        Name::parse(&job.name).map_err(|e| GateError::Invalid(format!("job name: {e}")))?;
        for (what, v) in [
            ("namespace", &job.namespace),
            ("service", &job.service),
            ("environment", &job.environment),
        ] {
            Name::parse(v).map_err(|e| GateError::Invalid(format!("{what}: {e}")))?;
        }
        let policies = self.policies().await?;
        let now = self.clock.now();
        let verdict = evaluate(&policies, job, attestations, now, request);
        let decision = match verdict.basis {
            Basis::Compliant | Basis::AllowAll => Decision::Allow,
            Basis::DryRun | Basis::OptOut => Decision::WouldDeny,
            Basis::BreakGlass => Decision::BreakGlass,
            Basis::Denied => Decision::Deny,
        };
        let target = format!(
            "{}/{}/{}/{}",
            job.namespace, job.service, job.environment, job.name
        );
        let basis = match &verdict.justification {
            Some(j) => format!("{} (justification: {j})", verdict.basis),
            None => verdict.basis.to_string(),
        };
        let reason = if verdict.findings.is_empty() {
            basis
        } else {
            format!(
                "{basis}: {}",
                verdict
                    .findings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let mut event = Event::new(
            now,
            self.actor.clone(),
            "bab.admit",
            target.clone(),
            decision,
            truncate(&reason, 8 * 1024),
        )
        .with_detail("by", by)
        .with_detail("image", &job.image)
        .with_detail("config", job.config_digest.to_string());
        if let Some(p) = &verdict.policy {
            event = event.with_detail("policy", p);
        }
        if let Some(d) = &verdict.policy_digest {
            event = event.with_detail("policy_digest", d.to_string());
        }
        if let Some(j) = &verdict.justification {
            event = event.with_detail("justification", j);
        }
        let id = event.id.clone();
        match self.record(event).await {
            Ok(()) => {}
            Err(e) if verdict.admit => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "a denial could not be audited");
                return Ok(verdict);
            }
        }
        if !verdict.admit {
            return Ok(verdict);
        }
        let deployment = Deployment {
            id: id.clone(),
            job: job.clone(),
            attestations: attestations.to_vec(),
            admitted: verdict.clone(),
            deployed_at: now,
        };
        let key = Key::from_segments([
            "bab",
            "deployments",
            &job.namespace,
            &job.service,
            &job.environment,
            &job.name,
        ])?;
        let bytes =
            serde_json::to_vec(&deployment).map_err(|e| GateError::Invalid(e.to_string()))?;
        // The deployment it replaces takes its continuous-verification status along: a
        // status left behind would keep withholding the job's SVIDs after a compliant redeploy.
        let mut txn = Txn::new().put(key.clone(), bytes);
        if let Some(old) = self.store.get(&key).await?
            && let Ok(old) = serde_json::from_slice::<Deployment>(&old.value)
            && old.id != deployment.id
        {
            txn = txn.delete(Key::from_segments(["bab", "status", &old.id])?);
        }
        self.store.txn(txn).await?;
        if verdict.basis == Basis::BreakGlass {
            let body = serde_json::json!({
                "event": "break-glass deploy",
                "auditEventId": id,
                "job": job,
                "by": by,
                "justification": verdict.justification,
                "policy": verdict.policy,
                "findings": verdict.findings,
                "time": ringfence_provenance::slsa::format_time(now),
            });
            // The job is admitted and audited; a notification that cannot be queued must not
            // undo that, so it is logged as an error instead of failing the deploy.
            let security = self.outbox.config().security.clone();
            if let Err(e) = self
                .outbox
                .enqueue(&security, "bab.break-glass", body.clone(), now)
            {
                tracing::error!(error = %e, "the security team could not be notified of a break-glass deploy");
            }
            if let Some(owners) = self.owners_sink(&policies, job)
                && let Err(e) = self.outbox.enqueue(
                    &owners,
                    "bab.break-glass",
                    body,
                    now.saturating_add(self.outbox.config().owners_delay),
                )
            {
                tracing::error!(error = %e, "the owners could not be notified of a break-glass deploy");
            }
            // Tell the security team now; a failure stays in the outbox and is retried.
            if let Err(e) = self.outbox.deliver_due(self.clock.as_ref()).await {
                tracing::warn!(error = %e, "outbox delivery failed; retried later");
            }
        }
        Ok(verdict)
    }

    fn owners_sink(&self, policies: &PolicySet, job: &Job) -> Option<String> {
        policies
            .find(&job.namespace, &job.service, &job.environment)
            .and_then(|p| p.spec().notify.owners.clone())
    }

    /// Stops tracking a job (it was stopped). Audited.
    pub async fn remove(&self, job: &Job, by: &str) -> Result<bool, GateError> {
        let key = Key::from_segments([
            "bab",
            "deployments",
            &job.namespace,
            &job.service,
            &job.environment,
            &job.name,
        ])?;
        let Some(v) = self.store.get(&key).await? else {
            return Ok(false);
        };
        self.record(
            Event::new(
                self.clock.now(),
                self.actor.clone(),
                "bab.remove",
                format!(
                    "{}/{}/{}/{}",
                    job.namespace, job.service, job.environment, job.name
                ),
                Decision::Info,
                "deployment stopped",
            )
            .with_detail("by", by),
        )
        .await?;
        // Its continuous-verification status goes with it (see `admit`).
        let mut txn = Txn::new()
            .compare(Compare::new(key.clone(), Expect::Revision(v.mod_revision)))
            .delete(key.clone());
        if let Ok(d) = serde_json::from_slice::<Deployment>(&v.value) {
            txn = txn.delete(Key::from_segments(["bab", "status", &d.id])?);
        }
        self.store.txn(txn).await?;
        Ok(true)
    }

    /// One continuous-verification pass: every deployment against the current policies. Jobs
    /// whose flags changed since the last pass are audited and their owners (and, for
    /// break-glass, the security team) notified.
    pub async fn reverify(&self) -> Result<Vec<Status>, GateError> {
        let policies = self.policies().await?;
        let deployments = self.deployments().await?;
        let now = self.clock.now();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let statuses = tokio::task::block_in_place(|| {
            continuous::reverify(&policies, &deployments, now, threads)
        });
        for s in &statuses {
            let key = Key::from_segments(["bab", "status", &s.id])?;
            let previous: Option<Status> = self
                .store
                .get(&key)
                .await?
                .and_then(|v| serde_json::from_slice(&v.value).ok());
            let changed = previous.as_ref().map(|p| (&p.flags, p.revoke_svid))
                != Some((&s.flags, s.revoke_svid));
            // Restricting fails safe: the status (and a withheld SVID) is saved before the
            // audit entry, so an audit log that is down cannot keep a failing job renewed.
            if changed {
                let bytes = serde_json::to_vec(s).map_err(|e| GateError::Invalid(e.to_string()))?;
                self.store.put(&key, bytes, Expect::Any).await?;
            }
            if changed && s.alert {
                let j = &s.job;
                let audited = self
                    .record(
                        Event::new(
                            now,
                            self.actor.clone(),
                            "bab.reverify",
                            format!("{}/{}/{}/{}", j.namespace, j.service, j.environment, j.name),
                            if s.now.basis == Basis::Denied {
                                Decision::Deny
                            } else {
                                Decision::WouldDeny
                            },
                            truncate(
                                &s.now
                                    .findings
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join("; "),
                                8 * 1024,
                            ),
                        )
                        .with_detail("deployment", &s.id)
                        .with_detail("revoke_svid", s.revoke_svid.to_string()),
                    )
                    .await;
                if let Err(e) = audited {
                    tracing::error!(error = %e, job = %j.name, "a flagged job could not be audited; its status is saved");
                }
                let body = serde_json::json!({
                    "event": "job flagged by continuous verification",
                    "deployment": s.id,
                    "job": s.job,
                    "flags": s.flags,
                    "revokeSvid": s.revoke_svid,
                    "findings": s.now.findings,
                    "time": ringfence_provenance::slsa::format_time(now),
                });
                match self.owners_sink(&policies, j) {
                    Some(owners) => {
                        if let Err(e) = self.outbox.enqueue(&owners, "bab.flagged", body, now) {
                            tracing::error!(error = %e, job = %j.name, "the owners could not be notified of a flagged job");
                        }
                    }
                    None => {
                        tracing::warn!(job = %j.name, "flagged job's policy names no owners sink")
                    }
                }
            }
        }
        if let Err(e) = self.outbox.deliver_due(self.clock.as_ref()).await {
            tracing::warn!(error = %e, "outbox delivery failed; retried later");
        }
        Ok(statuses)
    }

    /// The conformance report, from a fresh pass.
    pub async fn report(&self) -> Result<Report, GateError> {
        let statuses = self.reverify().await?;
        let policies = self.policies().await?;
        Ok(report::build(&policies, &statuses, self.clock.now()))
    }

    /// Jobs whose SVID renewal must stop (for the CA).
    ///
    /// An unreadable status record is an error, never "not revoked": the CA's authority then
    /// refuses until it is repaired (fail closed).
    pub async fn revoked(&self) -> Result<Vec<Status>, GateError> {
        let mut out = Vec::new();
        for (key, v) in self.list("/bab/status/").await? {
            let s: Status = serde_json::from_slice(&v).map_err(|e| GateError::Corrupt {
                key: key.to_string(),
                why: e.to_string(),
            })?;
            if s.revoke_svid {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Runs until `shutdown`: a pass when a policy changes, when the earliest `next_check`
    /// comes, and at least every `max_interval`; the outbox is drained every second.
    pub async fn watch(
        &self,
        max_interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), GateError> {
        let rev = self.store.revision().await?;
        let mut policy_changes = self
            .store
            .watch(&prefix("/bab/policies/")?, rev.saturating_add(1))
            .await?;
        let mut next = self.pass_and_next(max_interval).await?;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                ev = futures_next(&mut policy_changes) => {
                    if !ev {
                        return Err(GateError::Invalid("the store's watch ended".into()));
                    }
                    tracing::info!("a service policy changed: re-verifying every running job");
                    next = self.pass_or_retry(max_interval).await;
                }
                _ = tick.tick() => {
                    if self.clock.now() >= next {
                        next = self.pass_or_retry(max_interval).await;
                    } else if let Err(e) = self.outbox.deliver_due(self.clock.as_ref()).await {
                        tracing::warn!(error = %e, "outbox delivery failed; retried later");
                    }
                }
            }
        }
    }

    /// A pass; when it fails (the Store unreachable, say), the error is logged and the next
    /// attempt comes in a minute instead of ending continuous verification.
    async fn pass_or_retry(&self, max_interval: std::time::Duration) -> ringfence_core::UnixTime {
        match self.pass_and_next(max_interval).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "continuous verification pass failed; retrying in a minute");
                self.clock
                    .now()
                    .saturating_add(std::time::Duration::from_secs(60))
            }
        }
    }

    async fn pass_and_next(
        &self,
        max_interval: std::time::Duration,
    ) -> Result<ringfence_core::UnixTime, GateError> {
        let statuses = self.reverify().await?;
        let now = self.clock.now();
        let flagged = statuses.iter().filter(|s| !s.flags.is_empty()).count();
        tracing::info!(
            jobs = statuses.len(),
            flagged,
            "continuous verification pass"
        );
        Ok(statuses
            .iter()
            .map(|s| s.next_check)
            .fold(now.saturating_add(max_interval), std::cmp::min))
    }
}

async fn futures_next(stream: &mut ringfence_store::WatchStream) -> bool {
    use futures::StreamExt;
    stream.next().await.is_some()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

/// True when a status carries a break-glass flag.
pub fn is_break_glass(s: &Status) -> bool {
    s.flags.iter().any(|f| matches!(f, Flag::BreakGlass { .. }))
}
