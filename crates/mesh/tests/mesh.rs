//! The mesh proxy on loopback with real TLS: calls through both proxies, and every attack the
//! issue names, each asserting the status, the message the caller sees and the audit entry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;
use ringfence_audit::Decision;
use ringfence_core::{Clock, SystemClock, TrustDomain};
use ringfence_identity::txn::{MintRequest, TokenService};
use ringfence_policy::{AccessPolicy, Mode};
use support::*;
use tokio::io::AsyncWriteExt;

const POLICY: &str = r#"
@id("web-reads-orders")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action in Action::"http",
    resource == Service::"orders.shop"
) when { context.path like "/orders*" };

@id("checkout-for-users")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action == Action::"POST",
    resource == Service::"orders.shop"
) when { context has user && context.user.sub == "alice" && context.path == "/checkout" };

@id("admin-never")
forbid(principal, action, resource == Service::"orders.shop")
    when { context has path && context.path like "/admin*" };
"#;

fn policy(mode: Mode) -> AccessPolicy {
    AccessPolicy::parse(POLICY, mode, false).unwrap()
}

struct Setup {
    world: World,
    orders: Proxy,
    web: Proxy,
}

async fn setup(mode: Mode) -> Setup {
    let world = World::new();
    let backend = echo_backend().await;
    let orders = world.inbound(ORDERS, policy(mode), backend).await;
    let web = world.outbound(WEB, &[("orders.shop", orders.addr)]).await;
    Setup { world, orders, web }
}

#[tokio::test]
async fn a_permitted_call_reaches_the_service_with_its_verified_caller() {
    let s = setup(Mode::Enforce).await;
    let (status, text) = raw_plain(
        s.web.addr,
        &get(
            "/orders/%61b",
            "orders.shop",
            "ringfence-caller: spiffe://example.org/ns/shop/svc/admin\r\n",
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("GET /orders/ab\n"),
        "normal path forwarded: {text}"
    );
    assert!(
        text.contains(&format!("ringfence-caller: {WEB}\n")),
        "{text}"
    );
    assert!(
        !text.contains("svc/admin"),
        "a caller-set ringfence-caller is dropped: {text}"
    );
    let m = s.orders.mesh.telemetry().render();
    assert!(
        m.contains(&format!("ringfence_mesh_requests_total{{caller=\"{WEB}\",callee=\"orders.shop\",decision=\"allow\",code=\"200\"}} 1")),
        "{m}"
    );
    audited(&s.orders.audit, |e| {
        e.action == "mesh.request" && e.decision == Decision::Allow
    })
    .await;
}

#[tokio::test]
async fn a_request_no_policy_permits_is_denied_and_audited() {
    let s = setup(Mode::Enforce).await;
    let (status, text) = raw_plain(s.web.addr, &get("/admin", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    // The caller learns that the policy denied it, not which policy or how it is built: that
    // is the audit log's.
    assert!(
        text.contains("ringfence: denied by the service's access policy"),
        "{text}"
    );
    assert!(!text.contains("admin-never"), "{text}");
    let e = audited(&s.orders.audit, |e| e.decision == Decision::Deny).await;
    assert_eq!(e.actor.as_str(), WEB);
    assert_eq!(e.target, "orders.shop GET /admin");
    assert_eq!(e.reason, "denied: forbidden by admin-never");
    let (status, text) = raw_plain(s.web.addr, &get("/stock", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert!(
        text.contains("ringfence: denied by the service's access policy"),
        "{text}"
    );
    let e = audited(&s.orders.audit, |e| e.target == "orders.shop GET /stock").await;
    assert_eq!(
        e.reason,
        "denied: no policy permits spiffe://example.org/ns/shop/svc/web to GET /stock on orders.shop"
    );
    let m = s.orders.mesh.telemetry().render();
    assert!(m.contains("decision=\"deny\",code=\"403\"} 2"), "{m}");
}

/// A caller that skips its own proxy and speaks to the inbound side directly.
async fn direct(s: &Setup, bytes: &[u8]) -> (u16, String) {
    let cfg = client_tls(s.world.pki.svid(WEB), ORDERS);
    raw_mtls(s.orders.addr, cfg, bytes).await.unwrap()
}

async fn assert_refused(s: &Setup, bytes: &[u8], status: u16, message: &str) {
    let (got, text) = direct(s, bytes).await;
    assert_eq!(got, status, "{}: {text}", String::from_utf8_lossy(bytes));
    assert!(
        text.contains(&format!("ringfence: {message}")),
        "{}: {text}",
        String::from_utf8_lossy(bytes)
    );
    let e = audited(&s.orders.audit, |e| e.reason == message).await;
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(e.actor.as_str(), WEB);
    assert_eq!(
        e.details.get("status").map(String::as_str),
        Some(status.to_string().as_str())
    );
}

#[tokio::test]
async fn double_slash() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        &get("//admin", "orders.shop", ""),
        400,
        "empty path segment ('//'): send each '/' once",
    )
    .await;
}

#[tokio::test]
async fn encoded_slash_upper_and_lower_case() {
    let s = setup(Mode::Enforce).await;
    let m = "escaped '/' (%2F) in the path: it would split differently behind the proxy";
    assert_refused(&s, &get("/%2Fadmin", "orders.shop", ""), 400, m).await;
    assert_refused(&s, &get("/%2fadmin", "orders.shop", ""), 400, m).await;
}

#[tokio::test]
async fn dot_segments() {
    let s = setup(Mode::Enforce).await;
    let m = "dot segment ('.' or '..') in the path: send the path it resolves to";
    assert_refused(&s, &get("/admin/../admin", "orders.shop", ""), 400, m).await;
    assert_refused(&s, &get("/./admin", "orders.shop", ""), 400, m).await;
    assert_refused(&s, &get("/orders/%2e%2e/admin", "orders.shop", ""), 400, m).await;
}

#[tokio::test]
async fn backslash() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        &get("\\admin", "orders.shop", ""),
        400,
        "request target must be a path starting with '/' (absolute-form and '*' are not accepted)",
    )
    .await;
    assert_refused(
        &s,
        &get("/orders\\..\\admin", "orders.shop", ""),
        400,
        "'\\' in the path: some servers read it as '/'",
    )
    .await;
}

#[tokio::test]
async fn fragment() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        &get("/admin#x", "orders.shop", ""),
        400,
        "'#' in the request target: a fragment is never sent to a server",
    )
    .await;
}

#[tokio::test]
async fn path_parameter() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        &get("/admin;x", "orders.shop", ""),
        400,
        "';' in the path: path parameters are not accepted",
    )
    .await;
}

#[tokio::test]
async fn nul_in_the_path() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        &get("/orders%00/admin", "orders.shop", ""),
        400,
        "escaped NUL (%00) in the path",
    )
    .await;
}

#[tokio::test]
async fn lowercase_and_unknown_methods() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        b"get /orders HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
        405,
        "method \"get\" is not allowed: methods are case-sensitive, send \"GET\"",
    )
    .await;
    assert_refused(
        &s,
        b"PROPFIND /orders HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
        405,
        "method \"PROPFIND\" is not allowed: use GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS",
    )
    .await;
}

#[tokio::test]
async fn host_case_variants_and_duplicates() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        &get("/orders", "Orders.Shop", ""),
        421,
        "Host \"Orders.Shop\" is not this service's name \"orders.shop\" (names are compared exactly: send it in lower case)",
    )
    .await;
    assert_refused(
        &s,
        &get("/orders", "ORDERS.SHOP:443", ""),
        421,
        "Host \"ORDERS.SHOP:443\" is not this service's name \"orders.shop\" (names are compared exactly: send it in lower case)",
    )
    .await;
    assert_refused(
        &s,
        &get("/orders", "orders.shop", "Host: admin.shop\r\n"),
        400,
        "more than one host field",
    )
    .await;
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding() {
    let s = setup(Mode::Enforce).await;
    assert_refused(
        &s,
        b"POST /orders HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "conflicting Content-Length and Transfer-Encoding: send one of them",
    )
    .await;
    assert_refused(
        &s,
        b"POST /orders HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        400,
        "more than one Content-Length",
    )
    .await;
}

#[tokio::test]
async fn oversized_headers() {
    let s = setup(Mode::Enforce).await;
    let big = format!("x-big: {}\r\n", "a".repeat(20_000));
    let (status, text) = direct(&s, &get("/orders", "orders.shop", &big)).await;
    assert_eq!(status, 431, "{text}");
    assert!(
        text.contains("ringfence: request head larger than 16384 bytes"),
        "{text}"
    );
    audited(&s.orders.audit, |e| {
        e.reason == "request head larger than 16384 bytes"
    })
    .await;
}

/// Connects to the inbound side with `material` and returns what the TLS layer said.
async fn handshake(s: &Setup, material: ringfence_identity::workload_api::X509Material) -> String {
    let cfg = client_tls(material, ORDERS);
    match raw_mtls(s.orders.addr, cfg, &get("/orders", "orders.shop", "")).await {
        Ok((status, text)) => format!("answered {status}: {text}"),
        Err(e) => e,
    }
}

async fn assert_handshake_refused(
    s: &Setup,
    material: ringfence_identity::workload_api::X509Material,
    audit_reason: &str,
) {
    let said = handshake(s, material).await;
    assert!(
        said.contains("alert") || said.contains("closed"),
        "the client sees the TLS refusal: {said}"
    );
    let e = audited(&s.orders.audit, |e| {
        e.action == "mesh.handshake" && e.reason.contains(audit_reason)
    })
    .await;
    assert_eq!(e.decision, Decision::Deny);
    assert_eq!(e.actor.as_str(), ORDERS);
}

#[tokio::test]
async fn a_certificate_from_another_trust_domain() {
    let s = setup(Mode::Enforce).await;
    // A CA that calls itself example.org too, with the same name as the real one: the chain
    // is found by name and its signature fails. The attacker's client trusts our bundle.
    let other = Pki::new("example.org");
    let mut forged = other.svid(WEB);
    forged.bundle_der = s.world.pki.ca_der.clone();
    assert_handshake_refused(&s, forged, "BadSignature").await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates() {
    let s = setup(Mode::Enforce).await;
    let mut leaf = Leaf::new(WEB);
    leaf.not_before = now_secs() - 7200;
    leaf.not_after = now_secs() - 3600;
    assert_handshake_refused(&s, s.world.pki.leaf(leaf), "Expired").await;
    let mut leaf = Leaf::new(WEB);
    leaf.not_before = now_secs() + 3600;
    leaf.not_after = now_secs() + 7200;
    assert_handshake_refused(&s, s.world.pki.leaf(leaf), "NotValidYet").await;
}

#[tokio::test]
async fn uri_san_case_and_nul() {
    let s = setup(Mode::Enforce).await;
    // The trust domain in upper case is not a valid SPIFFE ID at all.
    assert_handshake_refused(
        &s,
        s.world.pki.svid("spiffe://EXAMPLE.org/ns/shop/svc/web"),
        "no single valid SPIFFE ID",
    )
    .await;
    assert_handshake_refused(
        &s,
        s.world
            .pki
            .svid("spiffe://example.org/ns/shop/svc/web\0.evil"),
        "no single valid SPIFFE ID",
    )
    .await;
    // A path in another case is another workload, which no policy permits.
    let cfg = client_tls(
        s.world.pki.svid("spiffe://example.org/ns/shop/svc/WEB"),
        ORDERS,
    );
    let (status, text) = raw_mtls(s.orders.addr, cfg, &get("/orders", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("ringfence: denied by the service's access policy"),
        "{text}"
    );
    let e = audited(&s.orders.audit, |e| {
        e.actor.as_str() == "spiffe://example.org/ns/shop/svc/WEB"
    })
    .await;
    assert!(
        e.reason
            .starts_with("denied: no policy permits spiffe://example.org/ns/shop/svc/WEB"),
        "{}",
        e.reason
    );
}

#[tokio::test]
async fn a_certificate_without_the_client_auth_eku() {
    let s = setup(Mode::Enforce).await;
    let mut leaf = Leaf::new(WEB);
    leaf.ekus = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_handshake_refused(&s, s.world.pki.leaf(leaf), "RequiredEkuNotFound").await;
}

#[tokio::test]
async fn the_outbound_side_takes_absolute_form_as_a_proxy_client_sends_it() {
    let s = setup(Mode::Enforce).await;
    // With and without Host, as HTTP_PROXY clients send it: the service sees origin form.
    for req in [
        "GET http://orders.shop/orders/%61b HTTP/1.1\r\nHost: orders.shop\r\nProxy-Connection: keep-alive\r\n\r\n",
        "GET HTTP://orders.shop/orders/ab HTTP/1.1\r\n\r\n",
    ] {
        let (status, text) = raw_plain(s.web.addr, req.as_bytes()).await.unwrap();
        assert_eq!(status, 200, "{req}: {text}");
        assert!(text.contains("GET /orders/ab\n"), "{text}");
        assert!(text.contains("host: orders.shop\n"), "{text}");
        assert!(!text.contains("proxy-connection"), "{text}");
        assert!(
            text.contains(&format!("ringfence-caller: {WEB}\n")),
            "{text}"
        );
    }
    // The path goes through the same normalizer; the authority must agree with Host and name
    // a service; no userinfo, no https.
    for (req, status, message) in [
        (
            "GET http://orders.shop//admin HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
            400,
            "ringfence: empty path segment",
        ),
        (
            "GET http://orders.shop/orders/1 HTTP/1.1\r\nHost: admin.shop\r\n\r\n",
            400,
            "ringfence: Host \"admin.shop\" differs from the request target's authority \"orders.shop\"",
        ),
        (
            "GET http://admin@orders.shop/ HTTP/1.1\r\n\r\n",
            400,
            "ringfence: request target authority \"admin@orders.shop\": name the service as <service>.<namespace>",
        ),
        (
            "GET http:///orders HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
            400,
            "ringfence: request target authority \"\"",
        ),
        (
            "GET https://orders.shop/ HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
            400,
            "ringfence: an https:// target through the outbound side: send http://",
        ),
        (
            "GET http://Orders.Shop/ HTTP/1.1\r\n\r\n",
            400,
            "does not name a mesh service <service>.<namespace> (lower case)",
        ),
        (
            "GET http://orders.shop:80x/ HTTP/1.1\r\n\r\n",
            400,
            "ringfence: Host \"orders.shop:80x\": a port is 1 to 5 digits",
        ),
        (
            "GET ftp://orders.shop/ HTTP/1.1\r\nHost: orders.shop\r\n\r\n",
            400,
            "request target must be a path starting with '/'",
        ),
    ] {
        let (got, text) = raw_plain(s.web.addr, req.as_bytes()).await.unwrap();
        assert_eq!(got, status, "{req}: {text}");
        assert!(text.contains(message), "{req}: {text}");
    }
    // None of those reached the callee.
    assert!(
        s.orders
            .audit
            .events()
            .iter()
            .all(|e| e.decision != Decision::Deny),
        "{:#?}",
        s.orders.audit.events()
    );
}

#[tokio::test]
async fn the_outbound_side_checks_the_servers_identity() {
    let world = World::new();
    let backend = echo_backend().await;
    // Something answers at orders' address with another service's SVID.
    let impostor = world
        .inbound(EVIL, AccessPolicy::empty(Mode::Enforce, false), backend)
        .await;
    let web = world.outbound(WEB, &[("orders.shop", impostor.addr)]).await;
    let (status, text) = raw_plain(web.addr, &get("/orders", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains(
            "no endpoint of orders.shop (spiffe://example.org/ns/shop/svc/orders) could be reached"
        ),
        "{text}"
    );
    assert!(text.contains("is not allowed"), "{text}");
    let (status, text) = raw_plain(web.addr, &get("/x", "stock.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no endpoints for stock.shop"), "{text}");
    let (status, text) = raw_plain(web.addr, &get("/x", "127.0.0.1", ""))
        .await
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("does not name a mesh service"), "{text}");
}

#[tokio::test]
async fn a_user_token_passes_through_both_proxies_and_the_policy_sees_the_user() {
    let s = setup(Mode::Enforce).await;
    let post = |extra: String| {
        format!(
            "POST /checkout HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 2\r\n{extra}\r\nhi"
        )
        .into_bytes()
    };
    let (status, text) = raw_plain(s.web.addr, &post(String::new())).await.unwrap();
    assert_eq!(status, 403, "without a user: {text}");
    let token = s.world.mint("alice", WEB);
    let (status, text) = raw_plain(s.web.addr, &post(format!("txn-token: {token}\r\n")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("ringfence-user: alice\n"), "{text}");
    assert!(
        text.contains("ringfence-txn-chain: "),
        "the service gets the chain to pass on: {text}"
    );
    assert!(text.contains("body: 2\n"), "{text}");
    let token = s.world.mint("bob", WEB);
    let (status, text) = raw_plain(s.web.addr, &post(format!("txn-token: {token}\r\n")))
        .await
        .unwrap();
    assert_eq!(status, 403, "bob is not permitted: {text}");
}

async fn assert_ticket_refused(s: &Setup, token: &str, message: &str) {
    let req = format!(
        "POST /checkout HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 0\r\ntxn-token: {token}\r\n\r\n"
    );
    let (status, text) = raw_plain(s.web.addr, req.as_bytes()).await.unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.contains(message), "{text}");
}

fn b64(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn ticket_with_alg_none() {
    let s = setup(Mode::Enforce).await;
    let real = s.world.mint("alice", WEB);
    let forged = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "txntoken+jwt"})),
        b64(&claims(&real))
    );
    assert_ticket_refused(&s, &forged, "ringfence: transaction token refused: algorithm \"none\" is not allowed: only ES256 is accepted").await;
}

#[tokio::test]
async fn ticket_hs256_with_the_public_key_as_secret() {
    use base64::Engine;
    let s = setup(Mode::Enforce).await;
    let real = s.world.mint("alice", WEB);
    let jwks = s.world.tokens.jwks();
    let kid = serde_json::from_str::<serde_json::Value>(&jwks).unwrap()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let input = format!(
        "{}.{}",
        b64(&serde_json::json!({"alg": "HS256", "typ": "txntoken+jwt", "kid": kid})),
        b64(&claims(&real))
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwks.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    let forged = format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    );
    assert_ticket_refused(
        &s,
        &forged,
        "ringfence: transaction token refused: algorithm \"HS256\" is not allowed",
    )
    .await;
}

#[tokio::test]
async fn ticket_expired() {
    let s = setup(Mode::Enforce).await;
    let old = s
        .world
        .tokens
        .mint(
            &MintRequest {
                subject: "alice".into(),
                for_workload: ringfence_core::SpiffeId::parse(WEB).unwrap(),
                purpose: None,
                context: Default::default(),
                ttl: Duration::from_secs(60),
            },
            SystemClock.now().saturating_sub(Duration::from_secs(600)),
        )
        .unwrap();
    assert_ticket_refused(&s, &old, "ringfence: transaction token refused: expired at").await;
}

#[tokio::test]
async fn ticket_for_another_trust_domain() {
    let s = setup(Mode::Enforce).await;
    // The same key, minting for another trust domain.
    let other = TokenService::from_pkcs8(
        TrustDomain::parse("other.org").unwrap(),
        s.world.tokens.pkcs8(),
    )
    .unwrap();
    let token = other
        .mint(
            &MintRequest {
                subject: "alice".into(),
                for_workload: ringfence_core::SpiffeId::parse("spiffe://other.org/ns/shop/svc/web")
                    .unwrap(),
                purpose: None,
                context: Default::default(),
                ttl: Duration::from_secs(60),
            },
            SystemClock.now(),
        )
        .unwrap();
    assert_ticket_refused(&s, &token, "ringfence: transaction token refused: aud \"spiffe://other.org\" is not \"spiffe://example.org\"").await;
}

#[tokio::test]
async fn ticket_signed_by_an_unknown_key() {
    let s = setup(Mode::Enforce).await;
    let stranger = TokenService::generate(s.world.pki.td.clone()).unwrap();
    let token = stranger
        .mint(
            &MintRequest {
                subject: "alice".into(),
                for_workload: ringfence_core::SpiffeId::parse(WEB).unwrap(),
                purpose: None,
                context: Default::default(),
                ttl: Duration::from_secs(60),
            },
            SystemClock.now(),
        )
        .unwrap();
    assert_ticket_refused(
        &s,
        &token,
        "ringfence: transaction token refused: signed by unknown key",
    )
    .await;
}

#[tokio::test]
async fn ticket_replayed_from_another_chain() {
    let s = setup(Mode::Enforce).await;
    let token = s.world.mint("alice", WEB);
    // A legitimate call: the service sees the token and web's link.
    let req = format!(
        "POST /checkout HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 0\r\ntxn-token: {token}\r\n\r\n"
    );
    let (status, text) = raw_plain(s.web.addr, req.as_bytes()).await.unwrap();
    assert_eq!(status, 200, "{text}");
    let chain = text
        .lines()
        .find_map(|l| l.strip_prefix("ringfence-txn-chain: "))
        .unwrap()
        .to_owned();
    // evil, holding both, presents them itself.
    let replay = format!(
        "POST /checkout HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 0\r\ntxn-token: {token}\r\nringfence-txn-chain: {chain}\r\n\r\n"
    );
    let cfg = client_tls(s.world.pki.svid(EVIL), ORDERS);
    let (status, text) = raw_mtls(s.orders.addr, cfg, replay.as_bytes())
        .await
        .unwrap();
    assert_eq!(status, 401, "{text}");
    let message = format!(
        "transaction token refused: call chain: the last link is from {WEB} but {EVIL} presented the token"
    );
    assert!(text.contains(&message), "{text}");
    let e = audited(&s.orders.audit, |e| e.reason == message).await;
    assert_eq!(e.actor.as_str(), EVIL);
    // ... or through its own proxy, which adds evil's link after web's.
    let evil = s
        .world
        .outbound(EVIL, &[("orders.shop", s.orders.addr)])
        .await;
    let (status, text) = raw_plain(evil.addr, replay.as_bytes()).await.unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains(&format!(
            "link 2 is from {EVIL} but the token was held by {ORDERS}"
        )),
        "{text}"
    );
    // A token without any chain, sent directly.
    let bare = format!(
        "POST /checkout HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 0\r\ntxn-token: {token}\r\n\r\n"
    );
    let (status, text) = direct(&s, bare.as_bytes()).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("call chain: no links"), "{text}");
}

#[tokio::test]
async fn dry_run_lets_it_through_and_records_the_would_deny() {
    let s = setup(Mode::DryRun).await;
    let (status, text) = raw_plain(s.web.addr, &get("/stock", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let e = audited(&s.orders.audit, |e| e.decision == Decision::WouldDeny).await;
    assert!(
        e.reason
            .starts_with("dry-run, would deny: no policy permits"),
        "{e:?}"
    );
    let m = s.orders.mesh.telemetry().render();
    assert!(
        m.contains("decision=\"dry-run-deny\",code=\"200\"} 1"),
        "{m}"
    );
}

async fn one(tcp: &mut tokio::net::TcpStream) -> String {
    tcp.write_all(&get("/orders/1", "orders.shop", ""))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(tcp, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_policy_update_applies_to_a_live_connection_at_its_next_request() {
    let s = setup(Mode::Enforce).await;
    let mut tcp = tokio::net::TcpStream::connect(s.web.addr).await.unwrap();
    assert!(one(&mut tcp).await.starts_with("HTTP/1.1 200"));
    s.orders.mesh.policy().replace(
        AccessPolicy::parse(
            r#"@id("only-health") permit(principal, action, resource == Service::"orders.shop") when { context.path == "/health" };"#,
            Mode::Enforce,
            false,
        )
        .unwrap(),
    );
    let text = one(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
}

#[tokio::test]
async fn svid_rotation_keeps_connections_and_new_ones_get_the_new_certificate() {
    let s = setup(Mode::Enforce).await;
    let cfg = client_tls(s.world.pki.svid(WEB), ORDERS);
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(s.orders.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(
                rustls::pki_types::ServerName::try_from("orders.shop").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    };
    let served = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let mut old = connect().await;
    let before = served(&old);
    s.orders
        .material
        .send(Some(s.world.pki.svid(ORDERS)))
        .unwrap();
    let fresh = connect().await;
    assert_ne!(
        served(&fresh),
        before,
        "a new connection gets the rotated SVID"
    );
    old.write_all(&get("/orders/1", "orders.shop", ""))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut old, &mut buf)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the old connection still works"
    );
}

#[tokio::test]
async fn default_deny_closes_services_no_policy_names() {
    let world = World::new();
    let backend = echo_backend().await;
    let open = world
        .inbound(ORDERS, AccessPolicy::empty(Mode::Enforce, false), backend)
        .await;
    let cfg = client_tls(world.pki.svid(WEB), ORDERS);
    let (status, _) = raw_mtls(open.addr, cfg.clone(), &get("/x", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let closed = world
        .inbound(ORDERS, AccessPolicy::empty(Mode::Enforce, true), backend)
        .await;
    let (status, text) = raw_mtls(closed.addr, cfg, &get("/x", "orders.shop", ""))
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("ringfence: denied by the service's access policy"),
        "{text}"
    );
    let e = audited(&closed.audit, |e| e.decision == Decision::Deny).await;
    assert!(
        e.reason
            .contains("no service-access policy names orders.shop and default-deny is on"),
        "{}",
        e.reason
    );
}
