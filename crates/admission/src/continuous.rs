//! Continuous verification: every running job is evaluated again against the current policies
//! (when a policy changes, and at least every `continuousVerification.interval`, 24 h at most).
//! A job is flagged when it would be refused now (a tightened policy, an attestation that aged
//! out, a key no longer trusted) or when it was deployed by break-glass — that flag stays until
//! the job is redeployed compliant.

use ringfence_core::UnixTime;
use serde::{Deserialize, Serialize};

use crate::policy::{Mode, PolicySet};
use crate::verdict::{Attestation, Basis, Finding, Job, Request, Verdict, evaluate};

/// A running deployment as recorded at admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Its id (unique per deploy: a redeploy is a new deployment).
    pub id: String,
    /// The job.
    pub job: Job,
    /// The attestations it was admitted with.
    pub attestations: Vec<Attestation>,
    /// The verdict at admission.
    pub admitted: Verdict,
    /// When.
    pub deployed_at: UnixTime,
}

/// Why a job is flagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "flag")]
pub enum Flag {
    /// Deployed by break-glass; stays until redeployed compliant.
    BreakGlass {
        /// The justification given.
        justification: String,
    },
    /// Would be refused now under an enforcing policy.
    NonCompliant,
    /// Runs under a dry-run policy that would refuse it.
    DryRunWouldDeny,
    /// Runs under an opt-out.
    OptOut,
    /// The governing policy changed since admission.
    PolicyChanged {
        /// At admission.
        from: Option<String>,
        /// Now.
        to: Option<String>,
    },
}

/// One job's state after re-verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The deployment id.
    pub id: String,
    /// The job.
    pub job: Job,
    /// How it was admitted.
    pub admitted_basis: Basis,
    /// The verdict now (a normal request: break-glass is not re-applied).
    pub now: Verdict,
    /// Flags.
    pub flags: Vec<Flag>,
    /// Whether its owners are alerted.
    pub alert: bool,
    /// Whether its SVIDs stop being renewed (policy says so, and it fails now).
    pub revoke_svid: bool,
    /// When it must be checked again at the latest.
    pub next_check: UnixTime,
}

impl Status {
    /// The findings that make it fail now.
    pub fn findings(&self) -> &[Finding] {
        &self.now.findings
    }
}

/// Re-evaluates one deployment.
pub fn reverify_one(policies: &PolicySet, d: &Deployment, now: UnixTime) -> Status {
    let verdict = evaluate(policies, &d.job, &d.attestations, now, &Request::Normal);
    let policy = policies.find(&d.job.namespace, &d.job.service, &d.job.environment);
    let mut flags = Vec::new();
    if d.admitted.basis == Basis::BreakGlass {
        flags.push(Flag::BreakGlass {
            justification: d.admitted.justification.clone().unwrap_or_default(),
        });
    }
    let failing = !verdict.conforms();
    match verdict.basis {
        Basis::Denied => flags.push(Flag::NonCompliant),
        Basis::DryRun => flags.push(Flag::DryRunWouldDeny),
        Basis::OptOut => flags.push(Flag::OptOut),
        _ => {}
    }
    if d.admitted.policy_digest != verdict.policy_digest {
        flags.push(Flag::PolicyChanged {
            from: d.admitted.policy_digest.as_ref().map(ToString::to_string),
            to: verdict.policy_digest.as_ref().map(ToString::to_string),
        });
    }
    let revoke_policy = policy.is_some_and(|p| {
        p.spec().continuous_verification.revoke_svid_on_failure && p.spec().mode == Mode::Enforce
    });
    let interval = policy.map_or(std::time::Duration::from_secs(24 * 3600), |p| {
        p.spec().continuous_verification.interval
    });
    let mut next_check = now.saturating_add(interval);
    if let Some(until) = verdict.valid_until {
        next_check = next_check.min(until);
    }
    let alert = flags
        .iter()
        .any(|f| !matches!(f, Flag::PolicyChanged { .. } | Flag::OptOut));
    Status {
        id: d.id.clone(),
        job: d.job.clone(),
        admitted_basis: d.admitted.basis,
        // A break-glass deployment keeps failing until redeployed; it keeps running (that is
        // what break-glass is for) but is flagged and alerted on every pass.
        revoke_svid: failing
            && verdict.basis == Basis::Denied
            && revoke_policy
            && d.admitted.basis != Basis::BreakGlass,
        now: verdict,
        flags,
        alert,
        next_check,
    }
}

/// Re-evaluates every deployment, spread over `threads` threads (pure computation).
pub fn reverify(
    policies: &PolicySet,
    deployments: &[Deployment],
    now: UnixTime,
    threads: usize,
) -> Vec<Status> {
    let threads = threads.max(1);
    if threads == 1 || deployments.len() < 64 {
        return deployments
            .iter()
            .map(|d| reverify_one(policies, d, now))
            .collect();
    }
    let chunk = deployments.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = deployments
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|d| reverify_one(policies, d, now))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}
