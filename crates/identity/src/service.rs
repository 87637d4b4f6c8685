//! Issuance as an audited service: every SVID issued and every request refused is written to
//! the audit log. An SVID whose issuance cannot be recorded is not handed out (fail closed).

use std::sync::Arc;

use ringfence_audit::{AuditSink, Decision, Event};
use ringfence_core::{Clock, MachineId, SpiffeId};

use crate::ca::{IssuanceAuthority, IssueError, Svid};
use crate::rotation::CaSet;

/// The CA behind its authority, its clock and the audit log.
pub struct IssuanceService {
    ca: Arc<CaSet>,
    authority: Arc<dyn IssuanceAuthority>,
    audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
    actor: SpiffeId,
}

impl std::fmt::Debug for IssuanceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuanceService")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// Why an audited issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request was refused (and the refusal recorded).
    #[error(transparent)]
    Refused(#[from] IssueError),
    /// The audit log could not record the issuance, so no SVID is handed out.
    #[error("issuance not recorded in the audit log, so refused: {0}")]
    AuditUnavailable(String),
}

impl IssuanceService {
    /// A service issuing as `spiffe://<td>/ringfence/ca`.
    pub fn new(
        ca: Arc<CaSet>,
        authority: Arc<dyn IssuanceAuthority>,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IssueError> {
        let actor = ca
            .trust_domain()
            .workload(&["ringfence", "ca"])
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(Self {
            ca,
            authority,
            audit,
            clock,
            actor,
        })
    }

    /// The CAs this service issues with.
    pub fn ca_set(&self) -> &Arc<CaSet> {
        &self.ca
    }

    /// Issues an SVID for `csr_der` from `machine`, recording the outcome.
    pub async fn issue(&self, csr_der: &[u8], machine: &MachineId) -> Result<Svid, ServiceError> {
        let now = self.clock.now();
        let requested = crate::csr::parse_csr(csr_der)
            .map(|c| c.spiffe_id().to_string())
            .unwrap_or_else(|_| "(unparsable CSR)".to_owned());
        match self
            .ca
            .issue(csr_der, machine, self.authority.as_ref(), now)
        {
            Ok(svid) => {
                let event = Event::new(
                    now,
                    self.actor.clone(),
                    "identity.issue",
                    svid.spiffe_id.as_str(),
                    Decision::Allow,
                    "issued",
                )
                .with_detail("machine", machine.as_str())
                .with_detail("serial", svid.serial.clone())
                .with_detail("not_after_ms", svid.not_after.as_millis().to_string());
                self.audit
                    .record(&event)
                    .await
                    .map_err(|e| ServiceError::AuditUnavailable(e.to_string()))?;
                Ok(svid)
            }
            Err(refusal) => {
                let event = Event::new(
                    now,
                    self.actor.clone(),
                    "identity.issue",
                    requested,
                    Decision::Deny,
                    refusal.to_string(),
                )
                .with_detail("machine", machine.as_str());
                if let Err(e) = self.audit.record(&event).await {
                    tracing::error!(error = %e, "could not record an issuance refusal in the audit log");
                }
                Err(refusal.into())
            }
        }
    }
}
