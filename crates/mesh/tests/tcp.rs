//! Raw TCP through the mesh, egress to non-mesh destinations, and plain ingress (SPEC A6): each
//! allowed where the policy or the configuration says, and each refusal closed, counted and
//! audited with its reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringfence_audit::Decision;
use ringfence_mesh::config::MeshConfig;
use ringfence_mesh::{Cidr, Mesh};
use ringfence_policy::{AccessPolicy, Mode, ServiceName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const POLICY: &str = r#"
@id("web-connects-to-orders")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action == Action::"connect",
    resource == Service::"orders.shop"
);

@id("web-reaches-postgres")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action == Action::"connect",
    resource == Service::"postgres.external"
);
"#;

/// A server that speaks first (`hello\n`, as databases do), then echoes.
async fn speaks_first() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if tcp.write_all(b"hello\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Reads until `want` bytes or EOF (5 s at most).
async fn read_n(tcp: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no data and no close within 5 s; have {out:?}"),
        }
    }
    out
}

/// Asserts that the connection is closed without a byte of payload.
async fn assert_closed(tcp: &mut TcpStream) {
    let got = read_n(tcp, 1).await;
    assert!(got.is_empty(), "expected a close, got {got:?}");
}

fn policy(mode: Mode) -> AccessPolicy {
    AccessPolicy::parse(POLICY, mode, false).unwrap()
}

/// An outbound mesh for `id` with `policy`, its raw TCP port to orders.shop at `orders`.
async fn tcp_port(
    world: &World,
    id: &str,
    orders: SocketAddr,
) -> (Arc<Mesh>, Arc<ringfence_audit::MemorySink>, SocketAddr) {
    let (mesh, audit, _tx) = world.mesh(
        id,
        AccessPolicy::empty(Mode::Enforce, false),
        HashMap::from([("orders.shop".to_owned(), vec![orders])]),
    );
    std::mem::forget(_tx);
    let (l, a) = listener().await;
    tokio::spawn(Arc::clone(&mesh).serve_tcp(l, ServiceName::parse("orders.shop").unwrap()));
    (mesh, audit, a)
}

#[tokio::test]
async fn raw_tcp_between_services_where_policy_permits_it() {
    let world = World::new();
    let backend = speaks_first().await;
    let orders = world
        .inbound_tcp(ORDERS, policy(Mode::Enforce), echo_backend().await, backend)
        .await;
    let (web, _, port) = tcp_port(&world, WEB, orders.addr).await;
    let mut c = TcpStream::connect(port).await.unwrap();
    // The server's first bytes arrive although the verdict line came just before them.
    assert_eq!(read_n(&mut c, 6).await, b"hello\n");
    let payload = vec![7u8; 100_000];
    let (mut r, mut w) = c.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; payload.len()];
    r.read_exact(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back, payload);
    let metrics = orders.mesh.telemetry().render();
    assert!(
        metrics.contains(&format!(
            "ringfence_mesh_requests_total{{caller=\"{WEB}\",callee=\"orders.shop\",decision=\"allow\",code=\"200\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        web.telemetry()
            .render()
            .contains("decision=\"allow\",code=\"200\"} 1"),
        "{}",
        web.telemetry().render()
    );
}

#[tokio::test]
async fn raw_tcp_from_a_workload_no_policy_permits_is_closed_and_audited() {
    let world = World::new();
    let backend = speaks_first().await;
    let orders = world
        .inbound_tcp(ORDERS, policy(Mode::Enforce), echo_backend().await, backend)
        .await;
    let (evil, _, port) = tcp_port(&world, EVIL, orders.addr).await;
    let mut c = TcpStream::connect(port).await.unwrap();
    assert_closed(&mut c).await;
    let e = audited(&orders.audit, |e| e.action == "mesh.connect").await;
    assert_eq!(e.actor.as_str(), EVIL);
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(e.target, "orders.shop connect");
    assert!(
        e.reason.starts_with("denied: ") && e.reason.contains("orders.shop"),
        "{}",
        e.reason
    );
    // The caller's proxy learned why (its log) and counted a deny.
    let m = evil.telemetry().render();
    assert!(
        m.contains("callee=\"orders.shop\",decision=\"deny\",code=\"403\"} 1"),
        "{m}"
    );
    // An HTTP permit does not open raw TCP.
    let http_only = AccessPolicy::parse(
        r#"permit(principal, action in Action::"http", resource == Service::"orders.shop");"#,
        Mode::Enforce,
        false,
    )
    .unwrap();
    orders.mesh.policy().replace(http_only);
    let (_, _, port) = tcp_port(&world, WEB, orders.addr).await;
    let mut c = TcpStream::connect(port).await.unwrap();
    assert_closed(&mut c).await;
}

#[tokio::test]
async fn an_inbound_side_without_tcp_forward_takes_no_raw_tcp() {
    let world = World::new();
    // Only HTTP here: a raw pipe to the HTTP port would skip every per-request check.
    let orders = world
        .inbound(ORDERS, policy(Mode::Enforce), speaks_first().await)
        .await;
    let (web, _, port) = tcp_port(&world, WEB, orders.addr).await;
    let mut c = TcpStream::connect(port).await.unwrap();
    assert_closed(&mut c).await;
    let m = web.telemetry().render();
    assert!(
        m.contains("callee=\"orders.shop\",decision=\"refused\",code=\"502\"} 1"),
        "{m}"
    );
    let e = audited(&orders.audit, |e| e.action == "mesh.handshake").await;
    assert_eq!(e.reason, "peer doesn't support any known protocol");
}

#[tokio::test]
async fn raw_tcp_dry_run_connects_and_records_the_would_deny() {
    let world = World::new();
    let backend = speaks_first().await;
    let orders = world
        .inbound_tcp(ORDERS, policy(Mode::DryRun), echo_backend().await, backend)
        .await;
    let (_, _, port) = tcp_port(&world, EVIL, orders.addr).await;
    let mut c = TcpStream::connect(port).await.unwrap();
    assert_eq!(read_n(&mut c, 6).await, b"hello\n");
    let e = audited(&orders.audit, |e| e.decision == Decision::WouldDeny).await;
    assert_eq!(e.actor.as_str(), EVIL);
    assert!(e.reason.starts_with("dry-run, would deny"), "{}", e.reason);
}

#[tokio::test]
async fn raw_tcp_checks_the_servers_identity() {
    let world = World::new();
    let backend = speaks_first().await;
    // evil's inbound side, where web expects orders.
    let evil = world
        .inbound(EVIL, AccessPolicy::empty(Mode::Enforce, false), backend)
        .await;
    let (web, _, port) = tcp_port(&world, WEB, evil.addr).await;
    let mut c = TcpStream::connect(port).await.unwrap();
    assert_closed(&mut c).await;
    let m = web.telemetry().render();
    assert!(
        m.contains("callee=\"orders.shop\",decision=\"refused\",code=\"502\"} 1"),
        "{m}"
    );
}

/// web's egress ports: postgres.external (permitted) and redis.external (not).
async fn egress(
    world: &World,
    mode: Mode,
    to: SocketAddr,
) -> (Arc<ringfence_audit::MemorySink>, SocketAddr, SocketAddr) {
    let (mesh, audit, _tx) = world.mesh(WEB, policy(mode), HashMap::new());
    std::mem::forget(_tx);
    let (pg, pg_addr) = listener().await;
    let (redis, redis_addr) = listener().await;
    tokio::spawn(Arc::clone(&mesh).serve_egress(
        pg,
        ServiceName::parse("postgres.external").unwrap(),
        vec![to],
    ));
    tokio::spawn(Arc::clone(&mesh).serve_egress(
        redis,
        ServiceName::parse("redis.external").unwrap(),
        vec![to],
    ));
    (audit, pg_addr, redis_addr)
}

#[tokio::test]
async fn egress_reaches_a_plain_destination_only_where_policy_permits() {
    let world = World::new();
    let db = speaks_first().await;
    let (audit, pg, redis) = egress(&world, Mode::Enforce, db).await;
    let mut c = TcpStream::connect(pg).await.unwrap();
    assert_eq!(read_n(&mut c, 6).await, b"hello\n");
    c.write_all(b"select 1").await.unwrap();
    assert_eq!(read_n(&mut c, 8).await, b"select 1");
    let mut c = TcpStream::connect(redis).await.unwrap();
    assert_closed(&mut c).await;
    let e = audited(&audit, |e| {
        e.action == "mesh.egress" && e.decision == Decision::Deny
    })
    .await;
    assert_eq!(e.actor.as_str(), WEB);
    assert_eq!(e.target, "redis.external connect");
    assert_eq!(
        e.reason,
        "denied: no service-access policy permits egress to redis.external: egress is closed unless permitted"
    );
}

#[tokio::test]
async fn egress_dry_run_connects_and_records_the_would_deny() {
    let world = World::new();
    let db = speaks_first().await;
    let (audit, _, redis) = egress(&world, Mode::DryRun, db).await;
    let mut c = TcpStream::connect(redis).await.unwrap();
    assert_eq!(read_n(&mut c, 6).await, b"hello\n");
    let e = audited(&audit, |e| e.decision == Decision::WouldDeny).await;
    assert_eq!(e.target, "redis.external connect");
}

#[tokio::test]
async fn plain_ingress_only_from_the_networks_listed() {
    let world = World::new();
    let backend = speaks_first().await;
    let (mesh, audit, _tx) = world.mesh(ORDERS, policy(Mode::Enforce), HashMap::new());
    std::mem::forget(_tx);
    let (open, open_addr) = listener().await;
    let (closed, closed_addr) = listener().await;
    tokio::spawn(Arc::clone(&mesh).serve_ingress(
        open,
        backend,
        vec![Cidr::parse("127.0.0.0/8").unwrap()],
    ));
    tokio::spawn(Arc::clone(&mesh).serve_ingress(
        closed,
        backend,
        vec![Cidr::parse("10.0.0.0/8").unwrap()],
    ));
    let mut c = TcpStream::connect(open_addr).await.unwrap();
    assert_eq!(read_n(&mut c, 6).await, b"hello\n");
    let mut c = TcpStream::connect(closed_addr).await.unwrap();
    assert_closed(&mut c).await;
    let e = audited(&audit, |e| e.action == "mesh.ingress").await;
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(
        e.reason,
        format!(
            "client 127.0.0.1 is not in the ingress allow list of port {}",
            closed_addr.port()
        )
    );
    assert!(
        e.details["client"].starts_with("127.0.0.1:"),
        "{:?}",
        e.details
    );
    let m = mesh.telemetry().render();
    assert!(
        m.contains("caller=\"external\",callee=\"orders.shop\",decision=\"deny\",code=\"403\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn one_address_holds_only_so_many_connections() {
    let world = World::new();
    let backend = speaks_first().await;
    let (mesh, audit, _tx) = world.mesh_limited(ORDERS, policy(Mode::Enforce), HashMap::new(), 2);
    std::mem::forget(_tx);
    let (inbound, inbound_addr) = listener().await;
    tokio::spawn(Arc::clone(&mesh).serve_inbound(inbound, backend));
    let (ingress, ingress_addr) = listener().await;
    tokio::spawn(Arc::clone(&mesh).serve_ingress(
        ingress,
        backend,
        vec![Cidr::parse("127.0.0.0/8").unwrap()],
    ));
    // Two connections that never finish a handshake hold both of 127.0.0.1's handshake slots
    // on the inbound port; the third is closed at once, without waiting for a timeout.
    let a = TcpStream::connect(inbound_addr).await.unwrap();
    let _b = TcpStream::connect(inbound_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = TcpStream::connect(inbound_addr).await.unwrap();
    let started = std::time::Instant::now();
    assert_closed(&mut c).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let e = audited(&audit, |e| e.action == "mesh.connection").await;
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(
        e.reason,
        format!(
            "127.0.0.1 already holds 2 unfinished handshakes to port {}, the most one address may",
            inbound_addr.port()
        )
    );
    // A closed one frees its slot: the next handshake may start (and stays open, waiting).
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = TcpStream::connect(inbound_addr).await.unwrap();
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), d.read(&mut buf))
            .await
            .is_err(),
        "a connection within the cap is kept"
    );
    // Plain ingress clients are counted apart, for their whole connection.
    let mut i1 = TcpStream::connect(ingress_addr).await.unwrap();
    assert_eq!(read_n(&mut i1, 6).await, b"hello\n");
    let mut i2 = TcpStream::connect(ingress_addr).await.unwrap();
    assert_eq!(read_n(&mut i2, 6).await, b"hello\n");
    let mut i3 = TcpStream::connect(ingress_addr).await.unwrap();
    assert_closed(&mut i3).await;
    let e = audited(&audit, |e| {
        e.action == "mesh.connection" && e.reason.contains("2 connections to port")
    })
    .await;
    assert_eq!(e.decision, Decision::Deny);
    drop(i2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut i4 = TcpStream::connect(ingress_addr).await.unwrap();
    assert_eq!(read_n(&mut i4, 6).await, b"hello\n");
    let m = mesh.telemetry().render();
    assert!(
        m.contains("ringfence_mesh_connections_refused_total 2"),
        "{m}"
    );
}

#[tokio::test]
async fn refusals_without_an_svid_are_audited_within_a_budget_per_address() {
    let world = World::new();
    let backend = speaks_first().await;
    let (mesh, audit, _tx) = world.mesh(ORDERS, policy(Mode::Enforce), HashMap::new());
    std::mem::forget(_tx);
    let (closed, closed_addr) = listener().await;
    tokio::spawn(Arc::clone(&mesh).serve_ingress(
        closed,
        backend,
        vec![Cidr::parse("10.0.0.0/8").unwrap()],
    ));
    let budget = ringfence_mesh::telemetry::AUDIT_PER_SOURCE as usize;
    for _ in 0..budget + 15 {
        let mut c = TcpStream::connect(closed_addr).await.unwrap();
        assert_closed(&mut c).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ingress = audit
        .events()
        .into_iter()
        .filter(|e| e.action == "mesh.ingress")
        .count();
    assert_eq!(ingress, budget, "one address fills the audit only so far");
    let m = mesh.telemetry().render();
    assert!(
        m.contains("ringfence_mesh_audit_suppressed_total 15"),
        "{m}"
    );
    // Every refusal is still counted.
    assert!(
        m.contains(&format!(
            "caller=\"external\",callee=\"orders.shop\",decision=\"deny\",code=\"403\"}} {}",
            budget + 15
        )),
        "{m}"
    );
}

#[test]
fn configuration_refuses_open_egress_and_unbounded_ingress() {
    let base = std::path::Path::new("/");
    let head = "[identity]\nsvid_dir = \"svid\"\n";
    let bad = [
        (
            "[[egress]]\nlisten = \"0.0.0.0:15433\"\nname = \"postgres.external\"\nto = [\"127.0.0.1:5432\"]\n",
            "egress.listen 0.0.0.0:15433 is not a loopback address: it is for the local workload only",
        ),
        (
            "[[egress]]\nlisten = \"127.0.0.1:15433\"\nname = \"postgres\"\nto = [\"127.0.0.1:5432\"]\n",
            "egress.name: service name \"postgres\" is not <service>.<namespace>",
        ),
        (
            "[[egress]]\nlisten = \"127.0.0.1:15433\"\nname = \"postgres.external\"\nto = []\n",
            "egress postgres.external: `to` lists no address",
        ),
        (
            "[[tcp]]\nlisten = \"10.0.0.1:15432\"\nservice = \"db.shop\"\n",
            "tcp.listen 10.0.0.1:15432 is not a loopback address",
        ),
        (
            "[[ingress]]\nlisten = \"0.0.0.0:8081\"\nforward = \"127.0.0.1:8080\"\nallow_from = []\n",
            "allow_from is empty",
        ),
        (
            "[[ingress]]\nlisten = \"0.0.0.0:8081\"\nforward = \"127.0.0.1:8080\"\nallow_from = [\"10.0.0.1/8\"]\n",
            "has host bits set",
        ),
        (
            "[[ingress]]\nlisten = \"0.0.0.0:8081\"\nforward = \"127.0.0.1:8080\"\n",
            "missing field `allow_from`",
        ),
        (
            "[[egress]]\nlisten = \"127.0.0.1:15433\"\nname = \"postgres.external\"\nto = [\"127.0.0.1:5432\"]\nany = true\n",
            "unknown field `any`",
        ),
        (
            "[inbound]\nlisten = \"127.0.0.1:15443\"\nforward = \"127.0.0.1:8080\"\ntcp_forward = \"127.0.0.1:8080\"\n",
            "inbound.tcp_forward 127.0.0.1:8080 is the HTTP port",
        ),
        (
            "[inbound]\nlisten = \"127.0.0.1:15443\"\nforward = \"127.0.0.1:8080\"\n[[ingress]]\nlisten = \"0.0.0.0:8081\"\nforward = \"127.0.0.1:8080\"\nallow_from = [\"10.0.0.0/8\"]\n",
            "forward 127.0.0.1:8080 is the inbound side's HTTP port",
        ),
    ];
    for (text, message) in bad {
        let err = MeshConfig::parse(&format!("{head}{text}"), base)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{text}\n=> {err}");
    }
    let ok = MeshConfig::parse(
        &format!(
            "{head}[[egress]]\nlisten = \"127.0.0.1:15433\"\nname = \"postgres.external\"\nto = [\"127.0.0.1:5432\"]\n"
        ),
        base,
    )
    .unwrap();
    assert_eq!(ok.egress.len(), 1);
}
