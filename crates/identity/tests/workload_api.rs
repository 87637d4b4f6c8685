//! The Workload API server against real SPIFFE clients: the Rust `spiffe` crate's client and
//! py-spiffe (PyPI `spiffe`), with rotation at half-life, the trust bundle, JWT-SVIDs minted,
//! validated and refused for the wrong audience, openssl verification of what the clients
//! received, and the security-header refusal.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ringfence_audit::MemorySink;
use ringfence_core::{MachineId, SpiffeId, SystemClock, TrustDomain, UnixTime};
use ringfence_identity::jwt::JwtIssuer;
use ringfence_identity::workload_api::{JwtContext, WorkloadApi, run_rotator};
use ringfence_identity::{
    Ca, CaSet, IssuanceAuthority, IssuanceAuthorization, IssuanceService, pem_certificate,
};
use tokio::sync::{oneshot, watch};

const ID: &str = "spiffe://example.org/ns/prod/svc/web";

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

struct Server {
    socket: PathBuf,
    ca: Arc<CaSet>,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(ttl: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("workload.sock");
    let td = TrustDomain::parse("example.org").unwrap();
    let ca = Arc::new(
        Ca::generate(
            td,
            ringfence_core::Clock::now(&SystemClock),
            Duration::from_secs(86_400),
        )
        .unwrap()
        .with_ttl(ttl),
    );
    let ca_pem = pem_certificate(ca.certificate_der());
    let ca = Arc::new(CaSet::new(Arc::try_unwrap(ca).unwrap()));
    let (tx, rx) = watch::channel(None);
    let ca_set = Arc::clone(&ca);
    let service = Arc::new(
        IssuanceService::new(
            ca,
            Arc::new(Placed),
            Arc::new(MemorySink::default()),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    tokio::spawn(run_rotator(
        service,
        MachineId::parse("node-1").unwrap(),
        SpiffeId::parse(ID).unwrap(),
        Arc::new(SystemClock),
        tx,
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    let jwt = JwtContext {
        issuer: JwtIssuer::generate(TrustDomain::parse("example.org").unwrap()).unwrap(),
        spiffe_id: SpiffeId::parse(ID).unwrap(),
        ttl: Duration::from_secs(300),
        clock: Arc::new(SystemClock),
    };
    tokio::spawn(async move {
        WorkloadApi::new(rx)
            .with_jwt(jwt)
            .serve(&path, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Server {
        socket,
        ca: ca_set,
        ca_pem,
        stop: Some(stop),
        _dir: dir,
    }
}

fn openssl_verify(dir: &Path, ca_pem: &str, leaf_der: &[u8]) -> bool {
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("leaf.pem"), pem_certificate(leaf_der)).unwrap();
    Command::new("openssl")
        .current_dir(dir)
        .args([
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ca.pem",
            "leaf.pem",
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_client_fetches_svids_and_bundles_and_sees_rotation() {
    let server = serve(Duration::from_secs(4)).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", server.socket.display()))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ID);
    let leaf = svid.leaf().as_ref().to_vec();
    let work = tempfile::tempdir().unwrap();
    assert!(
        openssl_verify(work.path(), &server.ca_pem, &leaf),
        "openssl verify of the fetched SVID"
    );

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&td).expect("a bundle for example.org");
    assert_eq!(bundle.authorities().len(), 1);

    // The stream pushes the renewed SVID at half-life (2 s for a 4 s TTL).
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a renewed SVID within the TTL")
        .unwrap()
        .unwrap();
    assert_ne!(
        first.leaf().as_ref(),
        second.leaf().as_ref(),
        "a new certificate"
    );
    assert_eq!(second.spiffe_id().to_string(), ID);
    assert!(openssl_verify(
        work.path(),
        &server.ca_pem,
        second.leaf().as_ref()
    ));
}

fn python(script: &str) -> std::process::Output {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 is on the machine");
    if String::from_utf8_lossy(&out.stderr).contains("No module named 'spiffe'") {
        panic!("py-spiffe is missing: scripts/install-deps.sh installs it (pip install spiffe)");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_svids_bundles_and_validates_jwt_svids() {
    let server = serve(Duration::from_secs(3600)).await;
    let work = tempfile::tempdir().unwrap();
    // py-spiffe exactly as published: its gRPC core sends the percent-encoded socket path as
    // `:authority`, which the server's authority bridge accepts.
    let script = format!(
        r#"
from spiffe import WorkloadApiClient
from cryptography.hazmat.primitives.serialization import Encoding
client = WorkloadApiClient(socket_path="unix://{socket}")
svid = client.fetch_x509_svid()
print(svid.spiffe_id)
open("{dir}/leaf.pem", "wb").write(svid.leaf.public_bytes(Encoding.PEM))
bundles = client.fetch_x509_bundles()
print(sorted(str(td) for td in bundles._bundles.keys()) if hasattr(bundles, "_bundles") else bundles)
token = client.fetch_jwt_svid(audience={{"api"}})
print("jwt sub", token.spiffe_id, "aud", sorted(token.audience))
print("validated", client.validate_jwt_svid(token.token, "api").spiffe_id)
try:
    client.validate_jwt_svid(token.token, "other-service")
except Exception as e:
    print("wrong audience:", e)
jwt_bundles = client.fetch_jwt_bundles()
print("jwt bundle", jwt_bundles.get_bundle_for_trust_domain(__import__("spiffe").TrustDomain("example.org")) is not None)
"#,
        socket = server.socket.display(),
        dir = work.path().display()
    );
    let out = tokio::task::spawn_blocking(move || python(&script))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(ID));
    assert!(lines.next().unwrap().contains("example.org"), "{stdout}");
    assert!(
        stdout.contains(&format!("jwt sub {ID} aud ['api']")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("validated {ID}")), "{stdout}");
    assert!(
        stdout.contains("does not include \"other-service\""),
        "{stdout}"
    );
    assert!(stdout.contains("jwt bundle True"), "{stdout}");
    std::fs::write(work.path().join("ca.pem"), &server.ca_pem).unwrap();
    let verify = Command::new("openssl")
        .current_dir(work.path())
        .args(["verify", "-CAfile", "ca.pem", "leaf.pem"])
        .output()
        .unwrap();
    assert!(verify.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_security_header_are_refused() {
    let server = serve(Duration::from_secs(3600)).await;
    let script = format!(
        r#"
import grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc
channel = grpc.insecure_channel("unix://{socket}")
stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
try:
    for _ in stub.FetchX509SVID(workload_pb2.X509SVIDRequest()):
        print("ANSWERED")
        break
except grpc.RpcError as e:
    print(e.code(), e.details())
for _ in stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")]):
    print("WITH HEADER OK")
    break
"#,
        socket = server.socket.display()
    );
    let out = tokio::task::spawn_blocking(move || python(&script))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("StatusCode.INVALID_ARGUMENT security header missing from request"),
        "{stdout}"
    );
    assert!(!stdout.contains("ANSWERED"));
    assert!(stdout.contains("WITH HEADER OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_pushes_the_new_bundle_to_workloads_at_once() {
    let server = serve(Duration::from_secs(3600)).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", server.socket.display()))
        .await
        .unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let mut bundles = client.stream_x509_bundles().await.unwrap();
    let first = bundles.next().await.unwrap().unwrap();
    assert_eq!(first.get(&td).unwrap().authorities().len(), 1);
    server
        .ca
        .prepare_next(
            ringfence_core::Clock::now(&SystemClock),
            Duration::from_secs(86_400),
        )
        .unwrap();
    // Pushed without waiting for the hour-long SVID's renewal.
    let next = tokio::time::timeout(Duration::from_secs(2), bundles.next())
        .await
        .expect("the new bundle is pushed")
        .unwrap()
        .unwrap();
    assert_eq!(
        next.get(&td).unwrap().authorities().len(),
        2,
        "old and next CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_client_fetches_and_validates_jwt_svids() {
    let server = serve(Duration::from_secs(3600)).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", server.socket.display()))
        .await
        .unwrap();
    let jwt = client.fetch_jwt_svid(["api"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), ID);
    assert_eq!(jwt.audience(), ["api"]);
    let validated = client.validate_jwt_token("api", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), ID);
    assert!(
        client
            .validate_jwt_token("other", jwt.token())
            .await
            .is_err(),
        "wrong audience refused"
    );
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(
        bundles
            .get(&spiffe::TrustDomain::new("example.org").unwrap())
            .is_some()
    );
    // Another workload's identity cannot be requested on this socket.
    let other = spiffe::SpiffeId::new("spiffe://example.org/ns/prod/svc/admin").unwrap();
    assert!(client.fetch_jwt_svid(["api"], Some(&other)).await.is_err());
}
