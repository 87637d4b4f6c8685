//! CA key rotation with overlap.
//!
//! 1. `prepare_next`: a new CA key is made and enters the trust bundle, but does not sign yet.
//!    Wait at least one SVID lifetime, so every workload renews and receives the new bundle.
//! 2. `activate_next`: the new CA signs from now on; the old CA leaves signing but stays in
//!    the bundle until every SVID it signed has expired (now + its SVID lifetime).
//!
//! At no point does a peer hold an SVID that another peer's bundle cannot verify.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ringfence_core::{MachineId, TrustDomain, UnixTime};

use crate::ca::{Ca, IssuanceAuthority, IssueError, Svid};

/// The CAs of one trust domain: the active one, the next one, the retiring ones.
pub struct CaSet {
    trust_domain: TrustDomain,
    state: RwLock<State>,
    /// Bumped whenever the bundle changes, so Workload API streams push the new bundle.
    bundle_generation: tokio::sync::watch::Sender<u64>,
}

struct State {
    active: Arc<Ca>,
    next: Option<Arc<Ca>>,
    /// Former CAs' certificates, kept in the bundle until the given time.
    retiring: Vec<(Vec<u8>, UnixTime)>,
}

impl std::fmt::Debug for CaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSet")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CaSet {
    /// A set whose active CA is `ca`.
    pub fn new(ca: Ca) -> Self {
        Self {
            trust_domain: ca.trust_domain().clone(),
            state: RwLock::new(State {
                active: Arc::new(ca),
                next: None,
                retiring: Vec::new(),
            }),
            bundle_generation: tokio::sync::watch::channel(0).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain data that
        // every update leaves consistent; keep serving.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notified whenever the trust bundle changes.
    pub fn subscribe_bundle(&self) -> tokio::sync::watch::Receiver<u64> {
        self.bundle_generation.subscribe()
    }

    fn bundle_changed(&self) {
        self.bundle_generation.send_modify(|g| *g += 1);
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA that signs now.
    pub fn active(&self) -> Arc<Ca> {
        Arc::clone(&self.read().active)
    }

    /// Issues with the active CA (crate-private: through the audited service only).
    pub(crate) fn issue(
        &self,
        csr_der: &[u8],
        machine: &MachineId,
        authority: &dyn IssuanceAuthority,
        now: UnixTime,
    ) -> Result<Svid, IssueError> {
        self.active().issue(csr_der, machine, authority, now)
    }

    /// The trust bundle at `now`: active, next and still-needed former CA certificates,
    /// concatenated DER.
    pub fn bundle_der(&self, now: UnixTime) -> Vec<u8> {
        let state = self.read();
        let mut anchors: Vec<Vec<u8>> = state.active.trust_anchors();
        if let Some(next) = &state.next {
            anchors.extend(next.trust_anchors());
        }
        for (cert, until) in &state.retiring {
            if *until > now {
                anchors.push(cert.clone());
            }
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in anchors {
            if seen.insert(a.clone()) {
                out.extend_from_slice(&a);
            }
        }
        out
    }

    /// Writes the set into `dir`: `ca.key`/`ca.pem` (active), `next.key`/`next.pem` (prepared,
    /// if any) and `retiring.json` (former CA certificates and until when they stay trusted).
    pub fn save(&self, dir: &std::path::Path) -> Result<(), IssueError> {
        let state = self.read();
        state.active.save(dir, "ca")?;
        match &state.next {
            Some(next) => next.save(dir, "next")?,
            None => {
                for f in ["next.key", "next.pem"] {
                    match std::fs::remove_file(dir.join(f)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(IssueError::Signing(format!("{f}: {e}"))),
                    }
                }
            }
        }
        let retiring: Vec<serde_json::Value> = state
            .retiring
            .iter()
            .map(|(cert, until)| serde_json::json!({ "cert_pem": crate::ca::pem_certificate(cert), "until_ms": until.as_millis() }))
            .collect();
        let json =
            serde_json::to_vec_pretty(&retiring).map_err(|e| IssueError::Signing(e.to_string()))?;
        crate::ca::write_atomically(&dir.join("retiring.json"), &json, 0o644)
    }

    /// Loads a set saved with [`CaSet::save`], every CA issuing with `ttl`.
    pub fn load(
        dir: &std::path::Path,
        trust_domain: TrustDomain,
        ttl: Duration,
    ) -> Result<Self, IssueError> {
        let active = Ca::load(dir, "ca", trust_domain.clone())?.with_ttl(ttl);
        let next = if dir.join("next.key").exists() {
            Some(Arc::new(
                Ca::load(dir, "next", trust_domain.clone())?.with_ttl(ttl),
            ))
        } else {
            None
        };
        let mut retiring = Vec::new();
        if let Ok(text) = std::fs::read(dir.join("retiring.json")) {
            let entries: Vec<serde_json::Value> = serde_json::from_slice(&text)
                .map_err(|e| IssueError::Signing(format!("retiring.json: {e}")))?;
            for e in entries {
                let pem_text = e
                    .get("cert_pem")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                let until = e
                    .get("until_ms")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or_default();
                let parsed = pem::parse(pem_text)
                    .map_err(|e| IssueError::Signing(format!("retiring.json: {e}")))?;
                retiring.push((parsed.contents().to_vec(), UnixTime::from_millis(until)));
            }
        }
        Ok(Self {
            trust_domain,
            state: RwLock::new(State {
                active: Arc::new(active),
                next,
                retiring,
            }),
            bundle_generation: tokio::sync::watch::channel(0).0,
        })
    }

    /// Step 1: makes the next CA and puts it in the bundle (it does not sign yet).
    pub fn prepare_next(&self, now: UnixTime, validity: Duration) -> Result<(), IssueError> {
        if self.active().is_intermediate() {
            return Err(IssueError::Signing(
                "this CA is an intermediate under an upstream root: rotate it by installing a new intermediate from the upstream".into(),
            ));
        }
        let ttl = self.active().ttl();
        let next = Ca::generate(self.trust_domain.clone(), now, validity)?.with_ttl(ttl);
        self.write().next = Some(Arc::new(next));
        self.bundle_changed();
        Ok(())
    }

    /// Step 2: the prepared CA starts signing; the old one stays in the bundle until every
    /// SVID it signed has expired.
    pub fn activate_next(&self, now: UnixTime) -> Result<(), IssueError> {
        let mut state = self.write();
        let next = state.next.take().ok_or_else(|| {
            IssueError::Signing(
                "no next CA prepared: prepare it at least one SVID lifetime before".into(),
            )
        })?;
        let old = std::mem::replace(&mut state.active, next);
        let until = now
            .saturating_add(old.ttl())
            .saturating_add(Duration::from_secs(60));
        for anchor in old.trust_anchors() {
            state.retiring.push((anchor, until));
        }
        state.retiring.retain(|(_, u)| *u > now);
        drop(state);
        self.bundle_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_overlaps_across_a_rotation() {
        let t0 = UnixTime::from_secs(1_800_000_000);
        let ca = Ca::generate(
            TrustDomain::parse("example.org").unwrap(),
            t0,
            Duration::from_secs(86_400),
        )
        .unwrap()
        .with_ttl(Duration::from_secs(600));
        let set = CaSet::new(ca);
        let one = set.bundle_der(t0).len();
        assert!(
            set.activate_next(t0)
                .unwrap_err()
                .to_string()
                .contains("no next CA prepared")
        );
        set.prepare_next(t0, Duration::from_secs(86_400)).unwrap();
        let old = set.active().certificate_der().to_vec();
        assert!(
            set.bundle_der(t0).len() > one,
            "the next CA is in the bundle before it signs"
        );
        assert_eq!(
            set.active().certificate_der(),
            old.as_slice(),
            "and it does not sign yet"
        );
        let t1 = t0.saturating_add(Duration::from_secs(700));
        set.activate_next(t1).unwrap();
        assert_ne!(set.active().certificate_der(), old.as_slice());
        let both = set.bundle_der(t1);
        assert!(
            both.windows(old.len()).any(|w| w == old.as_slice()),
            "the old CA stays while its SVIDs live"
        );
        let later = t1.saturating_add(Duration::from_secs(601 + 60));
        assert!(
            !set.bundle_der(later)
                .windows(old.len())
                .any(|w| w == old.as_slice()),
            "and leaves after"
        );
    }
}
