//! HTTP/2 and gRPC through both proxies: the application speaks h2c (prior knowledge) to its
//! outbound proxy, the proxies speak h2 over mTLS (ALPN), the inbound proxy speaks h2c to the
//! service. The same normalizer, authority check, token chain and Cedar decision as HTTP/1.1;
//! gRPC callers are refused with a gRPC status.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ringfence_audit::Decision;
use ringfence_policy::{AccessPolicy, Mode};
use support::*;
use tokio::net::{TcpListener, TcpStream};

const POLICY: &str = r#"
@id("web-reads-orders")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action in Action::"http",
    resource == Service::"orders.shop"
) when { context.path like "/orders*" };

@id("web-calls-lookup")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action == Action::"grpc",
    resource == Service::"orders.shop"
) when { context.grpc_service == "shop.Orders" && context.grpc_method == "Lookup" };

@id("checkout-for-users")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action == Action::"POST",
    resource == Service::"orders.shop"
) when { context has user && context.user.sub == "alice" && context.path == "/checkout" };
"#;

/// A backend speaking HTTP/1.1 and h2c on one port, answering each request with what it
/// received (version, method, path, fields, body length), and gRPC requests in gRPC form.
async fn h2c_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut text = format!("{:?} {} {}\n", req.version(), req.method(), req.uri());
                    for (n, v) in req.headers() {
                        text.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                    }
                    let grpc = req
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    text.push_str(&format!("body: {}\n", body.len()));
                    let mut resp = Response::builder().status(200);
                    if grpc {
                        resp = resp
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "0");
                    }
                    Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(text))).unwrap())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

struct H2Setup {
    world: World,
    orders: Proxy,
    web: Proxy,
}

async fn setup(mode: Mode) -> H2Setup {
    let world = World::new();
    let backend = h2c_echo().await;
    let policy = AccessPolicy::parse(POLICY, mode, false).unwrap();
    let orders = world.inbound(ORDERS, policy, backend).await;
    let web = world.outbound(WEB, &[("orders.shop", orders.addr)]).await;
    H2Setup { world, orders, web }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An h2c (prior knowledge) client connection to `addr`.
async fn h2c_client(addr: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// (status, fields, body text) of one request.
async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> (u16, hyper::HeaderMap, String) {
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let mut headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    if let Some(t) = collected.trailers() {
        headers.extend(t.clone());
    }
    let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (status, headers, text)
}

fn request(method: &str, uri: &str) -> hyper::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test]
async fn h2_call_reaches_the_service_over_mtls_with_its_verified_caller() {
    let s = setup(Mode::Enforce).await;
    let mut c = h2c_client(s.web.addr).await;
    let (status, _, text) = send(
        &mut c,
        request("GET", "http://orders.shop/orders/%61b")
            .header("ringfence-caller", "spiffe://example.org/ns/shop/svc/admin")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with("HTTP/2.0 GET http://orders.shop/orders/ab\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("ringfence-caller: {WEB}\n")),
        "{text}"
    );
    assert!(
        !text.contains("svc/admin"),
        "the caller's own field is dropped: {text}"
    );
    // Many streams on the one connection, concurrently.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &mut c,
                request("POST", &format!("http://orders.shop/orders/{i}"))
                    .body(Full::new(Bytes::from(vec![b'x'; 1024])))
                    .unwrap(),
            )
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(&format!("/orders/{i}\n")), "{text}");
        assert!(text.contains("body: 1024\n"), "{text}");
    }
    let metrics = s.orders.mesh.telemetry().render();
    assert!(
        metrics.contains(&format!(
            "ringfence_mesh_requests_total{{caller=\"{WEB}\",callee=\"orders.shop\",decision=\"allow\",code=\"200\"}} 21"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn h2_paths_are_normalized_and_decided_like_http1() {
    let s = setup(Mode::Enforce).await;
    let mut c = h2c_client(s.web.addr).await;
    for (path, status, message) in [
        ("/admin", 403, "ringfence: denied"),
        ("//orders", 400, "ringfence: empty path segment"),
        ("/%2Forders", 400, "ringfence: escaped '/' (%2F)"),
        ("/%2forders", 400, "ringfence: escaped '/' (%2F)"),
        ("/orders/../admin", 400, "ringfence: dot segment"),
        ("/./orders", 400, "ringfence: dot segment"),
        ("/orders;x", 400, "ringfence: ';' in the path"),
        ("/orders%00", 400, "ringfence: escaped NUL (%00)"),
    ] {
        let (got, _, text) = send(
            &mut c,
            request("GET", &format!("http://orders.shop{path}"))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.starts_with(message), "{path}: {text}");
    }
    let e = audited(&s.orders.audit, |e| {
        e.decision == Decision::Deny && e.target.ends_with("GET /admin")
    })
    .await;
    assert_eq!(e.actor.as_str(), WEB);
    assert!(e.reason.contains("denied"), "{}", e.reason);
}

#[tokio::test]
async fn h2_authority_must_name_the_service() {
    let s = setup(Mode::Enforce).await;
    let mut c = h2c_client(s.web.addr).await;
    let (status, _, text) = send(
        &mut c,
        request("GET", "http://Orders.Shop/orders")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("does not name a mesh service"), "{text}");
    let (status, _, text) = send(
        &mut c,
        request("GET", "http://billing.shop/orders")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no endpoints for billing.shop"), "{text}");
}

#[tokio::test]
async fn grpc_methods_are_decided_by_service_and_method_and_refused_with_a_grpc_status() {
    let s = setup(Mode::Enforce).await;
    let mut c = h2c_client(s.web.addr).await;
    let grpc = |method: &str| {
        request("POST", &format!("http://orders.shop/shop.Orders/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let (status, headers, text) = send(&mut c, grpc("Lookup")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["grpc-status"], "0", "{headers:?}");
    assert!(
        text.starts_with("HTTP/2.0 POST http://orders.shop/shop.Orders/Lookup\n"),
        "{text}"
    );
    let (status, headers, _) = send(&mut c, grpc("Cancel")).await;
    assert_eq!(status, 200, "gRPC refusals are trailers-only responses");
    assert_eq!(
        headers["grpc-status"], "7",
        "PERMISSION_DENIED: {headers:?}"
    );
    let message = headers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("ringfence: denied"), "{message}");
    let e = audited(&s.orders.audit, |e| {
        e.decision == Decision::Deny && e.target.ends_with("grpc /shop.Orders/Cancel")
    })
    .await;
    assert_eq!(e.actor.as_str(), WEB);
    // The gRPC content type on another method does not make it a gRPC call: it is decided
    // as the HTTP request it is (no permit covers DELETE there).
    let delete = request("DELETE", "http://orders.shop/shop.Orders/Lookup")
        .header("content-type", "application/grpc")
        .body(empty())
        .unwrap();
    let (_, headers, _) = send(&mut c, delete).await;
    assert_eq!(headers["grpc-status"], "7", "{headers:?}");
    let e = audited(&s.orders.audit, |e| {
        e.target.ends_with("DELETE /shop.Orders/Lookup")
    })
    .await;
    assert_eq!(e.decision, Decision::Deny);
    // A bad token: UNAUTHENTICATED.
    let mut bad = grpc("Lookup");
    bad.headers_mut()
        .insert("txn-token", "e30.e30.e30".parse().unwrap());
    let (_, headers, _) = send(&mut c, bad).await;
    assert_eq!(headers["grpc-status"], "16", "{headers:?}");
}

#[tokio::test]
async fn h2_user_token_passes_and_a_replayed_chain_is_refused() {
    let s = setup(Mode::Enforce).await;
    let token = s.world.mint("alice", WEB);
    let mut c = h2c_client(s.web.addr).await;
    let (status, _, text) = send(
        &mut c,
        request("POST", "http://orders.shop/checkout")
            .header("txn-token", &token)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("ringfence-user: alice\n"), "{text}");
    let chain = text
        .lines()
        .find_map(|l| l.strip_prefix("ringfence-txn-chain: "))
        .unwrap()
        .to_owned();
    // Without a user the same call is denied.
    let (status, _, _) = send(
        &mut c,
        request("POST", "http://orders.shop/checkout")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    // evil replays token and chain through its own proxy.
    let evil = s
        .world
        .outbound(EVIL, &[("orders.shop", s.orders.addr)])
        .await;
    let mut e = h2c_client(evil.addr).await;
    let (status, _, text) = send(
        &mut e,
        request("POST", "http://orders.shop/checkout")
            .header("txn-token", &token)
            .header("ringfence-txn-chain", &chain)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains(&format!(
            "link 2 is from {EVIL} but the token was held by {ORDERS}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn h2_dry_run_forwards_and_records_the_would_deny() {
    let s = setup(Mode::DryRun).await;
    let mut c = h2c_client(s.web.addr).await;
    let (status, _, text) = send(
        &mut c,
        request("GET", "http://orders.shop/stock")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let e = audited(&s.orders.audit, |e| e.decision == Decision::WouldDeny).await;
    assert!(e.target.ends_with("GET /stock"), "{}", e.target);
}

#[tokio::test]
async fn http1_and_h2_share_the_outbound_port_and_each_keeps_its_protocol() {
    let s = setup(Mode::Enforce).await;
    let (status, text) = raw_plain(s.web.addr, &get("/orders/1", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("HTTP/1.1 GET /orders/1\n"), "{text}");
    let mut c = h2c_client(s.web.addr).await;
    let (status, _, text) = send(
        &mut c,
        request("GET", "http://orders.shop/orders/1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.starts_with("HTTP/2.0 GET http://orders.shop/orders/1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn h2_over_mtls_directly_checks_the_peer_and_the_policy() {
    let s = setup(Mode::Enforce).await;
    // evil connects straight to the inbound proxy with its own SVID, speaking h2.
    let mut cfg = (*client_tls(s.world.pki.svid(EVIL), ORDERS)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(s.orders.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("orders.shop").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut c, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, _, text) = send(
        &mut c,
        request("GET", "http://orders.shop/orders/1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.starts_with("ringfence: denied"), "{text}");
    let e = audited(&s.orders.audit, |e| e.decision == Decision::Deny).await;
    assert_eq!(e.actor.as_str(), EVIL);
}

/// An h2c client connection whose driver's end is observable: the time it ended.
async fn h2c_client_watched(
    addr: SocketAddr,
) -> (Sender, tokio::task::JoinHandle<std::time::Instant>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        std::time::Instant::now()
    });
    (sender, ended)
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_and_a_busy_one_is_kept() {
    // The test proxies' idle time is 5 s (support::World::mesh). Pings alone would keep an
    // idle connection open for as long as its peer answers them.
    let s = setup(Mode::Enforce).await;
    let get = || {
        request("GET", "http://orders.shop/orders/1")
            .body(empty())
            .unwrap()
    };
    let started = std::time::Instant::now();
    let (mut idle, idle_ended) = h2c_client_watched(s.web.addr).await;
    let (mut busy, busy_ended) = h2c_client_watched(s.web.addr).await;
    assert_eq!(send(&mut idle, get()).await.0, 200);
    for _ in 0..8 {
        let (status, _, text) = send(&mut busy, get()).await;
        assert_eq!(status, 200, "{text}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(3), idle_ended)
        .await
        .expect("the idle connection is still open after 11 s")
        .unwrap();
    let after = ended.duration_since(started);
    assert!(
        after >= std::time::Duration::from_secs(5) && after < std::time::Duration::from_secs(8),
        "the idle connection ended after {after:?}, not after its 5 s idle time"
    );
    assert!(idle.is_closed());
    // The busy one, used every second, is still open and still answers.
    assert!(!busy.is_closed() && !busy_ended.is_finished());
    assert_eq!(send(&mut busy, get()).await.0, 200);
}
