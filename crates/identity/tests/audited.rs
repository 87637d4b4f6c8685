//! Every issuance and every refusal lands in the audit log, with who asked, for what, and
//! why it was refused; and an SVID whose issuance cannot be recorded is not handed out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rcgen::{CertificateParams, KeyPair, SanType};
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditError, AuditLog, AuditSink, Decision, Event, LogOptions};
use ringfence_core::{MachineId, ManualClock, SpiffeId, TrustDomain, UnixTime};
use ringfence_identity::{
    Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService, ServiceError,
};
use ringfence_store::{RedbOptions, RedbStore, Store};

const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);
const WEB: &str = "spiffe://example.org/ns/prod/svc/web";

/// The control plane's view: `web` is placed on node-1 until NOW + 10 min.
struct Placement;

impl IssuanceAuthority for Placement {
    fn authorize(
        &self,
        machine: &MachineId,
        id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        if id.as_str() != WEB {
            return Err(format!("no admitted task {id}"));
        }
        if machine.as_str() != "node-1" {
            return Err(format!("{id} is not placed on {machine}"));
        }
        Ok(IssuanceAuthorization {
            spiffe_id: id.clone(),
            machine: machine.clone(),
            not_after: NOW.saturating_add(Duration::from_secs(600)),
        })
    }
}

fn csr(uris: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn setup(audit: Arc<dyn AuditSink>) -> IssuanceService {
    let ca = Ca::generate(
        TrustDomain::parse("example.org").unwrap(),
        NOW,
        Duration::from_secs(86_400),
    )
    .unwrap();
    IssuanceService::new(
        Arc::new(CaSet::new(ca)),
        Arc::new(Placement),
        audit,
        Arc::new(ManualClock::new(NOW)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuances_and_refusals_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(dir.path(), RedbOptions::default()).unwrap());
    let key = Signer::generate("example.org/audit", TYPE_ED25519).unwrap();
    let log = AuditLog::open(
        store,
        key,
        LogOptions {
            origin: "example.org/audit".into(),
            ..LogOptions::default()
        },
    )
    .await
    .unwrap();
    let service = setup(Arc::new(log.clone())).await;
    let node1 = MachineId::parse("node-1").unwrap();
    let node2 = MachineId::parse("node-2").unwrap();

    let svid = service.issue(&csr(&[WEB]), &node1).await.unwrap();
    let cases: Vec<(Vec<u8>, &MachineId, &str)> = vec![
        (
            csr(&["spiffe://example.org/ns/prod/svc/payments"]),
            &node1,
            "no issuance authorization: no admitted task",
        ),
        (csr(&[WEB]), &node2, "is not placed on node-2"),
        (
            csr(&[WEB, "spiffe://example.org/ns/prod/svc/admin"]),
            &node1,
            "2 URI SANs",
        ),
        (
            csr(&["spiffe://Example.org/x"]),
            &node1,
            "invalid SPIFFE ID",
        ),
        (b"garbage".to_vec(), &node1, "malformed CSR"),
    ];
    for (csr, machine, why) in &cases {
        let err = service.issue(csr, machine).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }

    let size = log.head().size;
    assert_eq!(size, 1 + cases.len() as u64, "one audit entry per request");
    let first = Event::decode(&log.entry(0).await.unwrap()).unwrap();
    assert_eq!(first.decision, Decision::Allow);
    assert_eq!(first.action, "identity.issue");
    assert_eq!(first.target, WEB);
    assert_eq!(first.actor.as_str(), "spiffe://example.org/ringfence/ca");
    assert_eq!(first.details["serial"], svid.serial);
    assert_eq!(first.details["machine"], "node-1");
    for (i, (_, machine, why)) in cases.iter().enumerate() {
        let e = Event::decode(&log.entry(1 + i as u64).await.unwrap()).unwrap();
        assert_eq!(e.decision, Decision::Deny, "entry {}", i + 1);
        assert!(e.reason.contains(why), "entry {}: {}", i + 1, e.reason);
        assert_eq!(e.details["machine"], machine.as_str());
    }
    let garbage = Event::decode(&log.entry(size - 1).await.unwrap()).unwrap();
    assert_eq!(garbage.target, "(unparsable CSR)");
}

#[derive(Debug)]
struct BrokenAudit;

#[async_trait]
impl AuditSink for BrokenAudit {
    async fn record(&self, _event: &Event) -> Result<(), AuditError> {
        Err(AuditError::Closed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_svid_is_handed_out_when_the_issuance_cannot_be_recorded() {
    let service = setup(Arc::new(BrokenAudit)).await;
    let err = service
        .issue(&csr(&[WEB]), &MachineId::parse("node-1").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::AuditUnavailable(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "issuance not recorded in the audit log, so refused: the audit log is closed"
    );
}
