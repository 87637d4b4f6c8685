//! Two services complete a rustls mTLS handshake with SVIDs and each sees the other's SPIFFE
//! ID; the wrong peer, a foreign CA and an expired SVID are refused; and a stream of
//! connections across ten rotations of 10 s SVIDs, across a CA key rotation, and through CA
//! outages behaves as specified. Time-driven cases run on a manual `Clock` (rotators,
//! issuance and verifiers all read it), ten times faster than real time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ringfence_audit::MemorySink;
use ringfence_core::{Clock, MachineId, ManualClock, SpiffeId, SystemClock, TrustDomain, UnixTime};
use ringfence_identity::tls::{PeerPolicy, client_config, server_config, spiffe_id_of};
use ringfence_identity::workload_api::{X509Material, run_rotator};
use ringfence_identity::{Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const WEB: &str = "spiffe://example.org/ns/prod/svc/web";
const API: &str = "spiffe://example.org/ns/prod/svc/api";

struct Placed;

impl IssuanceAuthority for Placed {
    fn authorize(
        &self,
        machine: &MachineId,
        id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        Ok(IssuanceAuthorization {
            spiffe_id: id.clone(),
            machine: machine.clone(),
            not_after: UnixTime::from_millis(u64::MAX),
        })
    }
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn new_ca(td: &str, ttl: Duration, clock: &Arc<dyn Clock>) -> Arc<CaSet> {
    Arc::new(CaSet::new(
        Ca::generate(
            TrustDomain::parse(td).unwrap(),
            clock.now(),
            Duration::from_secs(86_400),
        )
        .unwrap()
        .with_ttl(ttl),
    ))
}

/// The audited issuance service over `ca` (events kept in memory).
fn service(
    ca: &Arc<CaSet>,
    authority: Arc<dyn IssuanceAuthority>,
    clock: &Arc<dyn Clock>,
) -> Arc<IssuanceService> {
    Arc::new(
        IssuanceService::new(
            Arc::clone(ca),
            authority,
            Arc::new(MemorySink::default()),
            Arc::clone(clock),
        )
        .unwrap(),
    )
}

/// Starts a rotator for `who` (with `authority`) and waits for its first SVID.
async fn svid_with(
    ca: &Arc<CaSet>,
    who: &str,
    authority: Arc<dyn IssuanceAuthority>,
    clock: &Arc<dyn Clock>,
) -> watch::Receiver<Option<X509Material>> {
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(run_rotator(
        service(ca, authority, clock),
        MachineId::parse("node-1").unwrap(),
        id(who),
        Arc::clone(clock),
        tx,
    ));
    rx.wait_for(Option::is_some).await.unwrap();
    rx
}

async fn svid(
    ca: &Arc<CaSet>,
    who: &str,
    clock: &Arc<dyn Clock>,
) -> watch::Receiver<Option<X509Material>> {
    svid_with(ca, who, Arc::new(Placed), clock).await
}

/// A server that answers each connection with the SPIFFE ID it saw on the client.
async fn echo_server(
    material: watch::Receiver<Option<X509Material>>,
    allow: PeerPolicy,
    clock: Arc<dyn Clock>,
) -> std::net::SocketAddr {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(material, allow, clock).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(spiffe_id_of);
                    let _ = tls
                        .write_all(peer.map(|p| p.to_string()).unwrap_or_default().as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects as `material`, expecting the server to be allowed by `expect`; returns what the
/// server saw and the server's certificate.
async fn call(
    addr: std::net::SocketAddr,
    material: watch::Receiver<Option<X509Material>>,
    expect: PeerPolicy,
    clock: Arc<dyn Clock>,
) -> Result<(String, Vec<u8>), String> {
    let connector = TlsConnector::from(Arc::new(client_config(material, expect, clock).unwrap()));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("svid.invalid").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let mut seen = String::new();
    tls.read_to_string(&mut seen)
        .await
        .map_err(|e| e.to_string())?;
    Ok((seen, server_cert))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_see_each_others_spiffe_ids_and_refuse_the_wrong_peer() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ca = new_ca("example.org", Duration::from_secs(3600), &clock);
    let (web, api) = (svid(&ca, WEB, &clock).await, svid(&ca, API, &clock).await);
    let addr = echo_server(
        web.clone(),
        PeerPolicy::OneOf(vec![id(API)]),
        Arc::clone(&clock),
    )
    .await;

    let (seen, server_cert) = call(
        addr,
        api.clone(),
        PeerPolicy::OneOf(vec![id(WEB)]),
        Arc::clone(&clock),
    )
    .await
    .unwrap();
    assert_eq!(seen, API, "the server saw the client's SPIFFE ID");
    assert_eq!(
        spiffe_id_of(&server_cert.into()).unwrap().as_str(),
        WEB,
        "the client saw the server's"
    );

    // The client expected someone else: refused before any data.
    let err = call(
        addr,
        api.clone(),
        PeerPolicy::OneOf(vec![id("spiffe://example.org/ns/prod/svc/db")]),
        Arc::clone(&clock),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("peer spiffe://example.org/ns/prod/svc/web is not allowed"),
        "{err}"
    );

    // A client the server does not allow (web calling itself) gets nothing back.
    let refused = call(
        addr,
        web.clone(),
        PeerPolicy::OneOf(vec![id(WEB)]),
        Arc::clone(&clock),
    )
    .await;
    assert!(
        refused.map(|(seen, _)| seen).unwrap_or_default().is_empty(),
        "a refused client receives nothing"
    );

    // An SVID from another CA, even for an allowed name, is refused.
    let rogue_ca = new_ca("example.org", Duration::from_secs(3600), &clock);
    let rogue = svid(&rogue_ca, API, &clock).await;
    let refused = call(
        addr,
        rogue,
        PeerPolicy::OneOf(vec![id(WEB)]),
        Arc::clone(&clock),
    )
    .await;
    assert!(
        refused.is_err(),
        "the rogue client's own verifier refuses the real server too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_svids_are_refused_by_the_verifiers_clock() {
    let system: Arc<dyn Clock> = Arc::new(SystemClock);
    let ca = new_ca("example.org", Duration::from_secs(60), &system);
    let (web, api) = (svid(&ca, WEB, &system).await, svid(&ca, API, &system).await);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::new(SystemClock)).await;
    // The client's clock is two minutes ahead: the server's 60 s SVID has expired for it.
    let ahead = ManualClock::new(SystemClock.now().saturating_add(Duration::from_secs(120)));
    let err = call(addr, api, PeerPolicy::OneOf(vec![id(WEB)]), Arc::new(ahead))
        .await
        .unwrap_err();
    assert_eq!(err, "invalid peer certificate: Expired");
}

/// Runs `each` every `step` of manual-clock time for `total`, giving the rotators a moment of
/// real time per step (they look at the clock every 100 ms): the clock runs ten times faster
/// than real time, so the issue-scale scenarios (10 s SVIDs, 10 rotations) take seconds.
async fn drive<F, Fut>(clock: &ManualClock, total: Duration, step: Duration, mut each: F)
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        clock.advance(step);
        elapsed += step;
        tokio::time::sleep(step / 10).await;
        each(elapsed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rotations_of_10s_svids_see_no_failed_handshake() {
    let manual = ManualClock::new(SystemClock.now());
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let ca = new_ca("example.org", Duration::from_secs(10), &clock);
    let (web, api) = (svid(&ca, WEB, &clock).await, svid(&ca, API, &clock).await);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let server_certs = std::sync::Mutex::new(HashSet::new());
    let failures = std::sync::Mutex::new(Vec::new());
    // 10 rotations at half-life take 50 s of SVID time; with the rotators' reaction time (they
    // look at the clock every 100 ms of real time, ~1 s here) a rotation takes ~6 s: run 66 s.
    drive(
        &manual,
        Duration::from_secs(66),
        Duration::from_millis(250),
        |t| {
            let (api, clock, certs, failures) =
                (api.clone(), Arc::clone(&clock), &server_certs, &failures);
            async move {
                match call(addr, api, PeerPolicy::OneOf(vec![id(WEB)]), clock).await {
                    Ok((seen, cert)) if seen == API => {
                        certs.lock().unwrap().insert(cert);
                    }
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("at {t:?}: {other:?}")),
                }
            }
        },
    )
    .await;
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} handshakes failed: {failures:?}",
        failures.len()
    );
    let rotations = server_certs.into_inner().unwrap().len() - 1;
    assert!(
        rotations >= 10,
        "the server's SVID rotated {rotations} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_key_rotation_in_the_middle_causes_no_failed_handshake() {
    // 10 s SVIDs. The next CA enters the bundle at 5 s, starts signing at 20 s (more than one
    // SVID lifetime later, so every peer's bundle already holds it); the run ends at 40 s.
    let manual = ManualClock::new(SystemClock.now());
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let ca = new_ca("example.org", Duration::from_secs(10), &clock);
    let old_ca = ca.active().certificate_der().to_vec();
    let (web, api) = (svid(&ca, WEB, &clock).await, svid(&ca, API, &clock).await);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let issuers = std::sync::Mutex::new(HashSet::new());
    let failures = std::sync::Mutex::new(Vec::new());
    drive(
        &manual,
        Duration::from_secs(40),
        Duration::from_millis(250),
        |t| {
            let (api, clock, ca, issuers, failures) = (
                api.clone(),
                Arc::clone(&clock),
                Arc::clone(&ca),
                &issuers,
                &failures,
            );
            async move {
                if t == Duration::from_secs(5) {
                    ca.prepare_next(clock.now(), Duration::from_secs(86_400))
                        .unwrap();
                }
                if t == Duration::from_secs(20) {
                    ca.activate_next(clock.now()).unwrap();
                }
                match call(addr, api, PeerPolicy::OneOf(vec![id(WEB)]), clock).await {
                    Ok((_, cert)) => {
                        issuers.lock().unwrap().insert(issuer_of(&cert));
                    }
                    Err(e) => failures.lock().unwrap().push(format!("at {t:?}: {e}")),
                }
            }
        },
    )
    .await;
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} handshakes failed: {failures:?}",
        failures.len()
    );
    let issuers = issuers.into_inner().unwrap();
    assert_eq!(
        issuers.len(),
        2,
        "SVIDs from the old and the new CA were both in use"
    );
    assert!(issuers.contains(&issuer_of_ca(&old_ca)));
}

/// The authority key identifier of a certificate (which CA signed it).
fn issuer_of(cert: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert).unwrap();
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap()
}

/// The subject key identifier of a CA certificate.
fn issuer_of_ca(cert: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert).unwrap();
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap()
}

/// An authority that can be switched off, standing in for an unreachable CA.
struct Switchable(Arc<std::sync::atomic::AtomicBool>);

impl IssuanceAuthority for Switchable {
    fn authorize(
        &self,
        machine: &MachineId,
        id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the CA is unreachable".into());
        }
        Placed.authorize(machine, id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_is_survived_while_svids_last_and_recovered_from() {
    // 10 s SVIDs, renewed at 5 s. The server's CA goes down for 5 s (0.5 x TTL: no call
    // fails), comes back, then goes down for 15 s (1.5 x TTL: its SVID expires and the client
    // refuses it); once it is back the server renews within one rotation interval (5 s).
    let manual = ManualClock::new(SystemClock.now());
    let clock: Arc<dyn Clock> = Arc::new(manual.clone());
    let ca = new_ca("example.org", Duration::from_secs(10), &clock);
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let web = svid_with(&ca, WEB, Arc::new(Switchable(Arc::clone(&down))), &clock).await;
    let api = svid(&ca, API, &clock).await;
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let set_down = |v: bool| down.store(v, std::sync::atomic::Ordering::SeqCst);
    let step = Duration::from_millis(250);
    let outcomes = std::sync::Mutex::new(Vec::<(Duration, Result<(), String>)>::new());
    let record = |phase: &'static str| {
        let (api, clock, outcomes) = (api.clone(), Arc::clone(&clock), &outcomes);
        move |t: Duration| {
            let (api, clock) = (api.clone(), Arc::clone(&clock));
            async move {
                let r = call(addr, api, PeerPolicy::OneOf(vec![id(WEB)]), clock)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{phase}: {e}"));
                outcomes.lock().unwrap().push((t, r));
            }
        }
    };

    set_down(true);
    drive(
        &manual,
        Duration::from_secs(5),
        step,
        record("short outage"),
    )
    .await;
    let short: Vec<_> = outcomes
        .lock()
        .unwrap()
        .drain(..)
        .filter_map(|(_, r)| r.err())
        .collect();
    assert!(
        short.is_empty(),
        "calls failed during a 0.5 x TTL outage: {short:?}"
    );

    set_down(false);
    drive(&manual, Duration::from_secs(6), step, record("recovered")).await;
    outcomes.lock().unwrap().clear();

    set_down(true);
    drive(
        &manual,
        Duration::from_secs(15),
        step,
        record("long outage"),
    )
    .await;
    let long: Vec<_> = outcomes
        .lock()
        .unwrap()
        .drain(..)
        .filter_map(|(_, r)| r.err())
        .collect();
    assert!(!long.is_empty(), "an expired SVID must be refused");
    assert!(
        long.iter()
            .all(|e| e == "long outage: invalid peer certificate: Expired"),
        "{long:?}"
    );

    set_down(false);
    drive(&manual, Duration::from_secs(8), step, record("back")).await;
    let back = outcomes.lock().unwrap().clone();
    let first_ok = back
        .iter()
        .find(|(_, r)| r.is_ok())
        .map(|(t, _)| *t)
        .expect("calls succeed again");
    assert!(
        first_ok <= Duration::from_secs(5),
        "renewed {first_ok:?} after the CA came back (one rotation interval is 5 s)"
    );
    assert!(
        back.iter()
            .filter(|(t, _)| *t > first_ok)
            .all(|(_, r)| r.is_ok()),
        "{back:?}"
    );
}

/// An upstream root and an intermediate for example.org signed by it, as files in `dir`.
fn upstream_files(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.distinguished_name
        .push(DnType::CommonName, "Upstream Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);
    let inter_key = KeyPair::generate().unwrap();
    let mut inter = CertificateParams::new(Vec::<String>::new()).unwrap();
    inter
        .distinguished_name
        .push(DnType::CommonName, "Ringfence intermediate");
    inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    inter.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org".try_into().unwrap(),
    )];
    let inter_cert = inter.signed_by(&inter_key, &root_issuer).unwrap();
    let (key, cert, upstream) = (
        dir.join("inter.key"),
        dir.join("inter.pem"),
        dir.join("upstream.pem"),
    );
    std::fs::write(&key, inter_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&cert, inter_cert.pem()).unwrap();
    std::fs::write(&upstream, root_cert.pem()).unwrap();
    (key, cert, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_under_an_upstream_root_issues_chains_that_verify() {
    use ringfence_identity::SoftwareKeyFile;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert, upstream) = upstream_files(dir.path());
    let td = TrustDomain::parse("example.org").unwrap();
    let ca = Ca::load_intermediate(
        &SoftwareKeyFile::new(key.clone()),
        &cert,
        &upstream,
        td.clone(),
    )
    .unwrap();
    assert!(ca.is_intermediate());
    let set = Arc::new(CaSet::new(ca.with_ttl(Duration::from_secs(3600))));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    assert_eq!(
        set.bundle_der(clock.now()),
        pem::parse(std::fs::read(&upstream).unwrap())
            .unwrap()
            .contents(),
        "the bundle is the upstream root"
    );
    assert!(
        set.prepare_next(clock.now(), Duration::from_secs(86_400))
            .unwrap_err()
            .to_string()
            .contains("installing a new intermediate")
    );

    let (web, api) = (svid(&set, WEB, &clock).await, svid(&set, API, &clock).await);
    let material = web.borrow().clone().unwrap();
    assert_eq!(
        material.intermediates.len(),
        1,
        "the SVID chain carries the intermediate"
    );
    std::fs::write(
        dir.path().join("svid.pem"),
        ringfence_identity::pem_certificate(&material.cert_der),
    )
    .unwrap();
    let verify = |extra: &[&str]| {
        Command::new("openssl")
            .current_dir(dir.path())
            .args(["verify", "-CAfile", "upstream.pem"])
            .args(extra)
            .arg("svid.pem")
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        verify(&["-untrusted", "inter.pem"]),
        "openssl verifies leaf + intermediate against the upstream root"
    );
    assert!(!verify(&[]), "and not without the intermediate");

    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let (seen, _) = call(
        addr,
        api,
        PeerPolicy::OneOf(vec![id(WEB)]),
        Arc::clone(&clock),
    )
    .await
    .unwrap();
    assert_eq!(
        seen, API,
        "mTLS through the intermediate, trusting only the upstream root"
    );

    // An intermediate that the given upstream did not sign is refused when loaded.
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_root) = upstream_files(other.path());
    let err =
        Ca::load_intermediate(&SoftwareKeyFile::new(key), &cert, &other_root, td).unwrap_err();
    assert!(
        err.to_string()
            .contains("is not signed by any certificate in"),
        "{err}"
    );
}
