//! X.509-SVID issuance: the profile checked field by field and by `openssl verify`, and every
//! refusal the identity issue names (wrong identity, extra SANs, bad signature, weak or
//! unsupported keys, malformed SPIFFE IDs, missing, foreign-machine or expired
//! authorization), each asserting the message a user sees and the audit entry it leaves.
//! Everything goes through the audited issuance service: the CA cannot be called around it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::process::Command;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use ringfence_core::{MachineId, SpiffeId, TrustDomain, UnixTime};
use std::sync::Arc;

use ringfence_audit::{AuditSink, Decision, Event, MemorySink};
use ringfence_core::ManualClock;
use ringfence_identity::{
    Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService, Svid,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);
const ID: &str = "spiffe://example.org/ns/prod/svc/web";

/// Authorizes exactly one (machine, id) until a given time, like the control plane would
/// for one placed task.
struct OneTask {
    machine: &'static str,
    id: &'static str,
    until: UnixTime,
}

impl IssuanceAuthority for OneTask {
    fn authorize(
        &self,
        _machine: &MachineId,
        _id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Ok(IssuanceAuthorization {
            spiffe_id: SpiffeId::parse(self.id).unwrap(),
            machine: MachineId::parse(self.machine).unwrap(),
            not_after: self.until,
        })
    }
}

struct Nobody;

impl IssuanceAuthority for Nobody {
    fn authorize(
        &self,
        machine: &MachineId,
        id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Err(format!("no admitted task for {id} is placed on {machine}"))
    }
}

fn ca() -> Ca {
    Ca::generate(
        TrustDomain::parse("example.org").unwrap(),
        NOW,
        Duration::from_secs(86_400 * 30),
    )
    .unwrap()
}

fn authority() -> OneTask {
    OneTask {
        machine: "node-1",
        id: ID,
        until: NOW.saturating_add(Duration::from_secs(600)),
    }
}

fn node1() -> MachineId {
    MachineId::parse("node-1").unwrap()
}

fn csr_with(sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// Runs one request through the audited issuance service (the only way to issue) and
/// returns its outcome and the audit entries it left.
fn run_issue(
    csr: &[u8],
    authority: impl IssuanceAuthority + 'static,
    ca: Ca,
) -> (Result<Svid, String>, Vec<Event>) {
    let sink = Arc::new(MemorySink::default());
    let service = IssuanceService::new(
        Arc::new(CaSet::new(ca)),
        Arc::new(authority),
        Arc::clone(&sink) as Arc<dyn AuditSink>,
        Arc::new(ManualClock::new(NOW)),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(service.issue(csr, &node1()))
        .map_err(|e| e.to_string());
    (outcome, sink.events())
}

/// Issues; asserts the single audit entry says so.
fn issue(csr: &[u8], authority: impl IssuanceAuthority + 'static, ca: Ca) -> Svid {
    let (outcome, events) = run_issue(csr, authority, ca);
    let svid = outcome.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].decision, events[0].target.as_str()),
        (Decision::Allow, svid.spiffe_id.as_str())
    );
    assert_eq!(events[0].details["serial"], svid.serial);
    svid
}

/// Refuses; asserts the single audit entry records the refusal with the same message, and
/// returns the message.
fn refuse(csr: &[u8], authority: impl IssuanceAuthority + 'static) -> String {
    let (outcome, events) = run_issue(csr, authority, ca());
    let message = outcome.unwrap_err();
    assert_eq!(events.len(), 1, "one audit entry per refusal");
    assert_eq!(events[0].decision, Decision::Deny);
    assert_eq!(
        events[0].reason, message,
        "the audit entry carries the reason the user saw"
    );
    assert_eq!(events[0].details["machine"], "node-1");
    message
}

#[test]
fn issued_svids_follow_the_spiffe_profile_and_openssl_verifies_them() {
    let first_ca = ca().with_ttl(Duration::from_secs(3600));
    let ca_der = first_ca.certificate_der().to_vec();
    let svid = issue(&csr_with(vec![uri(ID)]), authority(), first_ca);
    assert_eq!(svid.spiffe_id.as_str(), ID);
    let (_, cert) = X509Certificate::from_der(&svid.cert_der).unwrap();
    let mut uris = Vec::new();
    let (mut ca_false, mut digital_signature, mut server, mut client) =
        (false, false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => uris.push((*u).to_owned()),
                        other => panic!("unexpected SAN {other}"),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => ca_false = !bc.ca,
            ParsedExtension::KeyUsage(ku) => {
                digital_signature = ku.digital_signature() && !ku.key_cert_sign();
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                server = eku.server_auth;
                client = eku.client_auth;
            }
            _ => {}
        }
    }
    assert_eq!(uris, [ID]);
    assert!(ca_false && digital_signature && server && client);
    assert!(
        cert.raw_serial().len() >= 9,
        "serial carries at least 64 random bits"
    );
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 30, "TTL plus the 30 s back-dating");
    let other = issue(&csr_with(vec![uri(ID)]), authority(), ca());
    assert_ne!(svid.serial, other.serial, "serials are random");

    // openssl, the reference X.509 implementation, accepts the chain for client and server
    // use at a time inside the validity window.
    let dir = tempfile::tempdir().unwrap();
    let pem = |der: &[u8]| {
        use base64_pem::encode;
        encode(der)
    };
    std::fs::write(dir.path().join("ca.pem"), pem(&ca_der)).unwrap();
    std::fs::write(dir.path().join("svid.pem"), pem(&svid.cert_der)).unwrap();
    for purpose in ["sslclient", "sslserver"] {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "verify",
                "-attime",
                &(NOW.as_secs() + 60).to_string(),
                "-purpose",
                purpose,
                "-CAfile",
                "ca.pem",
                "svid.pem",
            ])
            .output()
            .expect("openssl is installed by scripts/install-deps.sh");
        assert!(
            out.status.success(),
            "openssl verify -purpose {purpose}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // ...and refuses it once expired.
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-attime",
            &(NOW.as_secs() + 3700).to_string(),
            "-CAfile",
            "ca.pem",
            "svid.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("expired")
            || String::from_utf8_lossy(&out.stderr).contains("expired")
    );
}

/// PEM without another dependency.
mod base64_pem {
    pub fn encode(der: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let body: Vec<String> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            body.join("\n")
        )
    }
}

#[test]
fn csr_for_a_different_spiffe_id_is_refused() {
    let msg = refuse(
        &csr_with(vec![uri("spiffe://example.org/ns/prod/svc/payments")]),
        authority(),
    );
    assert_eq!(
        msg,
        "the CSR asks for spiffe://example.org/ns/prod/svc/payments but the authorization is for spiffe://example.org/ns/prod/svc/web"
    );
}

#[test]
fn csr_with_an_extra_dns_san_is_refused() {
    let msg = refuse(
        &csr_with(vec![
            uri(ID),
            SanType::DnsName("web.example.org".try_into().unwrap()),
        ]),
        authority(),
    );
    assert!(msg.starts_with("CSR asks for a non-URI SAN"), "{msg}");
}

#[test]
fn csr_with_an_extra_uri_san_is_refused() {
    let msg = refuse(
        &csr_with(vec![uri(ID), uri("spiffe://example.org/ns/prod/svc/admin")]),
        authority(),
    );
    assert!(msg.starts_with("CSR asks for 2 URI SANs"), "{msg}");
    let msg = refuse(&csr_with(vec![]), authority());
    assert!(msg.starts_with("CSR asks for no URI SAN"), "{msg}");
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let mut csr = csr_with(vec![uri(ID)]);
    let last = csr.len() - 3;
    csr[last] ^= 0x01;
    assert_eq!(
        refuse(&csr, authority()),
        "CSR signature does not verify: the request was altered or not signed by its key"
    );
}

#[test]
fn csr_asking_for_a_ca_certificate_is_refused() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![uri(ID)];
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let msg = refuse(&csr, authority());
    assert!(msg.starts_with("CSR asks for an extra extension"), "{msg}");
}

/// A CSR made by openssl with the given key-generation arguments.
fn openssl_csr(genkey: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .current_dir(dir.path())
        .args(genkey)
        .args(["-out", "key.pem"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "req",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=x",
            "-addext",
            &format!("subjectAltName=URI:{ID}"),
            "-outform",
            "DER",
            "-out",
            "csr.der",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.path().join("csr.der")).unwrap()
}

#[test]
fn openssl_p256_csrs_are_accepted() {
    let csr = openssl_csr(&["ecparam", "-name", "prime256v1", "-genkey", "-noout"]);
    let svid = issue(&csr, authority(), ca());
    assert_eq!(svid.spiffe_id.as_str(), ID);
}

#[test]
fn rsa_1024_and_p384_keys_are_refused() {
    let rsa = openssl_csr(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
    ]);
    let msg = refuse(&rsa, authority());
    assert!(
        msg.starts_with("unsupported key: key algorithm 1.2.840.113549.1.1.1"),
        "{msg}"
    );
    assert!(msg.ends_with("workload keys must be ECDSA P-256"), "{msg}");
    let p384 = openssl_csr(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"]);
    let msg = refuse(&p384, authority());
    assert!(
        msg.starts_with("unsupported key: curve 1.3.132.0.34"),
        "{msg}"
    );
}

#[test]
fn malformed_spiffe_ids_in_the_csr_are_refused() {
    for (bad, why) in [
        ("spiffe://Example.org/ns/prod/svc/web", "lowercase letters"),
        ("spiffe://example.org/ns/../svc/web", "dot segments"),
        (
            "spiffe://example.org/ns%2Fprod/svc/web",
            "path segment characters",
        ),
        ("spiffe://example.org/ns//svc/web", "empty segments"),
        ("spiffe://example.org/ns/pr\0od", "path segment characters"),
    ] {
        let msg = refuse(&csr_with(vec![uri(bad)]), authority());
        assert!(
            msg.starts_with("CSR names an invalid SPIFFE ID"),
            "{bad:?}: {msg}"
        );
        assert!(msg.contains(why), "{bad:?}: {msg}");
    }
}

#[test]
fn requests_without_a_valid_authorization_are_refused() {
    let csr = csr_with(vec![uri(ID)]);
    assert_eq!(
        refuse(&csr, Nobody),
        "no issuance authorization: no admitted task for spiffe://example.org/ns/prod/svc/web is placed on node-1"
    );
    let elsewhere = OneTask {
        machine: "node-2",
        ..authority()
    };
    assert_eq!(
        refuse(&csr, elsewhere),
        "the authorization is for machine node-2, not node-1"
    );
    let expired = OneTask {
        until: NOW,
        ..authority()
    };
    assert!(refuse(&csr, expired).starts_with("the authorization expired"));
    let foreign = csr_with(vec![uri("spiffe://evil.org/ns/prod/svc/web")]);
    assert_eq!(
        refuse(&foreign, authority()),
        "spiffe://evil.org/ns/prod/svc/web is not in this CA's trust domain"
    );
}

#[test]
fn garbage_and_oversized_csrs_are_refused() {
    assert!(refuse(b"not a csr", authority()).starts_with("malformed CSR"));
    let big = vec![0x30; ringfence_identity::MAX_CSR_LEN + 1];
    assert!(refuse(&big, authority()).contains("at most"));
    let mut trailing = csr_with(vec![uri(ID)]);
    trailing.push(0);
    assert!(refuse(&trailing, authority()).contains("trailing bytes"));
}
