//! The mesh with the real binary and real tools: SVIDs for two services made with openssl and
//! `ringfence identity issue`, `ringfence server` as the token service, two `ringfence mesh`
//! processes (the caller's outbound side, the callee's inbound side) and curl as the
//! application. A call with a user token goes through; one without is denied and audited; the
//! outbound normalizer refuses `//admin`; the metrics count it all; a policy file rewritten
//! under a running proxy applies at once; bad configuration is refused with its reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringfence_test_util::free_port;
use ringfence_test_util::process::{Proc, wait_for};

const WEB: &str = "spiffe://example.org/ns/shop/svc/web";
const ORDERS: &str = "spiffe://example.org/ns/shop/svc/orders";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringfence")
}

fn run(data: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(data: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(data, args);
    assert_eq!(code, 0, "ringfence {}: {out}{err}", args.join(" "));
    out
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key made by openssl, its CSR for `id`, the SVID from `ringfence identity issue`.
fn svid_dir(data: &Path, dir: &Path, id: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = dir.join("key.pem");
    let csr = dir.join("csr.pem");
    sh(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key));
    sh(Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(&key)
        .args([
            "-subj",
            "/O=ringfence-test",
            "-addext",
            &format!("subjectAltName=URI:{id}"),
            "-out",
        ])
        .arg(&csr));
    let cert = ok(
        data,
        &[
            "identity",
            "issue",
            "--csr",
            csr.to_str().unwrap(),
            "--spiffe-id",
            id,
        ],
    );
    let svid = dir.join("svid.pem");
    std::fs::write(
        &svid,
        format!("{cert}{}", std::fs::read_to_string(&key).unwrap()),
    )
    .unwrap();
    std::fs::set_permissions(&svid, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join("bundle.pem"),
        ok(data, &["identity", "ca", "bundle"]),
    )
    .unwrap();
}

/// An application behind the inbound side: answers with the request line and fields it got.
fn backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let text = String::from_utf8_lossy(&buf).replace("\r\n", "\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    port
}

/// curl through `proxy` as `Host: orders.shop`; returns (status, body).
fn curl(proxy: u16, method: &str, path: &str, headers: &[String]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--path-as-is",
        "-m",
        "10",
        "-X",
        method,
        "-H",
        "Host: orders.shop",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.args(["-w", "\n%{http_code}"]);
    cmd.arg(format!("http://127.0.0.1:{proxy}{path}"));
    let out = sh(&mut cmd);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

const POLICY: &str = r#"
@id("web-reads-orders")
permit(principal == Workload::"spiffe://example.org/ns/shop/svc/web", action == Action::"GET",
       resource == Service::"orders.shop") when { context.path like "/orders/*" };
@id("checkout-for-admin")
permit(principal == Workload::"spiffe://example.org/ns/shop/svc/web", action == Action::"POST",
       resource == Service::"orders.shop") when { context has user && context.user.sub == "admin" };
"#;

#[test]
fn two_proxies_a_token_service_and_curl() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&data, &["audit", "init"]);
    ok(
        &data,
        &["identity", "ca", "init", "--trust-domain", "example.org"],
    );
    svid_dir(&data, &tmp.path().join("web"), WEB);
    svid_dir(&data, &tmp.path().join("orders"), ORDERS);

    // The control plane, for its token service.
    let api = free_port().unwrap();
    let mut server = Proc::spawn(
        "server",
        tmp.path(),
        Command::new(bin()).arg("--data-dir").arg(&data).args([
            "server",
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--http",
            "127.0.0.1:0",
            "--trust-domain",
            "example.org",
        ]),
    );
    wait_for(Duration::from_secs(20), "the server", || {
        server
            .log()
            .contains("ringfence server: API on")
            .then_some(())
    });
    let remote = |args: &[&str]| {
        let mut all = vec!["--server".to_owned(), format!("127.0.0.1:{api}")];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        ok(&data, &all)
    };
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, remote(&["euc", "keys"])).unwrap();
    let token = remote(&["euc", "mint", "--for", WEB, "--purpose", "checkout"])
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let (code, _, err) = run(&data, &["euc", "mint", "--for", WEB]);
    assert_ne!(code, 0);
    assert!(err.contains("--user is required without --server"), "{err}");

    // The callee's inbound side and the caller's outbound side.
    let app = backend();
    let inbound = free_port().unwrap();
    let outbound = free_port().unwrap();
    let metrics = free_port().unwrap();
    let policy = tmp.path().join("access.cedar");
    std::fs::write(&policy, POLICY).unwrap();
    let orders_cfg = tmp.path().join("orders.toml");
    std::fs::write(
        &orders_cfg,
        format!(
            "[identity]\nsvid_dir = \"orders\"\n[inbound]\nlisten = \"127.0.0.1:{inbound}\"\nforward = \"127.0.0.1:{app}\"\n[policy]\nfile = \"access.cedar\"\n[tokens]\njwks = \"jwks.json\"\n[telemetry]\nmetrics = \"127.0.0.1:{metrics}\"\naudit_spool = \"orders-audit.redb\"\nallow_sample = 1\n"
        ),
    )
    .unwrap();
    let web_cfg = tmp.path().join("web.toml");
    std::fs::write(
        &web_cfg,
        format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:{outbound}\"\n[endpoints]\n\"orders.shop\" = [\"127.0.0.1:{inbound}\"]\n[tokens]\njwks = \"jwks.json\"\n"
        ),
    )
    .unwrap();
    assert!(ok(&data, &["mesh", orders_cfg.to_str().unwrap(), "--check"]).contains(": ok"));
    let mut orders = Proc::spawn(
        "orders-mesh",
        tmp.path(),
        Command::new(bin()).args(["-v", "mesh"]).arg(&orders_cfg),
    );
    let web = Proc::spawn(
        "web-mesh",
        tmp.path(),
        Command::new(bin()).arg("mesh").arg(&web_cfg),
    );
    wait_for(Duration::from_secs(10), "the proxies", || {
        (orders.log().contains("inbound mTLS on") && web.log().contains("outbound on"))
            .then_some(())
    });

    let (code, body) = curl(outbound, "GET", "/orders/1", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("ringfence-caller: {WEB}")), "{body}");
    let (code, body) = curl(
        outbound,
        "POST",
        "/checkout",
        &[format!("txn-token: {token}")],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ringfence-user: admin"), "{body}");
    let (code, body) = curl(outbound, "POST", "/checkout", &[]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("ringfence: denied by the service's access policy"),
        "{body}"
    );
    // An unmodified client pointed at the outbound side as its HTTP proxy (HTTP_PROXY, -x).
    let via_proxy = sh(Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-x",
            &format!("http://127.0.0.1:{outbound}"),
        ])
        .args(["-w", "\n%{http_code}", "http://orders.shop/orders/2"]));
    assert!(via_proxy.ends_with("\n200"), "{via_proxy}");
    assert!(via_proxy.contains("GET /orders/2 HTTP/1.1"), "{via_proxy}");
    assert!(
        via_proxy.contains(&format!("ringfence-caller: {WEB}")),
        "{via_proxy}"
    );
    let (code, body) = curl(outbound, "GET", "//admin", &[]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("ringfence: empty path segment"), "{body}");

    let scrape = sh(Command::new("curl").args([
        "-s",
        "-m",
        "5",
        &format!("http://127.0.0.1:{metrics}/metrics"),
    ]));
    for line in [
        format!(
            "ringfence_mesh_requests_total{{caller=\"{WEB}\",callee=\"orders.shop\",decision=\"allow\",code=\"200\"}} 3"
        ),
        format!(
            "ringfence_mesh_requests_total{{caller=\"{WEB}\",callee=\"orders.shop\",decision=\"deny\",code=\"403\"}} 1"
        ),
    ] {
        assert!(scrape.contains(&line), "{line} in:\n{scrape}");
    }

    // A policy rewritten under the running proxy applies without a restart.
    std::fs::write(&policy, r#"permit(principal, action, resource == Service::"orders.shop") when { context.path == "/health" };"#).unwrap();
    wait_for(Duration::from_secs(10), "the new policy", || {
        (curl(outbound, "GET", "/orders/1", &[]).0 == 403).then_some(())
    });
    assert!(
        orders.log().contains("service-access policy reloaded"),
        "{}",
        orders.log()
    );
    // A broken one is not loaded; the last good one stays.
    std::fs::write(&policy, "permit(").unwrap();
    wait_for(
        Duration::from_secs(10),
        "the broken policy to be refused",
        || {
            orders
                .log()
                .contains("service-access policy not reloaded")
                .then_some(())
        },
    );
    assert_eq!(curl(outbound, "GET", "/health", &[]).0, 200);

    // Bad configuration says what is wrong.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"0.0.0.0:1\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&data, &["mesh", bad.to_str().unwrap(), "--check"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("outbound.listen 0.0.0.0:1 is not a loopback address"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[identity]\nsvid_dir = \"web\"\nsvid_file = \"x\"\n[outbound]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (_, _, err) = run(&data, &["mesh", bad.to_str().unwrap(), "--check"]);
    assert!(err.contains("unknown field `svid_file`"), "{err}");
    std::fs::write(&bad, format!("[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:1\"\n[policy]\nfile = \"{}\"\n", policy.display())).unwrap();
    let (code, _, err) = run(&data, &["mesh", bad.to_str().unwrap(), "--check"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("service-access policy does not parse"),
        "{err}"
    );

    // Every denial reached the proxy's audit spool.
    orders.stop();
    server.stop();
    let events = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let spool = ringfence_audit::Spool::open(&tmp.path().join("orders-audit.redb"))
            .await
            .unwrap();
        let sink = ringfence_audit::MemorySink::default();
        spool.forward_to(&sink).await.unwrap();
        sink.events()
    });
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.action == "mesh.request" && e.decision == ringfence_audit::Decision::Deny)
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| e.actor.as_str() == WEB && e.target == "orders.shop POST /checkout"),
        "{events:#?}"
    );
    assert!(
        denied
            .iter()
            .any(|e| e.target == "orders.shop GET /orders/1"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.decision == ringfence_audit::Decision::Allow),
        "allows are sampled (1 in 1 here)"
    );
}
