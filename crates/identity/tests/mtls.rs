//! Two services complete a rustls mTLS handshake with SVIDs and each sees the other's SPIFFE
//! ID; the wrong peer, a foreign CA and an expired SVID are refused; and a stream of
//! connections across several SVID rotations sees no failed handshake.
//!
//! Rotation here runs on real time with short TTLs; the identity issue's 10-rotation test
//! under a manual `Clock` (and the CA-outage cases) is still to come.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::collections::HashSet;
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

fn new_ca(td: &str, ttl: Duration) -> Arc<CaSet> {
    Arc::new(CaSet::new(
        Ca::generate(
            TrustDomain::parse(td).unwrap(),
            SystemClock.now(),
            Duration::from_secs(86_400),
        )
        .unwrap()
        .with_ttl(ttl),
    ))
}

/// The audited issuance service over `ca` (events kept in memory).
fn service(ca: &Arc<CaSet>, authority: Arc<dyn IssuanceAuthority>) -> Arc<IssuanceService> {
    Arc::new(
        IssuanceService::new(
            Arc::clone(ca),
            authority,
            Arc::new(MemorySink::default()),
            Arc::new(SystemClock),
        )
        .unwrap(),
    )
}

/// Starts a rotator for `who` and waits for its first SVID.
async fn svid(ca: &Arc<CaSet>, who: &str) -> watch::Receiver<Option<X509Material>> {
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(run_rotator(
        service(ca, Arc::new(Placed)),
        MachineId::parse("node-1").unwrap(),
        id(who),
        Arc::new(SystemClock),
        tx,
    ));
    rx.wait_for(Option::is_some).await.unwrap();
    rx
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
    let ca = new_ca("example.org", Duration::from_secs(3600));
    let (web, api) = (svid(&ca, WEB).await, svid(&ca, API).await);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
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
    let rogue_ca = new_ca("example.org", Duration::from_secs(3600));
    let rogue = svid(&rogue_ca, API).await;
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
    let ca = new_ca("example.org", Duration::from_secs(60));
    let (web, api) = (svid(&ca, WEB).await, svid(&ca, API).await);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::new(SystemClock)).await;
    // The client's clock is two minutes ahead: the server's 60 s SVID has expired for it.
    let ahead = ManualClock::new(SystemClock.now().saturating_add(Duration::from_secs(120)));
    let err = call(addr, api, PeerPolicy::OneOf(vec![id(WEB)]), Arc::new(ahead))
        .await
        .unwrap_err();
    assert_eq!(err, "invalid peer certificate: Expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_across_rotations_never_fail() {
    // 4 s SVIDs renewed at half-life (2 s of slack for a loaded machine): over 9 s each side
    // rotates four or five times.
    let ca = new_ca("example.org", Duration::from_secs(4));
    let (web, api) = (svid(&ca, WEB).await, svid(&ca, API).await);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let mut server_certs = HashSet::new();
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut calls = 0;
    while tokio::time::Instant::now() < deadline {
        match call(
            addr,
            api.clone(),
            PeerPolicy::OneOf(vec![id(WEB)]),
            Arc::clone(&clock),
        )
        .await
        {
            Ok((seen, cert)) => {
                assert_eq!(seen, API);
                server_certs.insert(cert);
            }
            Err(e) => failures.push(e),
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} handshakes failed: {failures:?}",
        failures.len()
    );
    assert!(
        server_certs.len() >= 5,
        "the server rotated: {} distinct certificates over {calls} calls",
        server_certs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_key_rotation_in_the_middle_causes_no_failed_handshake() {
    // 4 s SVIDs. The next CA enters the bundle at 2 s, starts signing at 7 s (more than one
    // SVID lifetime later, so every peer's bundle already holds it), and the run ends at 13 s.
    let ca = new_ca("example.org", Duration::from_secs(4));
    let old_ca = ca.active().certificate_der().to_vec();
    let (web, api) = (svid(&ca, WEB).await, svid(&ca, API).await);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let start = tokio::time::Instant::now();
    let (mut prepared, mut activated) = (false, false);
    let mut failures = Vec::new();
    let mut issuers = HashSet::new();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs(13) {
        if !prepared && start.elapsed() >= Duration::from_secs(2) {
            ca.prepare_next(SystemClock.now(), Duration::from_secs(86_400))
                .unwrap();
            prepared = true;
        }
        if !activated && start.elapsed() >= Duration::from_secs(7) {
            ca.activate_next(SystemClock.now()).unwrap();
            activated = true;
        }
        match call(
            addr,
            api.clone(),
            PeerPolicy::OneOf(vec![id(WEB)]),
            Arc::clone(&clock),
        )
        .await
        {
            Ok((_, cert)) => {
                issuers.insert(issuer_of(&cert));
            }
            Err(e) => failures.push(format!("at {:?}: {e}", start.elapsed())),
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} handshakes failed: {failures:?}",
        failures.len()
    );
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
    // 4 s SVIDs, renewed at 2 s. The server's CA goes down twice: for 2 s (0.5 x TTL: no
    // failure) and for 6 s (1.5 x TTL: its SVID expires and the client refuses it); when the
    // CA is back, the server renews within one rotation interval (2 s) and calls succeed.
    let ca = new_ca("example.org", Duration::from_secs(4));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut web) = watch::channel(None);
    tokio::spawn(run_rotator(
        service(&ca, Arc::new(Switchable(Arc::clone(&down)))),
        MachineId::parse("node-1").unwrap(),
        id(WEB),
        Arc::new(SystemClock),
        tx,
    ));
    web.wait_for(Option::is_some).await.unwrap();
    let api = svid(&ca, API).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let addr = echo_server(web, PeerPolicy::OneOf(vec![id(API)]), Arc::clone(&clock)).await;
    let ok =
        |r: &Result<(String, Vec<u8>), String>| r.as_ref().map(|(s, _)| s == API).unwrap_or(false);
    let set_down = |v: bool| down.store(v, std::sync::atomic::Ordering::SeqCst);

    // Short outage: every call succeeds.
    set_down(true);
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let r = call(
            addr,
            api.clone(),
            PeerPolicy::OneOf(vec![id(WEB)]),
            Arc::clone(&clock),
        )
        .await;
        assert!(ok(&r), "a call failed during a 0.5 x TTL outage: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set_down(false);
    tokio::time::sleep(Duration::from_secs(3)).await; // renewed, fresh 4 s SVID

    // Long outage: the server's SVID expires and the client refuses it.
    set_down(true);
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut refused = Vec::new();
    while tokio::time::Instant::now() < until {
        if let Err(e) = call(
            addr,
            api.clone(),
            PeerPolicy::OneOf(vec![id(WEB)]),
            Arc::clone(&clock),
        )
        .await
        {
            refused.push(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!refused.is_empty(), "an expired SVID must be refused");
    assert!(
        refused
            .iter()
            .all(|e| e == "invalid peer certificate: Expired"),
        "{refused:?}"
    );

    // Back: renewal within one rotation interval (2 s), then calls succeed again.
    set_down(false);
    let back = tokio::time::Instant::now();
    loop {
        let r = call(
            addr,
            api.clone(),
            PeerPolicy::OneOf(vec![id(WEB)]),
            Arc::clone(&clock),
        )
        .await;
        if ok(&r) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "no renewal within one rotation interval: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
