//! The mesh's outbound side finding services through the real control plane: the control
//! plane over a real Store and audit log serves its gRPC API; jobs of `orders.shop` are
//! admitted and placed on a registered machine; the machine's report that a task runs makes it
//! an endpoint; SVIDs come from the CA through the audited issuance path. `ringfence mesh`
//! configurations with `[discovery]` then route calls to the inbound proxies at the discovered
//! ports, balance across them, skip an endpoint whose proxy holds another service's SVID, and
//! follow a task that stops, all without a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfence_admission::verdict::Request;
use ringfence_audit::note::{Signer, TYPE_ED25519};
use ringfence_audit::{AuditLog, Decision, Event, LogOptions, LogReader};
use ringfence_bab::Gate;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_bab::notify::{NotifyConfig, Outbox};
use ringfence_controlplane::{
    ControlPlane, HostTrust, JobState, Registration, Settings, TaskReport,
};
use ringfence_core::{Clock, MachineId, SpiffeId, SystemClock, TrustDomain};
use ringfence_identity::{Ca, CaSet, IssuanceService};
use ringfence_mesh::config::{Bound, MeshConfig};
use ringfence_sched::Resources;
use ringfence_store::{RedbOptions, RedbStore, Store};
use ringfence_test_util::free_port;

const TD: &str = "acme.test";
const MACHINE: &str = "node-1";

/// A backend that answers every request with its own name.
fn backend(name: &'static str) -> u16 {
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
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                name.len()
            );
        }
    });
    port
}

/// GET `/` of `host` through the outbound proxy at `proxy`: (status, body).
async fn get(proxy: SocketAddr, host: &str) -> (u16, String) {
    let host = host.to_owned();
    tokio::task::spawn_blocking(move || get_blocking(proxy, &host))
        .await
        .unwrap()
}

fn get_blocking(proxy: SocketAddr, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

fn manifest(job: &str, service: &str, mesh_port: u16) -> Vec<u8> {
    format!(
        "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: {job}, namespace: shop}}\nspec:\n  service: {service}\n  environment: development\n  image: registry.acme.test/shop/{service}@sha256:{}\n  ring: hardened\n  ports: [{{name: http, port: 8080}}, {{name: mesh, port: {mesh_port}}}]\n",
        "ab".repeat(32)
    )
    .into_bytes()
}

fn allow_all(service: &str) -> String {
    format!(
        "apiVersion: ringfence.dev/v1\nkind: ServicePolicy\nmetadata: {{name: {service}-dev}}\nspec:\n  namespace: shop\n  service: {service}\n  environments: [development]\n  allowAll: {{justification: test service without data, approvedBy: carol}}\n"
    )
}

struct Plane {
    cp: ControlPlane,
    store: Arc<dyn Store>,
    issuance: Arc<IssuanceService>,
    api: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn plane(dir: &Path) -> Plane {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_in(&dir.join("store"), RedbOptions::default()).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log = Arc::new(
        AuditLog::open(
            Arc::clone(&store),
            Signer::generate("acme.test/audit", TYPE_ED25519).unwrap(),
            LogOptions {
                origin: "acme.test/audit".into(),
                ..LogOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let gate = Gate::new(
        Arc::clone(&store),
        log.clone(),
        Outbox::open(&dir.join("outbox"), NotifyConfig::default()).unwrap(),
        Arc::clone(&clock),
        SpiffeId::parse("spiffe://acme.test/ringfence/admission").unwrap(),
    );
    let td = TrustDomain::parse(TD).unwrap();
    let cp = ControlPlane::new(
        Arc::clone(&store),
        log.clone(),
        gate,
        Arc::clone(&clock),
        Settings::new(td.clone()),
    )
    .unwrap();
    let ca = Arc::new(CaSet::new(
        Ca::generate(td.clone(), clock.now(), Duration::from_secs(86_400)).unwrap(),
    ));
    let issuance = Arc::new(
        IssuanceService::new(
            Arc::clone(&ca),
            cp.authority(),
            log.clone(),
            Arc::clone(&clock),
        )
        .unwrap(),
    );
    let parts = ringfence_controlplane::server::ServerParts {
        cp: cp.clone(),
        store: Arc::clone(&store),
        audit: log,
        ca,
        artifacts: ArtifactStore::open(&dir.join("artifacts")).unwrap(),
        scratch: dir.join("scratch"),
        people: None,
        clock,
        tokens: Arc::new(
            ringfence_controlplane::server::token_service(&dir.join("identity"), &td).unwrap(),
        ),
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(ringfence_controlplane::server::serve(
        parts,
        "127.0.0.1:0".parse().unwrap(),
        None,
        None,
        bound_tx,
        stop_rx,
    ));
    let api = bound_rx.await.unwrap().api;
    cp.register(
        &Registration {
            machine: MACHINE.into(),
            capacity: Resources {
                cpu_milli: 4000,
                memory_mib: 4096,
            },
            address: "127.0.0.1".into(),
        },
        HostTrust::Development,
    )
    .await
    .unwrap();
    for s in ["orders", "web"] {
        cp.gate()
            .apply_policy(&allow_all(s), "alice")
            .await
            .unwrap();
    }
    Plane {
        cp,
        store,
        issuance,
        api,
        _stop: stop,
    }
}

impl Plane {
    /// The central log's events.
    async fn events(&self) -> Vec<Event> {
        LogReader::open(Arc::clone(&self.store), &LogOptions::default().prefix)
            .await
            .unwrap()
            .entries(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, b)| Event::decode(&b).unwrap())
            .collect()
    }

    /// Submits `job` of `service` (placed on the one machine) and reports its task running.
    async fn run_job(&self, job: &str, service: &str, mesh_port: u16) -> String {
        let rec = self
            .cp
            .submit(
                &manifest(job, service, mesh_port),
                &[],
                &Request::Normal,
                "alice",
            )
            .await
            .unwrap();
        assert_eq!(rec.state, JobState::Placed, "{}", rec.verdict);
        self.cp.refresh().await.unwrap();
        let task = format!("shop.{service}.{job}.0");
        self.report(&[(&task, "running")]).await;
        task
    }

    async fn report(&self, tasks: &[(&str, &str)]) {
        let reports: Vec<TaskReport> = tasks
            .iter()
            .map(|(t, state)| TaskReport {
                task: (*t).to_owned(),
                state: (*state).to_owned(),
                detail: String::new(),
                restarts: 0,
                svid: true,
            })
            .collect();
        self.cp.report(MACHINE, &reports).await.unwrap();
    }

    /// The SVID of `service` from the CA (the task of that service is placed on the machine),
    /// written as `ringfence mesh` reads it.
    async fn svid_dir(&self, dir: &Path, service: &str) {
        let id = SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/svc/{service}")).unwrap();
        let (m, _) = ringfence_identity::workload_api::obtain(
            &self.issuance,
            &MachineId::parse(MACHINE).unwrap(),
            &id,
            &SystemClock,
        )
        .await
        .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        ringfence_identity::files::save(dir, &m).unwrap();
    }
}

async fn mesh(dir: &Path, toml: &str) -> Bound {
    let cfg = MeshConfig::parse(toml, dir).unwrap();
    cfg.check().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Err(e) = ringfence_mesh::config::run(cfg, Some(tx)).await {
            panic!("mesh: {e}");
        }
    });
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .unwrap()
        .unwrap()
}

/// Waits until `f` holds, asking at most 100 times.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..100 {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_follow_the_control_planes_discovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = plane(dir).await;

    // Two tasks of orders.shop, each with an inbound proxy on its job's `mesh` port, and the
    // caller web.shop.
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let task_a = p.run_job("orders-a", "orders", port_a).await;
    let task_b = p.run_job("orders-b", "orders", port_b).await;
    let web_task = p.run_job("web-1", "web", free_port().unwrap()).await;
    p.svid_dir(&dir.join("orders"), "orders").await;
    p.svid_dir(&dir.join("web"), "web").await;
    for (port, name) in [(port_a, "orders-a"), (port_b, "orders-b")] {
        let app = backend(name);
        mesh(
            dir,
            &format!(
                "[identity]\nsvid_dir = \"orders\"\n[inbound]\nlisten = \"127.0.0.1:{port}\"\nforward = \"127.0.0.1:{app}\"\n"
            ),
        )
        .await;
    }
    let web = mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[discovery]\ncontrol_plane = \"{}\"\n",
            p.api
        ),
    )
    .await;
    let out = web.outbound.unwrap();

    // Both endpoints are used: balanced round robin over what discovery sent.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, body) = get(out, "orders.shop").await;
        assert_eq!(code, 200, "{body}");
        seen.insert(body);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["orders-a", "orders-b"]
    );

    // A service nobody runs has no endpoints; the caller is told so.
    let (code, body) = get(out, "billing.shop").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("ringfence: no endpoints for billing.shop"),
        "{body}"
    );

    // An endpoint listed for orders whose proxy holds web's SVID is never used for orders:
    // the server's SPIFFE ID is checked, whatever discovery said.
    let port_x = free_port().unwrap();
    let impostor = backend("impostor");
    mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"web\"\n[inbound]\nlisten = \"127.0.0.1:{port_x}\"\nforward = \"127.0.0.1:{impostor}\"\n"
        ),
    )
    .await;
    let task_x = p.run_job("orders-x", "orders", port_x).await;
    p.cp.stop("shop", "orders-b", "alice").await.unwrap();
    // Now orders-a and the impostor are listed; every call lands on orders-a.
    eventually("discovery to drop orders-b", async || {
        for _ in 0..3 {
            if get(out, "orders.shop").await.1 != "orders-a" {
                return false;
            }
        }
        true
    })
    .await;
    for _ in 0..4 {
        let (code, body) = get(out, "orders.shop").await;
        assert_eq!((code, body.as_str()), (200, "orders-a"));
    }

    // When the last genuine task stops, the caller hears why nothing answers.
    p.cp.stop("shop", "orders-a", "alice").await.unwrap();
    let mut last = (0, String::new());
    eventually("discovery to drop orders-a", async || {
        last = get(out, "orders.shop").await;
        last.0 == 502
    })
    .await;
    assert!(
        last.1.contains(
            "no endpoint of orders.shop (spiffe://acme.test/ns/shop/svc/orders) could be reached"
        ),
        "{}",
        last.1
    );
    assert!(
        last.1.contains(&format!("127.0.0.1:{port_x}")),
        "{}",
        last.1
    );
    p.cp.stop("shop", "orders-x", "alice").await.unwrap();
    eventually("discovery to drop the impostor", async || {
        get(out, "orders.shop").await.0 == 503
    })
    .await;
    let _ = (task_a, task_b, task_x, web_task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_refusals_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = plane(dir).await;
    p.run_job("web-1", "web", free_port().unwrap()).await;
    p.svid_dir(&dir.join("web"), "web").await;

    // A control plane that is not there: the first call waits a bounded time, then says why.
    let nowhere = free_port().unwrap();
    let web = mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[discovery]\ncontrol_plane = \"127.0.0.1:{nowhere}\"\n"
        ),
    )
    .await;
    let started = Instant::now();
    let (code, body) = get(web.outbound.unwrap(), "orders.shop").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("ringfence: discovery: cannot watch orders.shop:"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Fixed endpoints win over discovery for the services they name: discovery lists
    // orders-1's mesh port, where nothing listens; the fixed one has a proxy.
    p.run_job("orders-1", "orders", free_port().unwrap()).await;
    p.svid_dir(&dir.join("orders"), "orders").await;
    let app = backend("fixed");
    let fixed = mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"orders\"\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:{app}\"\n"
        ),
    )
    .await
    .inbound
    .unwrap();
    let web2 = mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[discovery]\ncontrol_plane = \"{}\"\n[endpoints]\n\"orders.shop\" = [\"{fixed}\"]\n",
            p.api
        ),
    )
    .await;
    let (code, body) = get(web2.outbound.unwrap(), "orders.shop").await;
    assert_eq!((code, body.as_str()), (200, "fixed"));

    // A bad port name is refused when the file is read.
    let err = MeshConfig::parse(
        "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[discovery]\ncontrol_plane = \"127.0.0.1:1\"\nport = \"Mesh Port\"\n",
        dir,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("discovery.port:"), "{err}");
    let err = MeshConfig::parse(
        "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[discovery]\ncontrol_plane = \"127.0.0.1:1\"\nwatch = true\n",
        dir,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `watch`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_denials_reach_the_central_audit_log_and_nothing_else_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = plane(dir).await;
    let mesh_port = free_port().unwrap();
    p.run_job("orders-1", "orders", mesh_port).await;
    p.run_job("web-1", "web", free_port().unwrap()).await;
    p.svid_dir(&dir.join("orders"), "orders").await;
    p.svid_dir(&dir.join("web"), "web").await;

    // orders closes itself to everyone (default deny) and forwards its spool.
    let app = backend("orders");
    mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"orders\"\n[inbound]\nlisten = \"127.0.0.1:{mesh_port}\"\nforward = \"127.0.0.1:{app}\"\n[policy]\ndefault_deny = true\n[telemetry]\naudit_spool = \"orders-audit.redb\"\nforward_to = \"{}\"\n",
            p.api
        ),
    )
    .await;
    let web = mesh(
        dir,
        &format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[discovery]\ncontrol_plane = \"{}\"\n",
            p.api
        ),
    )
    .await;
    let (code, body) = get(web.outbound.unwrap(), "orders.shop").await;
    assert_eq!(code, 403, "{body}");
    let web_id = format!("spiffe://{TD}/ns/shop/svc/web");
    let orders_id = format!("spiffe://{TD}/ns/shop/svc/orders");
    let mut found = None;
    eventually("the denial in the central log", async || {
        found = p.events().await.into_iter().find(|e| {
            e.action == "mesh.request"
                && e.details.get("peer") == Some(&web_id)
                && e.decision == Decision::Deny
        });
        found.is_some()
    })
    .await;
    let e = found.unwrap();
    // The log's actor is the proxy that reported it; the caller it refused is `peer`.
    assert_eq!(e.actor.as_str(), orders_id);
    assert_eq!(
        e.details.get("proxy").map(String::as_str),
        Some(orders_id.as_str())
    );
    assert!(e.reason.contains("default-deny is on"), "{}", e.reason);
    // A burst larger than one forwarded batch (256) arrives whole, each event once.
    for _ in 0..299 {
        assert_eq!(get(web.outbound.unwrap(), "orders.shop").await.0, 403);
    }
    eventually("all 300 denials in the central log", async || {
        p.events()
            .await
            .iter()
            .filter(|e| e.action == "mesh.request" && e.decision == Decision::Deny)
            .count()
            >= 300
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let denials: Vec<String> = p
        .events()
        .await
        .into_iter()
        .filter(|e| e.action == "mesh.request")
        .map(|e| e.id)
        .collect();
    let distinct: std::collections::BTreeSet<&String> = denials.iter().collect();
    assert_eq!(
        (denials.len(), distinct.len()),
        (300, 300),
        "each denial once"
    );

    // Another workload cannot put words in orders' proxy's mouth, nor record anything but
    // mesh events.
    let web_svid = ringfence_identity::files::load(&dir.join("web")).unwrap();
    let (_, rx) = tokio::sync::watch::channel(Some(web_svid));
    let mut node = ringfence_api::pb::node_client::NodeClient::new(
        ringfence_api::transport::control_plane_channel(p.api, rx, Arc::new(SystemClock)).unwrap(),
    );
    let forged = |action: &str, proxy: &str| {
        Event::new(
            SystemClock.now(),
            SpiffeId::parse(&web_id).unwrap(),
            action,
            "GET /",
            Decision::Allow,
            "forged",
        )
        .with_detail("proxy", proxy)
        .encode()
        .unwrap()
    };
    for (event, refusal) in [
        (
            forged("mesh.request", &orders_id),
            format!("event 1: recorded by proxy {orders_id}, but the caller is {web_id}"),
        ),
        (
            forged("agent.task.start", &web_id),
            "event 1: a mesh proxy records only mesh.* actions, not \"agent.task.start\""
                .to_owned(),
        ),
    ] {
        let err = node
            .audit(ringfence_api::pb::AuditRequest {
                events: vec![event],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert_eq!(err.message(), refusal);
    }
    let too_many = vec![forged("mesh.request", &web_id); 257];
    let err = node
        .audit(ringfence_api::pb::AuditRequest { events: too_many })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(p.events().await.iter().all(|e| e.reason != "forged"));
    // A break-glass decision, a date in the future, an oversized event: refused.
    let event = |decision: Decision, time: ringfence_core::UnixTime, reason: String| {
        Event::new(
            time,
            SpiffeId::parse(&web_id).unwrap(),
            "mesh.request",
            "GET /",
            decision,
            reason,
        )
        .with_detail("proxy", &web_id)
        .encode()
        .unwrap()
    };
    let now = SystemClock.now();
    for (bytes, code, refusal) in [
        (
            event(Decision::BreakGlass, now, "x".into()),
            tonic::Code::PermissionDenied,
            "event 1: a mesh proxy records allow, deny or would-deny, not break_glass".to_owned(),
        ),
        (
            event(
                Decision::Deny,
                now.saturating_add(Duration::from_secs(3600)),
                "x".into(),
            ),
            tonic::Code::InvalidArgument,
            "event 1: dated".to_owned(),
        ),
        (
            event(Decision::Deny, now, "x".repeat(20_000)),
            tonic::Code::InvalidArgument,
            "event 1: ".to_owned(),
        ),
    ] {
        let err = node
            .audit(ringfence_api::pb::AuditRequest {
                events: vec![bytes],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().starts_with(&refusal), "{}", err.message());
    }
    // What it may record is its own claim: an event naming a person as the actor is entered
    // with web as the actor and the person as the peer it says it saw.
    let claim = Event::new(
        SystemClock.now(),
        SpiffeId::parse(&format!("spiffe://{TD}/user/alice")).unwrap(),
        "mesh.request",
        "GET /",
        Decision::Allow,
        "forged",
    )
    .with_detail("proxy", &web_id);
    node.audit(ringfence_api::pb::AuditRequest {
        events: vec![claim.encode().unwrap()],
    })
    .await
    .unwrap();
    let got = p
        .events()
        .await
        .into_iter()
        .find(|e| e.reason == "forged")
        .unwrap();
    assert_eq!(got.actor.as_str(), web_id);
    assert_eq!(
        got.details.get("peer").map(String::as_str),
        Some(format!("spiffe://{TD}/user/alice").as_str())
    );

    // One identity offers at most 5,000 events in 10 s, refused ones included: a workload
    // cannot flood the log (the 20th batch of 256 goes over).
    let junk = vec![forged("agent.task.start", &web_id); 256];
    for _ in 0..19 {
        let err = node
            .audit(ringfence_api::pb::AuditRequest {
                events: junk.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    let err = node
        .audit(ringfence_api::pb::AuditRequest { events: junk })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("; at most 5000 per identity: send the rest later"),
        "{}",
        err.message()
    );
    // Another identity's budget is its own: orders' proxy still forwards.
    let (code, _) = get(web.outbound.unwrap(), "orders.shop").await;
    assert_eq!(code, 403);
    eventually("the 301st denial in the central log", async || {
        p.events()
            .await
            .iter()
            .filter(|e| e.action == "mesh.request" && e.decision == Decision::Deny)
            .count()
            >= 301
    })
    .await;

    // A forward_to without a spool is refused when the file is read.
    let err = MeshConfig::parse(
        &format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n[telemetry]\nforward_to = \"{}\"\n",
            p.api
        ),
        dir,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("telemetry.forward_to needs telemetry.audit_spool"),
        "{err}"
    );
}
