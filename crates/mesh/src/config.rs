//! `ringfence mesh` configuration (TOML, unknown fields refused) and the runner that turns it
//! into listeners.
//!
//! ```toml
//! [identity]
//! svid_dir = "/run/ringfence/svid"      # svid.pem (chain + key) and bundle.pem, re-read on change
//! # or: workload_api = "/run/ringfence/workload.sock"   # a SPIFFE Workload API socket, streamed
//!
//! [inbound]                             # beside the called service
//! listen = "0.0.0.0:15443"
//! forward = "127.0.0.1:8080"
//! tcp_forward = "127.0.0.1:5432"        # raw TCP from the mesh goes here; without it, none
//!
//! [outbound]                            # beside the caller: http://<service>.<namespace>/...
//! listen = "127.0.0.1:15001"
//!
//! [[tcp]]                               # raw TCP to a meshed service, from a loopback port
//! listen = "127.0.0.1:15432"
//! service = "db.shop"
//!
//! [[egress]]                            # plain TCP out of the mesh, where policy permits
//! listen = "127.0.0.1:15433"
//! name = "postgres.external"            # the Cedar resource: Service::"postgres.external"
//! to = ["10.0.0.5:5432"]
//!
//! [[ingress]]                           # plain TCP from non-mesh clients, on this port only
//! listen = "0.0.0.0:8081"
//! forward = "127.0.0.1:8090"            # the service's port for them (never inbound.forward)
//! allow_from = ["10.0.0.0/8"]
//!
//! [discovery]                           # where services are: the control plane's discovery
//! control_plane = "10.0.0.1:7443"       # its API (mTLS with this proxy's SVID)
//! port = "mesh"                         # the job port of each task's inbound proxy
//!
//! [endpoints]                           # fixed endpoints; a service listed here is not
//! "orders.shop" = ["10.0.0.2:15443"]    # looked up in discovery
//!
//! [policy]
//! file = "access.cedar"                 # re-read on change; live connections follow
//! mode = "enforce"                      # or "dry-run"
//! default_deny = false                  # true: services no policy names are closed too
//!
//! [tokens]
//! jwks = "txn-token-jwks.json"          # the token service's keys (`ringfence euc jwks`)
//!
//! [telemetry]
//! metrics = "127.0.0.1:15090"           # Prometheus /metrics
//! audit_spool = "mesh-audit.redb"       # every denial, and one allow in `allow_sample`
//! forward_to = "10.0.0.1:7443"          # the control plane: the spool drains into its log
//! allow_sample = 100
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ringfence_core::{Clock, SystemClock};
use ringfence_identity::jwt::JwtBundle;
use ringfence_identity::workload_api::X509Material;
use ringfence_policy::{AccessPolicy, Mode};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::{DiscoveryOptions, DiscoveryResolver};
use crate::h1::Conn;
use crate::proxy::{Limits, Mesh, MeshParts, PolicyHandle, Resolver, StaticResolver};
use crate::telemetry::Telemetry;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Where the SVID comes from.
    pub identity: IdentityConfig,
    /// The inbound listener.
    pub inbound: Option<InboundConfig>,
    /// The outbound listener.
    pub outbound: Option<OutboundConfig>,
    /// Raw TCP ports to meshed services.
    #[serde(default)]
    pub tcp: Vec<TcpConfig>,
    /// Plain TCP ports to destinations outside the mesh.
    #[serde(default)]
    pub egress: Vec<EgressConfig>,
    /// Plain ports for clients outside the mesh.
    #[serde(default)]
    pub ingress: Vec<IngressConfig>,
    /// Endpoints from the control plane.
    pub discovery: Option<DiscoveryConfig>,
    /// Static endpoints, `"<service>.<namespace>" = ["addr:port", ...]`; they take precedence
    /// over discovery for the services they name.
    #[serde(default)]
    pub endpoints: HashMap<String, Vec<SocketAddr>>,
    /// Service-access policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Transaction-token keys.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Metrics and audit.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// Where the SVID comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// A directory with `svid.pem` and `bundle.pem` (as `ringfence agent` and `ringfence
    /// login` write them), re-read when they change.
    pub svid_dir: Option<PathBuf>,
    /// A SPIFFE Workload API socket (the agent's per-task socket, or any implementation of
    /// the standard API), followed as a stream. Exactly one of the two.
    pub workload_api: Option<PathBuf>,
}

/// How long the proxy waits for its first SVID from a Workload API socket.
const FIRST_SVID_WAIT: Duration = Duration::from_secs(30);

/// The inbound listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Where callers connect (mTLS).
    pub listen: SocketAddr,
    /// The service's local port.
    pub forward: SocketAddr,
    /// Where raw TCP connections from the mesh go; without it the inbound side accepts none.
    /// Never the HTTP port.
    pub tcp_forward: Option<SocketAddr>,
}

/// A loopback port for raw TCP to one meshed service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// A loopback address.
    pub listen: SocketAddr,
    /// `<service>.<namespace>`.
    pub service: String,
}

/// A loopback port for plain TCP to a destination outside the mesh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// A loopback address.
    pub listen: SocketAddr,
    /// The destination's name in policy, `<name>.<namespace>` (e.g. `postgres.external`).
    pub name: String,
    /// Its addresses, tried in order.
    pub to: Vec<SocketAddr>,
}

/// A plain port for clients outside the mesh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// Where such clients connect.
    pub listen: SocketAddr,
    /// The service's local port.
    pub forward: SocketAddr,
    /// Client networks let in (`10.0.0.0/8`, `192.0.2.7`); required.
    pub allow_from: Vec<String>,
}

/// The outbound listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// A loopback address.
    pub listen: SocketAddr,
}

/// Endpoints from the control plane's discovery service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The control plane's API address.
    pub control_plane: SocketAddr,
    /// The name of the job port each task's inbound proxy listens on.
    #[serde(default = "default_port_name")]
    pub port: String,
}

fn default_port_name() -> String {
    "mesh".into()
}

/// Service-access policy.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A Cedar policy file; without one every service is open unless `default_deny`.
    pub file: Option<PathBuf>,
    /// Enforce or dry-run.
    #[serde(default)]
    pub mode: Mode,
    /// Close services no policy names.
    #[serde(default)]
    pub default_deny: bool,
}

/// Transaction-token keys.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// The token service's JWKS.
    pub jwks: Option<PathBuf>,
}

/// Metrics and audit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Prometheus listener.
    pub metrics: Option<SocketAddr>,
    /// Audit spool file.
    pub audit_spool: Option<PathBuf>,
    /// The control plane's API: the spool is forwarded there, into the central audit log,
    /// every second it can be reached. Needs `audit_spool`.
    pub forward_to: Option<SocketAddr>,
    /// Record one allow in this many (0: none).
    #[serde(default = "default_sample")]
    pub allow_sample: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: None,
            audit_spool: None,
            forward_to: None,
            allow_sample: default_sample(),
        }
    }
}

fn default_sample() -> u64 {
    100
}

/// Why the proxy cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is wrong.
    #[error("mesh config: {0}")]
    Invalid(String),
    /// Starting failed.
    #[error(transparent)]
    Mesh(#[from] crate::MeshError),
}

impl MeshConfig {
    /// Parses TOML; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Self =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = cfg.identity.svid_dir.as_mut() {
            abs(p);
        }
        if let Some(p) = cfg.identity.workload_api.as_mut() {
            abs(p);
        }
        if cfg.identity.svid_dir.is_some() == cfg.identity.workload_api.is_some() {
            return Err(ConfigError::Invalid(
                "identity: set exactly one of svid_dir (files) and workload_api (a socket)".into(),
            ));
        }
        if let Some(p) = cfg.policy.file.as_mut() {
            abs(p);
        }
        if let Some(p) = cfg.tokens.jwks.as_mut() {
            abs(p);
        }
        if let Some(p) = cfg.telemetry.audit_spool.as_mut() {
            abs(p);
        }
        if let Some(o) = &cfg.outbound
            && !o.listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "outbound.listen {} is not a loopback address: the outbound side is for the local workload only",
                o.listen
            )));
        }
        for (what, listen) in cfg
            .tcp
            .iter()
            .map(|t| ("tcp", t.listen))
            .chain(cfg.egress.iter().map(|e| ("egress", e.listen)))
        {
            if !listen.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "{what}.listen {listen} is not a loopback address: it is for the local workload only"
                )));
            }
        }
        for t in &cfg.tcp {
            ringfence_policy::ServiceName::parse(&t.service)
                .map_err(|e| ConfigError::Invalid(format!("tcp.service: {e}")))?;
        }
        for e in &cfg.egress {
            ringfence_policy::ServiceName::parse(&e.name)
                .map_err(|err| ConfigError::Invalid(format!("egress.name: {err}")))?;
            if e.to.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "egress {}: `to` lists no address",
                    e.name
                )));
            }
        }
        if let Some(i) = &cfg.inbound
            && i.tcp_forward == Some(i.forward)
        {
            return Err(ConfigError::Invalid(format!(
                "inbound.tcp_forward {} is the HTTP port: raw TCP would skip the per-request checks and could set ringfence-caller itself",
                i.forward
            )));
        }
        for i in &cfg.ingress {
            if let Some(inbound) = &cfg.inbound
                && inbound.forward == i.forward
            {
                return Err(ConfigError::Invalid(format!(
                    "ingress {}: forward {} is the inbound side's HTTP port, whose ringfence-caller and ringfence-user fields the service trusts; give non-mesh clients a port of their own",
                    i.listen, i.forward
                )));
            }
            if i.allow_from.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "ingress {}: allow_from is empty: list the client networks to let in (0.0.0.0/0 and ::/0 for any)",
                    i.listen
                )));
            }
            for c in &i.allow_from {
                crate::tcp::Cidr::parse(c).map_err(|e| {
                    ConfigError::Invalid(format!("ingress {}: allow_from: {e}", i.listen))
                })?;
            }
        }
        if cfg.inbound.is_none()
            && cfg.outbound.is_none()
            && cfg.tcp.is_empty()
            && cfg.egress.is_empty()
            && cfg.ingress.is_empty()
        {
            return Err(ConfigError::Invalid(
                "nothing to do: configure [inbound], [outbound], [[tcp]], [[egress]] or [[ingress]]"
                    .into(),
            ));
        }
        for name in cfg.endpoints.keys() {
            ringfence_policy::ServiceName::parse(name)
                .map_err(|e| ConfigError::Invalid(format!("endpoints: {e}")))?;
        }
        if cfg.telemetry.forward_to.is_some() && cfg.telemetry.audit_spool.is_none() {
            return Err(ConfigError::Invalid(
                "telemetry.forward_to needs telemetry.audit_spool: events are spooled, then forwarded".into(),
            ));
        }
        if let Some(d) = &cfg.discovery {
            ringfence_core::Name::parse(&d.port)
                .map_err(|e| ConfigError::Invalid(format!("discovery.port: {e}")))?;
        }
        Ok(cfg)
    }

    /// Checks what can be checked without listening: the SVID, the policy and the keys.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.identity.svid_dir {
            ringfence_identity::files::load(dir)
                .map_err(|e| ConfigError::Invalid(format!("identity {}: {e}", dir.display())))?;
        }
        if let Some(socket) = &self.identity.workload_api
            && !socket.exists()
        {
            return Err(ConfigError::Invalid(format!(
                "identity: no Workload API socket at {}",
                socket.display()
            )));
        }
        self.load_policy()?;
        self.load_tokens()?;
        Ok(())
    }

    fn load_tokens(&self) -> Result<Option<JwtBundle>, ConfigError> {
        match &self.tokens.jwks {
            None => Ok(None),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", p.display())))?;
                JwtBundle::parse(&text)
                    .map(Some)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", p.display())))
            }
        }
    }

    fn load_policy(&self) -> Result<AccessPolicy, ConfigError> {
        match &self.policy.file {
            None => Ok(AccessPolicy::empty(
                self.policy.mode,
                self.policy.default_deny,
            )),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", p.display())))?;
                AccessPolicy::parse(&text, self.policy.mode, self.policy.default_deny)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", p.display())))
            }
        }
    }
}

/// What the runner bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The inbound address.
    pub inbound: Option<SocketAddr>,
    /// The outbound address.
    pub outbound: Option<SocketAddr>,
    /// The metrics address.
    pub metrics: Option<SocketAddr>,
    /// The raw TCP addresses, in the file's order.
    pub tcp: Vec<SocketAddr>,
    /// The egress addresses.
    pub egress: Vec<SocketAddr>,
    /// The ingress addresses.
    pub ingress: Vec<SocketAddr>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// How often files are looked at for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The SVID from files in `svid_dir`, re-read when `svid.pem` changes.
fn follow_files(svid_dir: PathBuf) -> Result<watch::Receiver<Option<X509Material>>, ConfigError> {
    let material = ringfence_identity::files::load(&svid_dir)
        .map_err(|e| ConfigError::Invalid(format!("identity {}: {e}", svid_dir.display())))?;
    let (material_tx, material_rx) = watch::channel::<Option<X509Material>>(Some(material));
    tokio::spawn(async move {
        let mut seen = modified(&svid_dir.join("svid.pem"));
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let now = modified(&svid_dir.join("svid.pem"));
            if now != seen {
                match ringfence_identity::files::load(&svid_dir) {
                    Ok(m) => {
                        tracing::info!(spiffe_id = %m.spiffe_id, "mesh SVID reloaded");
                        let _ = material_tx.send(Some(m));
                        seen = now;
                    }
                    Err(e) => tracing::warn!(error = %e, "mesh SVID not reloaded"),
                }
            }
        }
    });
    Ok(material_rx)
}

/// Runs the proxy until a listener fails. `bound` learns the addresses once listening.
pub async fn run(
    cfg: MeshConfig,
    bound: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), ConfigError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let material_rx = match (&cfg.identity.svid_dir, &cfg.identity.workload_api) {
        (_, Some(socket)) => crate::source::follow(socket.clone(), FIRST_SVID_WAIT)
            .await
            .map_err(ConfigError::Invalid)?,
        (Some(dir), None) => follow_files(dir.clone())?,
        (None, None) => {
            return Err(ConfigError::Invalid(
                "identity: set svid_dir or workload_api".into(),
            ));
        }
    };
    let policy = PolicyHandle::new(cfg.load_policy()?);
    if let Some(file) = cfg.policy.file.clone() {
        let handle = policy.clone();
        let cfg2 = cfg.clone();
        tokio::spawn(async move {
            let mut seen = modified(&file);
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let now = modified(&file);
                if now != seen {
                    seen = now;
                    match cfg2.load_policy() {
                        Ok(p) => {
                            tracing::info!(file = %file.display(), "service-access policy reloaded");
                            handle.replace(p);
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "service-access policy not reloaded; the previous one stays in force"
                        ),
                    }
                }
            }
        });
    }
    let tokens = cfg.load_tokens()?;
    let telemetry = match &cfg.telemetry.audit_spool {
        Some(path) => {
            let spool = ringfence_audit::Spool::open(path).await.map_err(|e| {
                ConfigError::Invalid(format!("audit spool {}: {e}", path.display()))
            })?;
            if let Some(addr) = cfg.telemetry.forward_to {
                let channel = ringfence_api::transport::control_plane_channel(
                    addr,
                    material_rx.clone(),
                    Arc::clone(&clock),
                )
                .map_err(|e| ConfigError::Invalid(format!("telemetry.forward_to: {e}")))?;
                tokio::spawn(forward_audit(spool.clone(), channel));
            }
            Telemetry::with_audit(Arc::new(spool), cfg.telemetry.allow_sample)
        }
        None => Telemetry::new(),
    };
    let resolver: Arc<dyn Resolver> = match &cfg.discovery {
        None => Arc::new(StaticResolver(cfg.endpoints.clone())),
        Some(d) => {
            let channel = ringfence_api::transport::control_plane_channel(
                d.control_plane,
                material_rx.clone(),
                Arc::clone(&clock),
            )
            .map_err(|e| ConfigError::Invalid(format!("discovery: {e}")))?;
            Arc::new(Layered {
                fixed: StaticResolver(cfg.endpoints.clone()),
                discovery: DiscoveryResolver::new(
                    channel,
                    DiscoveryOptions {
                        port_name: d.port.clone(),
                        ..DiscoveryOptions::default()
                    },
                ),
            })
        }
    };
    let mesh = Arc::new(Mesh::new(MeshParts {
        material: material_rx,
        policy,
        tokens,
        resolver,
        telemetry: Arc::new(telemetry),
        clock,
        limits: Limits::default(),
    })?);
    let mut tasks = tokio::task::JoinSet::new();
    let mut b = Bound {
        inbound: None,
        outbound: None,
        metrics: None,
        tcp: Vec::new(),
        egress: Vec::new(),
        ingress: Vec::new(),
    };
    let bind = |addr: SocketAddr, what: String| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| ConfigError::Invalid(format!("{what} {addr}: {e}")))
    };
    if let Some(i) = &cfg.inbound {
        let l = TcpListener::bind(i.listen)
            .await
            .map_err(crate::MeshError::from)?;
        b.inbound = Some(l.local_addr().map_err(crate::MeshError::from)?);
        tasks.spawn(Arc::clone(&mesh).serve_inbound_split(l, i.forward, i.tcp_forward));
    }
    for t in &cfg.tcp {
        let l = bind(t.listen, format!("tcp {}", t.service)).await?;
        b.tcp.push(l.local_addr().map_err(crate::MeshError::from)?);
        let service = ringfence_policy::ServiceName::parse(&t.service)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        tasks.spawn(Arc::clone(&mesh).serve_tcp(l, service));
    }
    for e in &cfg.egress {
        let l = bind(e.listen, format!("egress {}", e.name)).await?;
        b.egress
            .push(l.local_addr().map_err(crate::MeshError::from)?);
        let name = ringfence_policy::ServiceName::parse(&e.name)
            .map_err(|err| ConfigError::Invalid(err.to_string()))?;
        tasks.spawn(Arc::clone(&mesh).serve_egress(l, name, e.to.clone()));
    }
    for i in &cfg.ingress {
        let l = bind(i.listen, "ingress".to_owned()).await?;
        b.ingress
            .push(l.local_addr().map_err(crate::MeshError::from)?);
        let allow = i
            .allow_from
            .iter()
            .map(|c| crate::tcp::Cidr::parse(c).map_err(ConfigError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        tasks.spawn(Arc::clone(&mesh).serve_ingress(l, i.forward, allow));
    }
    if let Some(o) = &cfg.outbound {
        let l = TcpListener::bind(o.listen)
            .await
            .map_err(crate::MeshError::from)?;
        b.outbound = Some(l.local_addr().map_err(crate::MeshError::from)?);
        tasks.spawn(Arc::clone(&mesh).serve_outbound(l));
    }
    if let Some(m) = cfg.telemetry.metrics {
        let l = TcpListener::bind(m).await.map_err(crate::MeshError::from)?;
        b.metrics = Some(l.local_addr().map_err(crate::MeshError::from)?);
        tasks.spawn(serve_metrics(Arc::clone(mesh.telemetry()), l));
    }
    tracing::info!(
        spiffe_id = %mesh.id(),
        inbound = ?b.inbound,
        outbound = ?b.outbound,
        metrics = ?b.metrics,
        tcp = ?b.tcp,
        egress = ?b.egress,
        ingress = ?b.ingress,
        mode = ?cfg.policy.mode,
        default_deny = cfg.policy.default_deny,
        "mesh proxy listening"
    );
    if let Some(tx) = bound {
        let _ = tx.send(b);
    }
    match tasks.join_next().await {
        Some(Ok(r)) => r.map_err(ConfigError::from),
        Some(Err(e)) => Err(ConfigError::Invalid(format!("listener task failed: {e}"))),
        None => Ok(()),
    }
}

/// Drains `spool` into the central log every second; what cannot be sent stays spooled.
async fn forward_audit(spool: ringfence_audit::Spool, channel: tonic::transport::Channel) {
    let sink = ringfence_api::transport::NodeAudit::new(
        ringfence_api::pb::node_client::NodeClient::new(channel),
    );
    let mut failing = false;
    loop {
        match spool.forward_to(&sink).await {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(events = n, "mesh audit events forwarded");
                }
                if failing {
                    tracing::info!("mesh audit events reach the control plane again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "mesh audit events stay spooled until the control plane takes them");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Fixed endpoints first, then discovery.
#[derive(Debug)]
struct Layered {
    fixed: StaticResolver,
    discovery: DiscoveryResolver,
}

#[async_trait::async_trait]
impl Resolver for Layered {
    async fn endpoints(
        &self,
        service: &ringfence_policy::ServiceName,
    ) -> Result<Arc<[SocketAddr]>, String> {
        if self.fixed.0.contains_key(&service.to_string()) {
            return self.fixed.endpoints(service).await;
        }
        self.discovery.endpoints(service).await
    }
}

/// Serves `GET /metrics`.
pub async fn serve_metrics(
    telemetry: Arc<Telemetry>,
    listener: TcpListener,
) -> Result<(), crate::MeshError> {
    use tokio::io::AsyncWriteExt;
    loop {
        let (tcp, _) = listener.accept().await?;
        let t = Arc::clone(&telemetry);
        tokio::spawn(async move {
            let mut c = Conn::new(tcp);
            let Ok(Some(head)) = c.read_request(Duration::from_secs(5)).await else {
                return;
            };
            let (status, body) = if head.method == "GET" && head.target == "/metrics" {
                ("200 OK", t.render())
            } else {
                ("404 Not Found", "not found: GET /metrics\n".to_owned())
            };
            let out = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.io.write_all(out.as_bytes()).await;
            let _ = c.io.shutdown().await;
        });
    }
}
