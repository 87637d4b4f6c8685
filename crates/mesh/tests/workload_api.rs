//! The proxy's SVID from a real SPIFFE Workload API socket (Ringfence's own server, spoken to
//! through the standard `spiffe` client): the first SVID before listening, a rotation picked up
//! by new handshakes without restarting, and a missing socket refused with its reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use ringfence_identity::workload_api::WorkloadApi;
use ringfence_mesh::config::{MeshConfig, run};
use support::*;
use tokio::sync::watch;

/// The certificate the inbound side at `addr` presents, DER.
async fn served_cert(world: &World, addr: std::net::SocketAddr) -> Vec<u8> {
    let cfg = client_tls(world.pki.svid(WEB), ORDERS);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("orders.shop").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_takes_its_svid_from_the_workload_api_and_follows_rotation() {
    let world = World::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("workload.sock");
    let first = world.pki.svid(ORDERS);
    let (tx, rx) = watch::channel(Some(first.clone()));
    let api_socket = socket.clone();
    tokio::spawn(async move {
        WorkloadApi::new(rx)
            .serve(&api_socket, std::future::pending())
            .await
            .unwrap();
    });
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backend = echo_backend().await;
    let text = format!(
        "[identity]\nworkload_api = \"{}\"\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"{backend}\"\n",
        socket.display()
    );
    let cfg = MeshConfig::parse(&text, dir.path()).unwrap();
    cfg.check().unwrap();
    let (btx, brx) = tokio::sync::oneshot::channel();
    let proxy = tokio::spawn(run(cfg, Some(btx)));
    let bound = match tokio::time::timeout(Duration::from_secs(10), brx)
        .await
        .expect("the proxy listens once it has an SVID")
    {
        Ok(b) => b,
        Err(_) => panic!("the proxy stopped: {:?}", proxy.await),
    };
    let inbound = bound.inbound.unwrap();
    assert_eq!(served_cert(&world, inbound).await, first.cert_der);

    // The Workload API rotates the SVID: the next handshake presents the new certificate.
    let second = world.pki.svid(ORDERS);
    assert_ne!(second.cert_der, first.cert_der);
    tx.send(Some(second.clone())).unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = served_cert(&world, inbound).await;
        if seen == second.cert_der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, second.cert_der, "the rotated SVID is served");

    // And requests go through with it.
    let (status, text) = raw_mtls(
        inbound,
        client_tls(world.pki.svid(WEB), ORDERS),
        &get("/orders", "orders.shop", ""),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_missing_workload_api_socket_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let text = format!(
        "[identity]\nworkload_api = \"{}\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n",
        socket.display()
    );
    let cfg = MeshConfig::parse(&text, dir.path()).unwrap();
    let err = cfg.check().unwrap_err().to_string();
    assert!(
        err.contains(&format!("no Workload API socket at {}", socket.display())),
        "{err}"
    );
    let err = tokio::time::timeout(Duration::from_secs(40), run(cfg, None))
        .await
        .expect("refused, not hung")
        .unwrap_err()
        .to_string();
    assert!(err.contains("Workload API"), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
}

#[test]
fn exactly_one_svid_source() {
    let base = std::path::Path::new("/");
    for text in [
        "[identity]\n[outbound]\nlisten = \"127.0.0.1:0\"\n",
        "[identity]\nsvid_dir = \"d\"\nworkload_api = \"s\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n",
    ] {
        let err = MeshConfig::parse(text, base).unwrap_err().to_string();
        assert!(
            err.contains("set exactly one of svid_dir (files) and workload_api (a socket)"),
            "{err}"
        );
    }
}
