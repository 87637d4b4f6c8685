//! The chain across the network, with the real binary: `ringfence server` as one process and
//! two `ringfence agent`s as others, each agent in a network namespace of its own behind a
//! veth pair (two hosts as far as the network goes). People talk to the server through the
//! CLI with `--server`; the attacks go straight at the gRPC API with the certificates an
//! attacker on one machine would hold.
//!
//! One scenario, run on the embedded store and on a 3-member etcd cluster: a compliant job
//! runs and its task holds its SVID (fetched by py-spiffe); a machine asks for a task SVID it
//! does not run and an image it has no task for (refused, audited); join tokens are one-time
//! and bound to their machine; `kill -9` of the control plane loses nothing and the task
//! keeps running with renewed SVIDs through the restarted server; `kill -9` of the agent
//! running the task moves it to the other machine.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

#[path = "../../admission/tests/common/mod.rs"]
mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Fixture;
use ringfence_api::pb;
use ringfence_api::pb::admin_client::AdminClient;
use ringfence_api::pb::node_client::NodeClient;
use ringfence_core::{SystemClock, TrustDomain};
use ringfence_identity::files;
use ringfence_identity::workload_api::X509Material;
use ringfence_provenance::statement::Sha256;
use ringfence_test_util::process::{Proc, wait_for};
use serde_json::Value;

const TD: &str = "acme.test";
const WEB: &str = "spiffe://acme.test/ns/payments/svc/web";
const TASK: &str = "payments.web.web-1.0";
const SVID_TTL_S: u64 = 8;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringfence")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair to the host: `host_ip` on the host's end,
/// `ns_ip` inside, a default route to the host.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    fn new(tag: &str, subnet: u8) -> Self {
        let id = std::process::id() % 100_000;
        let name = format!("rf-{tag}-{id}");
        let host_if = format!("rfh{tag}{id}");
        let ns_if = format!("rfn{tag}{id}");
        let third = u8::try_from(std::process::id() % 250).unwrap();
        let host_ip = format!("10.{subnet}.{third}.1");
        let ns_ip = format!("10.{subnet}.{third}.2");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let n = Self {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &n.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", n.host_ip),
            "dev",
            &n.host_if,
        ]);
        ip(&["link", "set", &n.host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut v = vec!["netns", "exec", n.name.as_str(), "ip"];
            v.extend_from_slice(args);
            ip(&v);
        };
        exec(&["addr", "add", &format!("{}/30", n.ns_ip), "dev", &ns_if]);
        exec(&["link", "set", &ns_if, "up"]);
        exec(&["link", "set", "lo", "up"]);
        exec(&["route", "add", "default", "via", &n.host_ip]);
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

struct Scenario {
    dir: tempfile::TempDir,
    data: PathBuf,
    store: Option<String>,
    listen: SocketAddr,
    f: Fixture,
}

impl Scenario {
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(s) = &self.store {
            cmd.args(["--store", s]);
        }
        let out = cmd
            .args(["--server", &self.listen.to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "ringfence {}: {out}{err}", args.join(" "));
        out
    }

    fn server(&self, name: &str) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(s) = &self.store {
            cmd.args(["--store", s]);
        }
        cmd.args([
            "server",
            "--listen",
            &self.listen.to_string(),
            "--http",
            "127.0.0.1:0",
            "--trust-domain",
            TD,
            "--machine-timeout",
            "3s",
            "--svid-ttl",
            &format!("{SVID_TTL_S}s"),
        ]);
        let p = Proc::spawn(name, self.dir.path(), &mut cmd);
        wait_for(Duration::from_secs(20), "the server to listen", || {
            p.log().contains("ringfence server: API on").then_some(())
        });
        p
    }

    fn agent(&self, ns: &Netns, machine: &str, token: Option<&str>, uid_base: u32) -> Proc {
        // The server's address is on the first namespace's link; the second reaches it
        // through its own link and the host.
        let server = self.listen;
        let root = self.dir.path().join("agents").join(machine);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, bin()])
            .args([
                "--server",
                &server.to_string(),
                "agent",
                "--machine",
                machine,
            ])
            .args(["--trust-domain", TD, "--address", &ns.ns_ip])
            .arg("--root")
            .arg(&root)
            .arg("--bundle")
            .arg(self.data.join("identity").join("bundle.pem"))
            .args(["--uid-base", &uid_base.to_string(), "--uid-count", "16"])
            .args(["--poll", "200ms"])
            // The spool's forwarding is logged at debug: the scenario waits for it.
            .env("RUST_LOG", "info,ringfence_agent::remote=debug");
        if let Some(t) = token {
            cmd.args(["--join-token", t]);
        }
        Proc::spawn(machine, self.dir.path(), &mut cmd)
    }

    fn token(&self, machine: &str) -> String {
        self.ok(&["machine", "token", machine]).trim().to_owned()
    }

    fn job(&self) -> Value {
        let out = self.ok(&["job", "status", "payments/web-1", "--output", "json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// The machine `TASK` runs on with its SVID (waits up to `within`; `logs` for the report
    /// when it does not).
    fn running(&self, within: Duration, not_on: Option<&str>, logs: &dyn Fn() -> String) -> String {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job();
            let t = &j["tasks"][0];
            let s = &t["status"];
            if let Some(placed) = t["placement"]["machine"].as_str()
                && s["machine"] == placed
                && s["report"]["state"] == "running"
                && s["report"]["svid"] == true
                && Some(placed) != not_on
            {
                return placed.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the task does not run with its SVID: {j:#}\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn socket(&self, machine: &str) -> PathBuf {
        self.dir
            .path()
            .join("agents")
            .join(machine)
            .join("run")
            .join("sockets")
            .join(TASK)
            .join("workload.sock")
    }

    fn socket_of(&self, machine: &str, task: &str) -> PathBuf {
        self.dir
            .path()
            .join("agents")
            .join(machine)
            .join("run")
            .join("sockets")
            .join(task)
            .join("workload.sock")
    }

    fn audit(&self, action: &str) -> Vec<Value> {
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(s) = &self.store {
            cmd.args(["--store", s]);
        }
        let out = cmd
            .args(["audit", "query", "--action", action, "--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "audit query: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
            .collect()
    }
}

fn ns_host_ip(ns: &Netns) -> std::net::IpAddr {
    ns.host_ip.parse().unwrap()
}

/// py-spiffe's view of `socket`: the SPIFFE ID and the SVID's expiry (Unix seconds).
fn py_spiffe(socket: &Path) -> Option<(String, f64)> {
    let script = format!(
        "from spiffe import WorkloadApiClient\nc = WorkloadApiClient(socket_path='unix://{}')\ns = c.fetch_x509_svid()\nl = s.leaf\nt = getattr(l, 'not_valid_after_utc', None) or l.not_valid_after\nimport calendar\nprint(s.spiffe_id, calendar.timegm(t.utctimetuple()))\n",
        socket.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (id, t) = text.trim().split_once(' ')?;
    Some((id.to_owned(), t.parse().ok()?))
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The uid a task's Workload API socket belongs to: the task's own.
fn socket_uid(socket: &Path) -> u32 {
    std::fs::metadata(socket).unwrap().uid()
}

/// The processes of `uid`.
fn pids_of_uid(uid: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::metadata(e.path()).ok()?.uid() == uid).then_some(pid)
        })
        .collect()
}

/// Submits another job of `payments/web` as the person in `creds`, with a review that covers
/// its configuration.
fn submit_more(s: &mut Scenario, creds: &Path, name: &str, args: &str) {
    let manifest = format!(
        "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: {name}, namespace: payments}}\nspec:\n  service: web\n  environment: production\n  image: registry.acme.test/payments/web@{}\n  args: {args}\n  ring: hardened\n",
        s.f.image
    );
    s.f.config = Sha256::of(manifest.as_bytes());
    let path = s.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, &manifest).unwrap();
    let mut files = Vec::new();
    for a in s.f.attestations() {
        let p = s.dir.path().join(format!("{name}-{}", a.source));
        std::fs::write(&p, serde_json::to_vec(&a.envelope).unwrap()).unwrap();
        files.push(p);
    }
    let mut cli = vec![
        "--credentials".to_owned(),
        creds.display().to_string(),
        "job".into(),
        "submit".into(),
        path.display().to_string(),
    ];
    for p in &files {
        cli.extend(["--attestation".to_owned(), p.display().to_string()]);
    }
    let cli: Vec<&str> = cli.iter().map(String::as_str).collect();
    let out = s.ok(&cli);
    assert!(
        out.starts_with(&format!("PLACED payments/{name} (compliant")),
        "{out}"
    );
}

/// The processes whose uid is in `[base, base + 16)`: an agent's tasks.
fn task_pids(base: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let uid = std::fs::metadata(e.path()).ok()?.uid();
            (base..base + 16).contains(&uid).then_some(pid)
        })
        .collect()
}

fn kill_pids(pids: &[i32]) {
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A gRPC channel to the server with `material` as the client certificate (`None`: no
/// certificate, the bundle only).
fn channel(
    listen: SocketAddr,
    bundle: &Path,
    material: Option<X509Material>,
) -> tonic::transport::Channel {
    let td = TrustDomain::parse(TD).unwrap();
    let m = material.unwrap_or_else(|| {
        X509Material::bundle_only(
            td.workload(&["machine", "nobody"]).unwrap(),
            files::read_bundle(bundle).unwrap(),
        )
    });
    let (_, rx) = tokio::sync::watch::channel(Some(m));
    ringfence_api::transport::control_plane_channel(listen, rx, Arc::new(SystemClock)).unwrap()
}

/// The first answer of a discovery watch of payments/web: (task, machine, address, port).
async fn first_endpoints(
    listen: SocketAddr,
    bundle: &Path,
    svid: Option<X509Material>,
) -> Vec<(String, String, String, u32)> {
    let mut d =
        ringfence_api::pb::discovery_client::DiscoveryClient::new(channel(listen, bundle, svid));
    let mut stream = d
        .watch_endpoints(pb::EndpointsRequest {
            namespace: "payments".into(),
            service: "web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    reply
        .endpoints
        .into_iter()
        .filter(|e| e.task == TASK)
        .map(|e| (e.task, e.machine, e.address, e.port))
        .collect()
}

fn ns_ip_of(machine: &str, ns1: &Netns, ns2: &Netns) -> String {
    if machine == "dev-1" {
        ns1.ns_ip.clone()
    } else {
        ns2.ns_ip.clone()
    }
}

fn csr(id: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    p.serialize_request(&key).unwrap().der().to_vec()
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, msg: &str) {
    match r {
        Ok(v) => panic!("expected a refusal ({msg}), got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(msg),
                "{:?} does not say {msg:?}",
                s.message()
            );
        }
    }
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The scenario on `store` (the embedded one when `None`); `lane` keeps concurrent runs'
/// namespaces, subnets and uids apart.
fn scenario(store: Option<String>, lane: u8) {
    assert!(
        ringfence_sandbox::run::is_root(),
        "the network suite runs agents and their sandboxes: it needs root"
    );
    let dir = tempfile::Builder::new()
        .prefix("ringfence-net")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ns1 = Netns::new(&format!("{lane}a"), 250 - 2 * lane);
    let ns2 = Netns::new(&format!("{lane}b"), 251 - 2 * lane);
    let listen = SocketAddr::new(ns_host_ip(&ns1), ringfence_test_util::free_port().unwrap());
    let data = dir.path().join("cp");
    let mut s = Scenario {
        dir,
        data,
        store,
        listen,
        f: Fixture::new(),
    };

    // The image (the suite's probe as entrypoint) and its attestations, in the artifact store.
    let probe = s.dir.path().join("probe");
    ringfence_test_util::probe::build(&probe).unwrap_or_else(|e| panic!("{e:#}"));
    let layer =
        ringfence_provenance::oci::tar(&[("bin/probe", 0o755, &std::fs::read(&probe).unwrap())]);
    let layout = s.dir.path().join("image");
    s.f.image = ringfence_provenance::oci::write_layout(
        &layout,
        &serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/probe"]}}),
        &[layer],
        "web:test",
    )
    .unwrap();
    let manifest = format!(
        "apiVersion: ringfence.dev/v1\nkind: Job\nmetadata: {{name: web-1, namespace: payments}}\nspec:\n  service: web\n  environment: production\n  image: registry.acme.test/payments/web@{}\n  args: [unix-connect, /run/spiffe/workload.sock]\n  ring: hardened\n  ports: [{{name: http, port: 8080}}]\n",
        s.f.image
    );
    s.f.config = Sha256::of(manifest.as_bytes());
    let job_path = s.dir.path().join("job.yaml");
    std::fs::write(&job_path, &manifest).unwrap();
    let mut att_paths = Vec::new();
    for a in s.f.attestations() {
        let p = s.dir.path().join(&a.source);
        std::fs::write(&p, serde_json::to_vec(&a.envelope).unwrap()).unwrap();
        att_paths.push(p);
    }
    let policy = s.dir.path().join("policy.yaml");
    std::fs::write(&policy, s.f.policy_yaml("enforce", "")).unwrap();

    let mut server = s.server("server");
    let http = {
        let log = server.log();
        let line = log.lines().find(|l| l.contains("/healthz")).unwrap();
        line.split("http://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    assert!(http_get(&http, "/healthz").contains("200 OK"));
    s.ok(&["policy", "apply", policy.to_str().unwrap()]);
    let listed = s.ok(&["policy", "list"]);
    assert!(
        listed.contains("web-production")
            && listed.contains("payments/web")
            && listed.contains("enforce"),
        "{listed}"
    );

    s.ok(&[
        "artifact",
        "push",
        layout.to_str().unwrap(),
        "--attestation",
        att_paths[0].to_str().unwrap(),
    ]);

    // Two machines join, each from its own network namespace.
    let base1 = 3_000_000 + u32::from(lane) * 100_000 + (std::process::id() % 1_000) * 64;
    let base2 = base1 + 32;
    let t1 = s.token("dev-1");
    let t2 = s.token("dev-2");
    let mut agents = vec![
        ("dev-1", s.agent(&ns1, "dev-1", Some(&t1), base1), base1),
        ("dev-2", s.agent(&ns2, "dev-2", Some(&t2), base2), base2),
    ];
    let logs = |agents: &[(&str, Proc, u32)]| -> String {
        agents
            .iter()
            .map(|(m, p, _)| format!("--- {m}:\n{}", p.log()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let machines: Vec<Value> = loop {
        let out = s.ok(&["machine", "list", "--output", "json"]);
        let v: Vec<Value> = serde_json::from_str(&out).unwrap();
        if v.len() == 2 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the agents did not register: {v:?}\n{}",
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (m, ns) in [("dev-1", &ns1), ("dev-2", &ns2)] {
        let rec = machines.iter().find(|x| x["id"] == m).unwrap();
        assert_eq!(rec["address"], ns.ns_ip.as_str());
        assert_eq!(
            rec["pool"], "development",
            "no host attestation: development only"
        );
        assert_eq!(rec["trust"], "development");
    }

    // People: alice is enrolled with her key and logs in for a short-lived user certificate;
    // bob is not enrolled; mallory's key is not alice's.
    let key_of = |name: &str| -> (PathBuf, String) {
        let path = s.dir.path().join(format!("{name}.key"));
        let public = s.ok(&["attest", "keygen", "--out", path.to_str().unwrap()]);
        (path, public)
    };
    let (alice_key, alice_pub) = key_of("alice");
    let (mallory_key, _) = key_of("mallory");
    std::fs::write(
        s.data.join("people.toml"),
        format!("[people.alice]\npublic_key = '''\n{alice_pub}'''\n"),
    )
    .unwrap();
    let login = |name: &str, key: &Path| {
        s.cli(&[
            "login",
            "--name",
            name,
            "--key",
            key.to_str().unwrap(),
            "--trust-domain",
            TD,
        ])
    };
    let (code, out, err) = login("alice", &alice_key);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("logged in as spiffe://{TD}/user/alice until")),
        "{out}"
    );
    let alice = s.data.join("users").join("alice");
    let (code, _, err) = login("bob", &alice_key);
    assert_eq!(code, 1);
    assert!(err.contains("refused: no person bob is enrolled"), "{err}");
    let (code, _, err) = login("alice", &mallory_key);
    assert_eq!(code, 1);
    assert!(
        err.contains("refused: the login is not signed by alice's enrolled key"),
        "{err}"
    );

    // A compliant job, submitted by alice over the API, runs with its SVID.
    let mut args = vec![
        "--credentials",
        alice.to_str().unwrap(),
        "job",
        "submit",
        job_path.to_str().unwrap(),
    ];
    for p in &att_paths {
        args.extend(["--attestation", p.to_str().unwrap()]);
    }
    let out = s.ok(&args);
    assert!(out.starts_with("PLACED payments/web-1 (compliant"), "{out}");
    assert_eq!(
        s.job()["job"]["by"],
        "alice",
        "the person in the certificate"
    );
    let first = s.running(Duration::from_secs(40), None, &|| logs(&agents));
    let (id, expiry0) = py_spiffe(&s.socket(&first)).expect("py-spiffe reads the task's socket");
    assert_eq!(id, WEB);
    let other = if first == "dev-1" { "dev-2" } else { "dev-1" };

    // Attacks with what a machine or a person actually holds.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bundle = s.data.join("identity").join("bundle.pem");
    let other_svid = files::load(&s.dir.path().join("agents").join(other).join("machine")).unwrap();
    let admin_svid = files::load(&s.data.join("admin")).unwrap();
    rt.block_on(async {
        let mut other_node = NodeClient::new(channel(listen, &bundle, Some(other_svid.clone())));
        refused(
            other_node
                .issue_svid(pb::CsrRequest { csr_der: csr(WEB) })
                .await,
            tonic::Code::PermissionDenied,
            &format!("no admitted task of {WEB} is placed on machine {other}"),
        );
        refused(
            other_node
                .fetch_image(pb::FetchImageRequest {
                    digest: s.f.image.to_string(),
                })
                .await
                .map(|_| ()),
            tonic::Code::PermissionDenied,
            &format!("no task assigned to machine {other} runs image"),
        );
        // Its machine SVID renews only itself.
        refused(
            other_node
                .renew_machine(pb::CsrRequest {
                    csr_der: csr(&format!("spiffe://{TD}/machine/{first}")),
                })
                .await,
            tonic::Code::PermissionDenied,
            &format!("only spiffe://{TD}/machine/{other} may be issued here"),
        );
        // Its audit events speak for itself alone, and only of agent matters.
        let forged = |actor: &str, action: &str| {
            ringfence_audit::Event::new(
                ringfence_core::UnixTime::from_millis(1_800_000_000_000),
                ringfence_core::SpiffeId::parse(actor).unwrap(),
                action,
                "payments.web.web-1.0",
                ringfence_audit::Decision::Allow,
                "forged",
            )
            .encode()
            .unwrap()
        };
        refused(
            other_node
                .audit(pb::AuditRequest {
                    events: vec![forged(&format!("spiffe://{TD}/machine/{first}"), "agent.task.start")],
                })
                .await,
            tonic::Code::PermissionDenied,
            &format!("its actor is spiffe://{TD}/machine/{first}, but the caller is spiffe://{TD}/machine/{other}"),
        );
        refused(
            other_node
                .audit(pb::AuditRequest {
                    events: vec![forged(&format!("spiffe://{TD}/machine/{other}"), "bab.admit")],
                })
                .await,
            tonic::Code::PermissionDenied,
            "an agent records only agent.* actions, not \"bab.admit\"",
        );
        refused(
            other_node
                .audit(pb::AuditRequest {
                    events: vec![b"{not json".to_vec()],
                })
                .await,
            tonic::Code::InvalidArgument,
            "event 1:",
        );
        // Discovery: any SVID of the trust domain watches a service's endpoints; nothing
        // without one.
        let ep = first_endpoints(listen, &bundle, Some(other_svid.clone())).await;
        assert_eq!(
            ep,
            vec![(
                TASK.to_owned(),
                first.clone(),
                ns_ip_of(&first, &ns1, &ns2),
                8080
            )]
        );
        let mut anon_discovery =
            ringfence_api::pb::discovery_client::DiscoveryClient::new(channel(listen, &bundle, None));
        refused(
            anon_discovery
                .watch_endpoints(pb::EndpointsRequest {
                    namespace: "payments".into(),
                    service: "web".into(),
                })
                .await
                .map(|_| ()),
            tonic::Code::Unauthenticated,
            "discovery needs an SVID",
        );
        // A machine is not a person.
        let mut as_admin = AdminClient::new(channel(listen, &bundle, Some(other_svid.clone())));
        refused(
            as_admin.list_jobs(pb::ListRequest {}).await,
            tonic::Code::PermissionDenied,
            "is not a person",
        );
        // A person is not a machine.
        let mut admin_node = NodeClient::new(channel(listen, &bundle, Some(admin_svid)));
        refused(
            admin_node.assignments(pb::AssignmentsRequest {}).await,
            tonic::Code::PermissionDenied,
            "is not a machine",
        );
        // No certificate: only Join answers.
        let mut anon = NodeClient::new(channel(listen, &bundle, None));
        refused(
            anon.assignments(pb::AssignmentsRequest {}).await,
            tonic::Code::Unauthenticated,
            "this call needs a machine SVID",
        );
        // A spent token, a made-up one, and one for another machine.
        refused(
            anon.join(pb::JoinRequest {
                token: t1.clone(),
                csr_der: csr(&format!("spiffe://{TD}/machine/dev-1")),
            })
            .await,
            tonic::Code::PermissionDenied,
            "unknown or already used join token",
        );
        refused(
            anon.join(pb::JoinRequest {
                token: "rfjt.0000".into(),
                csr_der: csr(&format!("spiffe://{TD}/machine/dev-1")),
            })
            .await,
            tonic::Code::PermissionDenied,
            "unknown or already used join token",
        );
    });
    let t9 = s.token("dev-9");
    let short = s
        .ok(&["machine", "token", "dev-8", "--ttl", "1s"])
        .trim()
        .to_owned();
    std::thread::sleep(Duration::from_millis(1_200));
    rt.block_on(async {
        let mut anon = NodeClient::new(channel(listen, &bundle, None));
        refused(
            anon.join(pb::JoinRequest {
                token: t9.clone(),
                csr_der: csr(&format!("spiffe://{TD}/machine/dev-1")),
            })
            .await,
            tonic::Code::PermissionDenied,
            &format!("this join token is for spiffe://{TD}/machine/dev-9"),
        );
        refused(
            anon.join(pb::JoinRequest {
                token: short.clone(),
                csr_der: csr(&format!("spiffe://{TD}/machine/dev-8")),
            })
            .await,
            tonic::Code::PermissionDenied,
            "the join token for dev-8 has expired",
        );
        // That refusal did not spend it: dev-9 itself can still join.
        let ok = anon
            .join(pb::JoinRequest {
                token: t9.clone(),
                csr_der: csr(&format!("spiffe://{TD}/machine/dev-9")),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.spiffe_id, format!("spiffe://{TD}/machine/dev-9"));
    });
    // Logins forged from alice's real key, each refused with its reason.
    let alice_signer = {
        let pem = std::fs::read_to_string(&alice_key).unwrap();
        ringfence_provenance::dsse::SigningKey::from_pkcs8_pem(&pem).unwrap()
    };
    rt.block_on(async {
        use ringfence_controlplane::server::{LOGIN_PAYLOAD_TYPE, LoginClaims};
        let mut people =
            ringfence_api::pb::people_client::PeopleClient::new(channel(listen, &bundle, None));
        let alice_id = format!("spiffe://{TD}/user/alice");
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let signed = |claims: &LoginClaims, payload_type: &str| {
            serde_json::to_vec(
                &ringfence_provenance::dsse::sign(
                    payload_type,
                    &serde_json::to_vec(claims).unwrap(),
                    &[&alice_signer],
                )
                .unwrap(),
            )
            .unwrap()
        };
        let the_csr = csr(&alice_id);
        let good = LoginClaims {
            name: "alice".into(),
            trust_domain: TD.into(),
            time_ms: now_ms,
            csr_sha256: Sha256::of(&the_csr).hex().to_owned(),
        };
        // Signed for one CSR, sent with another (a replay with the attacker's own key).
        refused(
            people
                .login(pb::LoginRequest {
                    envelope: signed(&good, LOGIN_PAYLOAD_TYPE),
                    csr_der: csr(&alice_id),
                })
                .await,
            tonic::Code::PermissionDenied,
            "the login was signed for another CSR",
        );
        // Ten minutes old.
        let stale = LoginClaims {
            time_ms: now_ms - 600_000,
            ..good.clone()
        };
        refused(
            people
                .login(pb::LoginRequest {
                    envelope: signed(&stale, LOGIN_PAYLOAD_TYPE),
                    csr_der: the_csr.clone(),
                })
                .await,
            tonic::Code::PermissionDenied,
            "s away from this server's clock (at most 120 s)",
        );
        // For another trust domain.
        let foreign = LoginClaims {
            trust_domain: "evil.test".into(),
            ..good.clone()
        };
        refused(
            people
                .login(pb::LoginRequest {
                    envelope: signed(&foreign, LOGIN_PAYLOAD_TYPE),
                    csr_der: the_csr.clone(),
                })
                .await,
            tonic::Code::PermissionDenied,
            "the login is for trust domain evil.test",
        );
        // Alice's signature over something that is not a login (an in-toto statement type).
        refused(
            people
                .login(pb::LoginRequest {
                    envelope: signed(&good, "application/vnd.in-toto+json"),
                    csr_der: the_csr.clone(),
                })
                .await,
            tonic::Code::PermissionDenied,
            "the login is not signed by alice's enrolled key",
        );
        // A valid login whose CSR asks for someone else.
        let admin_csr = csr(&format!("spiffe://{TD}/user/admin"));
        let for_admin = LoginClaims {
            csr_sha256: Sha256::of(&admin_csr).hex().to_owned(),
            ..good.clone()
        };
        refused(
            people
                .login(pb::LoginRequest {
                    envelope: signed(&for_admin, LOGIN_PAYLOAD_TYPE),
                    csr_der: admin_csr,
                })
                .await,
            tonic::Code::PermissionDenied,
            &format!("only {alice_id} may be issued here"),
        );
        // And the genuine one works.
        let ok = people
            .login(pb::LoginRequest {
                envelope: signed(&good, LOGIN_PAYLOAD_TYPE),
                csr_der: the_csr,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.spiffe_id, alice_id);
    });
    let creds = s.dir.path().join("agents").join(other).join("machine");
    let (code, _, err) = s.cli(&["--credentials", creds.to_str().unwrap(), "job", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused") && err.contains("is not a person"),
        "{err}"
    );
    let metrics = http_get(&http, "/metrics");
    assert!(
        metrics.contains(
            "ringfence_api_calls_total{method=\"Node/IssueSvid\",code=\"PermissionDenied\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringfence_tasks{state=\"running\",svid=\"true\"} 1"),
        "{metrics}"
    );

    // Two more jobs of the service, by alice: web-2 runs on; drift-1 execs a file it wrote,
    // which the sandbox refuses (the agent audits it).
    submit_more(
        &mut s,
        &alice,
        "web-2",
        "[unix-connect, /run/spiffe/workload.sock]",
    );
    submit_more(&mut s, &alice, "drift-1", "[exec-written]");
    let web2 = wait_for(Duration::from_secs(40), "web-2 to run", || {
        let out = s.ok(&["job", "status", "payments/web-2", "--output", "json"]);
        let j: Value = serde_json::from_str(&out).unwrap();
        let st = &j["tasks"][0]["status"];
        (st["report"]["state"] == "running" && st["report"]["svid"] == true)
            .then(|| st["machine"].as_str().unwrap().to_owned())
    });
    let web2_uid = socket_uid(&s.socket_of(&web2, "payments.web.web-2.0"));

    // kill -9 of the control plane: the task keeps running; after the restart nothing is
    // lost, the agents reconnect, and the task's SVID is renewed through the new process.
    let web1_uid = socket_uid(&s.socket(&first));
    let task_pids_before = pids_of_uid(web1_uid);
    assert!(!task_pids_before.is_empty());
    let killed_at = now_s();
    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    // While it is down, web-2's process dies; its agent records that in its spool.
    let web2_pids = pids_of_uid(web2_uid);
    assert!(!web2_pids.is_empty());
    kill_pids(&web2_pids);
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        task_pids_before
            .iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()),
        "the task kept running while the control plane was down"
    );
    let restarted_at = now_s();
    let mut server = s.server("server-restarted");
    let job = s.job();
    assert_eq!(job["job"]["state"]["state"], "placed");
    assert_eq!(job["tasks"][0]["placement"]["machine"], first.as_str());
    wait_for(
        Duration::from_secs(SVID_TTL_S * 3),
        "an SVID renewed through the restarted server",
        || {
            let (id, expiry) = py_spiffe(&s.socket(&first))?;
            (id == WEB && expiry > expiry0 && expiry > restarted_at + 1.0).then_some(())
        },
    );
    let machines: Vec<Value> =
        serde_json::from_str(&s.ok(&["machine", "list", "--output", "json"])).unwrap();
    for m in &machines {
        if m["id"] == "dev-9" {
            continue;
        }
        let seen = m["lastSeen"].as_f64().unwrap_or_default() / 1000.0;
        assert!(seen > restarted_at, "{} reconnected: {m}", m["id"]);
    }
    assert!(
        task_pids_before
            .iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()),
        "the same task process ran through the restart"
    );

    // What an agent spooled while the control plane was down is forwarded before any agent
    // is killed: a killed agent's spool waits for its next start, and this one is not
    // restarted.
    wait_for(
        Duration::from_secs(30),
        "the agents to forward what they spooled during the outage",
        || {
            agents
                .iter()
                .all(|(_, a, _)| {
                    let log = a.log();
                    log.rfind("audit events stay spooled").is_none_or(|i| {
                        log.get(i..)
                            .unwrap_or_default()
                            .contains("audit events forwarded")
                    })
                })
                .then_some(())
        },
    );

    // kill -9 of the agent running the task: it moves to the other machine.
    let (i, _) = agents
        .iter()
        .enumerate()
        .find(|(_, (m, _, _))| *m == first)
        .unwrap();
    let (_, mut dead, dead_base) = agents.remove(i);
    dead.kill9();
    let orphans = task_pids(dead_base);
    let moved = s.running(Duration::from_secs(40), Some(&first), &|| logs(&agents));
    assert_eq!(moved, other);
    let (id, _) = py_spiffe(&s.socket(&moved)).unwrap();
    assert_eq!(id, WEB);
    // Discovery follows the move.
    let live_svid = files::load(&s.dir.path().join("agents").join(&moved).join("machine")).unwrap();
    let ep = rt.block_on(first_endpoints(listen, &bundle, Some(live_svid)));
    assert_eq!(
        ep,
        vec![(
            TASK.to_owned(),
            moved.clone(),
            ns_ip_of(&moved, &ns1, &ns2),
            8080
        )]
    );
    // On a real host the orphans would die with it; here they share the kernel.
    kill_pids(&orphans);

    // Stop: the tasks end.
    for j in ["payments/web-1", "payments/web-2", "payments/drift-1"] {
        s.ok(&["job", "stop", j]);
    }
    let live_base = agents[0].2;
    wait_for(Duration::from_secs(20), "the task to end", || {
        task_pids(live_base).is_empty().then_some(())
    });
    for (_, a, _) in &mut agents {
        assert!(a.stop().success(), "{}", a.log());
    }
    assert!(server.stop().success(), "{}", server.log());

    // The audit log (the server is stopped, so the Store opens) has every refusal.
    let issues = s.audit("identity.issue");
    assert!(
        issues.iter().any(|e| e["decision"] == "deny"
            && e["details"]["machine"] == other
            && e["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("no admitted task")),
        "{issues:#?}"
    );
    let joins = s.audit("machine.join");
    assert!(joins.iter().any(|e| e["decision"] == "deny"), "{joins:#?}");
    assert_eq!(
        joins.iter().filter(|e| e["decision"] == "allow").count(),
        3,
        "dev-1, dev-2 and dev-9 joined once each: {joins:#?}"
    );
    // What the agents recorded reached the log, as their machines: web-2's death while the
    // control plane was down (spooled, forwarded after the restart) and drift-1's refused
    // exec.
    let exits = s.audit("agent.task.exit");
    assert!(
        exits.iter().any(|e| e["target"] == "payments.web.web-2.0"
            && e["actor"] == format!("spiffe://{TD}/machine/{web2}")
            && (e["time_ms"].as_f64().unwrap_or_default() / 1000.0) > killed_at
            && (e["time_ms"].as_f64().unwrap_or_default() / 1000.0) < restarted_at),
        "{exits:#?}"
    );
    let drift = s.audit("agent.drift");
    assert!(
        drift.iter().any(|e| e["target"] == "payments.web.drift-1.0"
            && e["decision"] == "deny"
            && e["reason"].as_str().unwrap_or_default().contains("dropped")),
        "{drift:#?}"
    );
    assert!(
        s.audit("bab.admit").iter().all(|e| e["reason"] != "forged"),
        "a forged event reached the log"
    );
    let starts = s.audit("agent.task.start");
    assert!(starts.len() >= 4, "{starts:#?}");
    let logins = s.audit("user.login");
    assert!(
        logins
            .iter()
            .any(|e| e["decision"] == "deny" && e["reason"] == "no person bob is enrolled"),
        "{logins:#?}"
    );
    assert_eq!(
        logins.iter().filter(|e| e["decision"] == "allow").count(),
        2,
        "{logins:#?}"
    );
    let places = s.audit("job.place");
    assert!(
        places.iter().any(|e| e["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("moved from {first} (not heard from) to {other}"))),
        "{places:#?}"
    );
}

#[test]
fn two_agents_in_their_own_network_namespaces_run_a_job_through_kill_9_of_the_control_plane_and_of_an_agent()
 {
    scenario(None, 0);
}

#[test]
fn the_same_with_the_store_on_a_three_member_etcd_cluster() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt
        .block_on(ringfence_test_util::etcd::EtcdCluster::start(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    scenario(Some(cluster.store_url()), 1);
    drop(cluster);
}
