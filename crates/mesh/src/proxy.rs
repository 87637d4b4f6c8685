//! The two halves of the proxy.
//!
//! **Inbound** (beside the called service): an mTLS listener that accepts any SVID of the
//! trust domain, then for every request: the normalizer, the `Host` check, the transaction
//! token and its call chain, the Cedar decision, and only then the application's local port.
//! The application receives the normal path, `ringfence-caller: <SPIFFE ID>` and, with a
//! verified token, `ringfence-user: <sub>`; those two fields are never taken from the caller.
//!
//! **Outbound** (beside the caller): a loopback listener that reads the `Host` as
//! `<service>.<namespace>`, finds its endpoints, balances across them, originates mTLS that
//! accepts only the SPIFFE ID of that service, and signs the call-chain link when the request
//! carries a transaction token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ringfence_audit::{Decision as AuditDecision, Event};
use ringfence_core::{Clock, SpiffeId, TrustDomain};
use ringfence_identity::jwt::JwtBundle;
use ringfence_identity::tls::{PeerPolicy, spiffe_id_of};
use ringfence_identity::txn;
use ringfence_identity::workload_api::X509Material;
use ringfence_policy::{
    AccessPolicy, AccessRequest, Action, Method, Refusal, ServiceName, UserContext,
    check_authority, normalize_target, request_framing,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::h1::{
    BodyFraming, Conn, H1Error, RequestHead, encode_request, encode_response, refusal_response,
    response_framing,
};
use crate::telemetry::{Outcome, Telemetry};

/// Where a service's endpoints come from.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// The mesh addresses of `service`'s endpoints (may be empty), or why they are not known.
    async fn endpoints(&self, service: &ServiceName) -> Result<Arc<[SocketAddr]>, String>;
}

/// Endpoints from configuration.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver(pub HashMap<String, Vec<SocketAddr>>);

#[async_trait::async_trait]
impl Resolver for StaticResolver {
    async fn endpoints(&self, service: &ServiceName) -> Result<Arc<[SocketAddr]>, String> {
        Ok(self
            .0
            .get(&service.to_string())
            .map(|v| Arc::from(v.as_slice()))
            .unwrap_or_else(|| Arc::from(Vec::new())))
    }
}

/// The service-access policy in force; replaced whole, read at every request.
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<RwLock<Arc<AccessPolicy>>>);

impl PolicyHandle {
    /// Starts with `policy`.
    pub fn new(policy: AccessPolicy) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy now.
    pub fn current(&self) -> Arc<AccessPolicy> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces it; live connections use the new one from their next request.
    pub fn replace(&self, policy: AccessPolicy) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
    }
}

/// Timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
    /// How long an upstream may take to start its response.
    pub response: Duration,
    /// How long connecting (and the TLS handshake) may take.
    pub connect: Duration,
    /// Connections one client may hold open at once: a plain ingress client by address, a
    /// mesh peer by its verified SPIFFE ID. More are closed at once (counted and audited).
    pub per_source: usize,
    /// Inbound connections one address may hold open while their TLS handshake is under way
    /// (before anyone is authenticated); more are closed at once.
    pub handshakes_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            response: Duration::from_secs(60),
            connect: Duration::from_secs(5),
            per_source: 512,
            handshakes_per_source: 64,
        }
    }
}

/// Open connections per source address.
#[derive(Debug, Default)]
pub(crate) struct SourceCounts(Mutex<HashMap<String, usize>>);

/// One open connection from an address; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    counts: Arc<SourceCounts>,
    key: String,
}

impl SourceCounts {
    /// A slot for `key` (an address, or a verified SPIFFE ID), unless it already holds `max`.
    pub(crate) fn take(self: &Arc<Self>, key: String, max: usize) -> Option<SourceSlot> {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: Arc::clone(self),
            key,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Fields the caller may not set: the inbound proxy sets them from what it verified.
pub(crate) const OWN_FIELDS: [&str; 2] = ["ringfence-caller", "ringfence-user"];

/// A client TLS configuration's key: the SPIFFE ID it accepts and the ALPN it offers.
type ClientKey = (String, &'static [u8]);

/// One proxy: its identity, policy, keys and counters.
#[derive(Debug)]
pub struct Mesh {
    me: SpiffeId,
    service: ServiceName,
    trust_domain: TrustDomain,
    material: watch::Receiver<Option<X509Material>>,
    policy: PolicyHandle,
    tokens: Option<JwtBundle>,
    resolver: Arc<dyn Resolver>,
    telemetry: Arc<Telemetry>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    next: AtomicUsize,
    clients: Mutex<HashMap<ClientKey, Arc<rustls::ClientConfig>>>,
    h2_upstreams: Mutex<HashMap<String, Arc<crate::h2::Upstream>>>,
    sources: Arc<SourceCounts>,
    handshaking: Arc<SourceCounts>,
}

/// What a proxy is built from.
#[derive(Debug)]
pub struct MeshParts {
    /// The workload's SVID and bundle (followed: rotation needs no restart).
    pub material: watch::Receiver<Option<X509Material>>,
    /// The service-access policy.
    pub policy: PolicyHandle,
    /// The token service's keys; without them a request carrying a token is refused.
    pub tokens: Option<JwtBundle>,
    /// Endpoints.
    pub resolver: Arc<dyn Resolver>,
    /// Counters and audit.
    pub telemetry: Arc<Telemetry>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Timeouts.
    pub limits: Limits,
}

/// Why a proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// No SVID yet, or one that is not a service's.
    #[error("mesh identity: {0}")]
    Identity(String),
    /// TLS setup failed.
    #[error("mesh TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Listening failed.
    #[error("mesh listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A request the inbound side let through.
struct Admitted {
    target: String,
    extra: Vec<(&'static str, Vec<u8>)>,
    framing: BodyFraming,
    decision_reason: String,
    outcome: Outcome,
    action: String,
}

impl Mesh {
    /// A proxy for the workload whose SVID `parts.material` holds (it must be
    /// `/ns/<namespace>/svc/<service>`).
    pub fn new(parts: MeshParts) -> Result<Self, MeshError> {
        let m = parts
            .material
            .borrow()
            .clone()
            .filter(|m| !m.cert_der.is_empty())
            .ok_or_else(|| MeshError::Identity("no SVID yet".into()))?;
        let service = ServiceName::of(&m.spiffe_id).ok_or_else(|| {
            MeshError::Identity(format!(
                "{} is not a service identity /ns/<namespace>/svc/<service>",
                m.spiffe_id
            ))
        })?;
        Ok(Self {
            me: m.spiffe_id.clone(),
            service,
            trust_domain: m.trust_domain.clone(),
            material: parts.material,
            policy: parts.policy,
            tokens: parts.tokens,
            resolver: parts.resolver,
            telemetry: parts.telemetry,
            clock: parts.clock,
            limits: parts.limits,
            next: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            h2_upstreams: Mutex::new(HashMap::new()),
            sources: Arc::default(),
            handshaking: Arc::default(),
        })
    }

    /// This proxy's workload.
    pub fn id(&self) -> &SpiffeId {
        &self.me
    }

    /// This proxy's service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The policy handle.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// The timeouts.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for one more connection from a plain client at `addr` on `port` (see
    /// [`Limits::per_source`]), or `None` (counted and audited).
    pub(crate) fn admit_source(&self, addr: SocketAddr, port: u16) -> Option<SourceSlot> {
        self.admit_counted(
            &self.sources,
            addr,
            port,
            self.limits.per_source,
            "connections",
        )
    }

    /// A slot for one more inbound handshake from `addr` (see
    /// [`Limits::handshakes_per_source`]), or `None` (counted and audited).
    fn admit_handshake(&self, addr: SocketAddr, port: u16) -> Option<SourceSlot> {
        self.admit_counted(
            &self.handshaking,
            addr,
            port,
            self.limits.handshakes_per_source,
            "unfinished handshakes",
        )
    }

    fn admit_counted(
        &self,
        counts: &Arc<SourceCounts>,
        addr: SocketAddr,
        port: u16,
        max: usize,
        what: &str,
    ) -> Option<SourceSlot> {
        let slot = counts.take(addr.ip().to_string(), max);
        if slot.is_none() {
            self.telemetry.connection_refused();
            let reason = format!(
                "{} already holds {max} {what} to port {port}, the most one address may",
                addr.ip()
            );
            tracing::debug!(%addr, "{reason}");
            self.telemetry.audit_from(
                addr.ip(),
                self.event(
                    &self.me,
                    "mesh.connection",
                    format!("peer {addr}"),
                    AuditDecision::Deny,
                    &reason,
                ),
            );
        }
        slot
    }

    /// A slot for one more connection of the verified `peer`, or `None` (counted and audited).
    fn admit_peer(&self, peer: &SpiffeId, addr: SocketAddr, port: u16) -> Option<SourceSlot> {
        let slot = self
            .sources
            .take(format!("id {peer}"), self.limits.per_source);
        if slot.is_none() {
            self.telemetry.connection_refused();
            let reason = format!(
                "{peer} already holds {} connections to port {port}, the most one workload may",
                self.limits.per_source
            );
            tracing::debug!(%addr, "{reason}");
            self.telemetry.audit(self.event(
                peer,
                "mesh.connection",
                format!("peer {addr}"),
                AuditDecision::Deny,
                &reason,
            ));
        }
        slot
    }

    /// A `mesh.request` event by `peer`.
    pub(crate) fn audit_event(
        &self,
        peer: &SpiffeId,
        target: String,
        decision: AuditDecision,
        reason: &str,
    ) -> Event {
        self.event(peer, "mesh.request", target, decision, reason)
    }

    /// The shared HTTP/2 connection to `service`.
    pub(crate) fn h2_upstream(&self, service: &ServiceName) -> Arc<crate::h2::Upstream> {
        let mut m = self
            .h2_upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(m.entry(service.to_string()).or_default())
    }

    /// A loopback connection to the service (or a configured destination), within the
    /// connect limit.
    pub(crate) async fn connect_local(&self, to: SocketAddr) -> Result<TcpStream, String> {
        match tokio::time::timeout(self.limits.connect, TcpStream::connect(to)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(format!("{to}: {e}")),
            Err(_) => Err(format!("{to}: timed out")),
        }
    }

    pub(crate) fn event(
        &self,
        actor: &SpiffeId,
        action: &str,
        target: String,
        decision: AuditDecision,
        reason: &str,
    ) -> Event {
        Event::new(
            self.clock.now(),
            actor.clone(),
            action,
            target,
            decision,
            reason,
        )
        .with_detail("proxy", self.me.as_str())
    }

    /// The inbound TLS configuration: this SVID, any client SVID of the trust domain; ALPN
    /// `h2` and `http/1.1`, and `ringfence-tcp` only if `raw_tcp` (a client asking for it
    /// otherwise fails the handshake).
    pub fn inbound_tls(&self, raw_tcp: bool) -> Result<rustls::ServerConfig, MeshError> {
        let mut cfg = ringfence_identity::tls::server_config(
            self.material.clone(),
            PeerPolicy::AnyInTrustDomain,
            Arc::clone(&self.clock),
        )?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if raw_tcp {
            cfg.alpn_protocols.push(crate::tcp::ALPN_TCP.to_vec());
        }
        Ok(cfg)
    }

    /// Serves inbound mTLS on `listener`, forwarding admitted requests to `forward`. Raw TCP
    /// is not accepted.
    pub async fn serve_inbound(
        self: Arc<Self>,
        listener: TcpListener,
        forward: SocketAddr,
    ) -> Result<(), MeshError> {
        self.serve_inbound_split(listener, forward, None).await
    }

    /// Serves inbound mTLS on `listener`: HTTP to `forward` and, with `tcp_forward`, admitted
    /// raw TCP connections (ALPN `ringfence-tcp`) there. Raw TCP never goes to the HTTP port:
    /// it would skip the normalizer and the per-request decision, and could set the fields the
    /// proxy vouches for (`ringfence-caller`).
    pub async fn serve_inbound_split(
        self: Arc<Self>,
        listener: TcpListener,
        forward: SocketAddr,
        tcp_forward: Option<SocketAddr>,
    ) -> Result<(), MeshError> {
        if tcp_forward == Some(forward) {
            return Err(MeshError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "raw TCP may not be forwarded to the HTTP port",
            )));
        }
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(self.inbound_tls(tcp_forward.is_some())?));
        let port = listener.local_addr()?.port();
        loop {
            let (tcp, addr) = listener.accept().await?;
            let Some(handshake) = self.admit_handshake(addr, port) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let this = Arc::clone(&self);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let accepted =
                    tokio::time::timeout(this.limits.connect * 2, acceptor.accept(tcp)).await;
                drop(handshake);
                match accepted {
                    Ok(Ok(tls)) => {
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(spiffe_id_of);
                        let Some(peer) = peer else { return };
                        let Some(_slot) = this.admit_peer(&peer, addr, port) else {
                            return;
                        };
                        match tls.get_ref().1.alpn_protocol() {
                            Some(b"h2") => this.inbound_h2(tls, peer, forward).await,
                            Some(crate::tcp::ALPN_TCP) => {
                                if let Some(to) = tcp_forward {
                                    this.inbound_tcp(tls, peer, to).await;
                                }
                            }
                            _ => {
                                this.inbound_connection(Conn::new(tls), &peer, forward)
                                    .await;
                            }
                        }
                    }
                    Ok(Err(e)) => this.handshake_refused(addr, &e.to_string()),
                    Err(_) => this.handshake_refused(addr, "handshake not completed in time"),
                }
            });
        }
    }

    fn handshake_refused(&self, addr: SocketAddr, reason: &str) {
        self.telemetry.handshake_failed();
        tracing::info!(%addr, reason, "mesh handshake refused");
        self.telemetry.audit_from(
            addr.ip(),
            self.event(
                &self.me,
                "mesh.handshake",
                format!("peer {addr}"),
                AuditDecision::Deny,
                reason,
            ),
        );
    }

    async fn inbound_connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut down: Conn<S>,
        peer: &SpiffeId,
        forward: SocketAddr,
    ) {
        let mut up: Option<Conn<TcpStream>> = None;
        loop {
            let head = match down.read_request(self.limits.idle).await {
                Ok(Some(h)) => h,
                Ok(None) | Err(H1Error::Io(_) | H1Error::Upstream(_)) => return,
                Err(H1Error::Refused(r)) => {
                    self.refuse(&mut down, peer, "malformed", &r, Outcome::Refused)
                        .await;
                    return;
                }
            };
            let admitted = match self.admit(peer, &head) {
                Ok(a) => a,
                Err((outcome, action, r)) => {
                    self.refuse(&mut down, peer, &action, &r, outcome).await;
                    return;
                }
            };
            if up.is_none() {
                match self.connect_local(forward).await {
                    Ok(s) => up = Some(Conn::new(s)),
                    Err(e) => {
                        // The port is for the operator, not the caller.
                        tracing::warn!(port = %forward, error = %e, "the service's local port does not answer");
                        let r = Refusal {
                            status: 502,
                            reason: "the service does not answer on its local port".into(),
                        };
                        self.refuse(&mut down, peer, &admitted.action, &r, Outcome::Refused)
                            .await;
                        return;
                    }
                }
            }
            let Some(u) = up.as_mut() else { return };
            let extra: Vec<(&str, &[u8])> = admitted
                .extra
                .iter()
                .map(|(n, v)| (*n, v.as_slice()))
                .collect();
            let encoded = encode_request(
                &head,
                &admitted.target,
                &OWN_FIELDS,
                &extra,
                admitted.framing,
            );
            let result =
                exchange(&mut down, u, &head, encoded, admitted.framing, self.limits).await;
            match result {
                Ok((status, close)) => {
                    self.telemetry.count(
                        peer.as_str(),
                        &self.service.to_string(),
                        admitted.outcome,
                        status,
                    );
                    if admitted.outcome == Outcome::DryRunDeny {
                        self.telemetry.audit(self.event(
                            peer,
                            "mesh.request",
                            format!("{} {}", self.service, admitted.action),
                            AuditDecision::WouldDeny,
                            &admitted.decision_reason,
                        ));
                    } else {
                        self.telemetry.audit_allow(|| {
                            self.event(
                                peer,
                                "mesh.request",
                                format!("{} {}", self.service, admitted.action),
                                AuditDecision::Allow,
                                &admitted.decision_reason,
                            )
                        });
                    }
                    if close {
                        return;
                    }
                }
                Err(ExchangeError::BeforeResponse(e)) => {
                    let r = Refusal {
                        status: 502,
                        reason: format!("the service did not answer: {e}"),
                    };
                    self.refuse(&mut down, peer, &admitted.action, &r, Outcome::Refused)
                        .await;
                    return;
                }
                Err(ExchangeError::Client(r)) => {
                    self.refuse(&mut down, peer, &admitted.action, &r, Outcome::Refused)
                        .await;
                    return;
                }
                Err(ExchangeError::After) => return,
            }
        }
    }

    /// Answers `r`, counts it, audits it.
    async fn refuse<S: AsyncWrite + Unpin>(
        &self,
        down: &mut Conn<S>,
        peer: &SpiffeId,
        action: &str,
        r: &Refusal,
        outcome: Outcome,
    ) {
        let _ = down
            .io
            .write_all(&refusal_response(r.status, r.caller_message()))
            .await;
        let _ = down.io.flush().await;
        let _ = down.io.shutdown().await;
        self.telemetry
            .count(peer.as_str(), &self.service.to_string(), outcome, r.status);
        self.telemetry.audit(
            self.event(
                peer,
                "mesh.request",
                format!("{} {action}", self.service),
                AuditDecision::Deny,
                &r.reason,
            )
            .with_detail("status", r.status.to_string()),
        );
    }

    /// Everything the inbound side checks before forwarding, in order.
    fn admit(
        &self,
        peer: &SpiffeId,
        head: &RequestHead,
    ) -> Result<Admitted, (Outcome, String, Refusal)> {
        let refused = |action: &str, r: Refusal| (Outcome::Refused, action.to_owned(), r);
        let raw_action = format!(
            "{} {}",
            head.method.chars().take(16).collect::<String>(),
            head.target.chars().take(128).collect::<String>()
        );
        let method = Method::parse(&head.method).map_err(|r| refused(&raw_action, r))?;
        let target = normalize_target(&head.target).map_err(|r| refused(&raw_action, r))?;
        let action_text = format!("{method} {}", target.path);
        let framing = request_framing(head.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
            .map_err(|r| refused(&action_text, r))?;
        let host = head
            .one("host")
            .map_err(|r| refused(&action_text, r))?
            .map(|h| String::from_utf8_lossy(h).into_owned());
        check_authority(host.as_deref(), &self.service.to_string())
            .map_err(|r| refused(&action_text, r))?;
        if head
            .one("upgrade")
            .map_err(|r| refused(&action_text, r))?
            .is_some()
        {
            return Err(refused(
                &action_text,
                Refusal {
                    status: 501,
                    reason: "protocol upgrades are not proxied".into(),
                },
            ));
        }
        let user = head
            .one(txn::TOKEN_HEADER)
            .and_then(|t| Ok((t, head.one(txn::CHAIN_HEADER)?)))
            .and_then(|(t, c)| self.verify_ticket(peer, t, c))
            .map_err(|r| refused(&action_text, r))?;
        let decision = self.policy.current().decide(&AccessRequest {
            caller: peer,
            callee: &self.service,
            action: Action::Http {
                method,
                path: &target.path,
            },
            user: user.as_ref(),
        });
        if !decision.allowed {
            return Err((
                Outcome::Deny,
                action_text,
                Refusal::denied(&decision.reason),
            ));
        }
        let mut extra: Vec<(&'static str, Vec<u8>)> =
            vec![("ringfence-caller", peer.as_str().as_bytes().to_vec())];
        if let Some(u) = &user {
            extra.push(("ringfence-user", u.subject.as_bytes().to_vec()));
        }
        Ok(Admitted {
            target: target.to_origin_form(),
            extra,
            framing: framing.into(),
            outcome: if decision.denied_by_policy {
                Outcome::DryRunDeny
            } else {
                Outcome::Allow
            },
            decision_reason: decision.reason,
            action: action_text,
        })
    }

    /// The user a request carries, if it carries a token: the token and its call chain must
    /// verify, with `peer` as the last hop and this workload as the callee.
    pub(crate) fn verify_ticket(
        &self,
        peer: &SpiffeId,
        token: Option<&[u8]>,
        chain: Option<&[u8]>,
    ) -> Result<Option<UserContext>, Refusal> {
        let unauthorized = |reason: String| Refusal {
            status: 401,
            reason,
        };
        let Some(token) = token else {
            if chain.is_some() {
                return Err(unauthorized("a call chain without a txn-token".into()));
            }
            return Ok(None);
        };
        let token =
            std::str::from_utf8(token).map_err(|_| unauthorized("txn-token is not text".into()))?;
        let keys = self.tokens.as_ref().ok_or_else(|| {
            unauthorized("this proxy has no token service keys: it accepts no txn-token".into())
        })?;
        let now = self.clock.now();
        let verified = txn::verify_token(token.trim_ascii(), keys, &self.trust_domain, now)
            .map_err(|e| unauthorized(e.to_string()))?;
        let chain = chain
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        let links: Vec<&str> = chain
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let bundle = self
            .material
            .borrow()
            .as_ref()
            .map(|m| m.bundle_der.clone())
            .unwrap_or_default();
        txn::verify_chain(
            &verified,
            &links,
            peer,
            &self.me,
            &bundle,
            &self.trust_domain,
            now,
        )
        .map_err(|e| unauthorized(e.to_string()))?;
        Ok(Some(UserContext {
            subject: verified.subject,
            txn: verified.txn,
            purpose: verified.purpose,
            ctx: verified.context,
        }))
    }

    fn client_tls(
        &self,
        target: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (target.as_str().to_owned(), alpn);
        if let Some(c) = clients.get(&key) {
            return Ok(Arc::clone(c));
        }
        let mut cfg = ringfence_identity::tls::client_config(
            self.material.clone(),
            PeerPolicy::OneOf(vec![target.clone()]),
            Arc::clone(&self.clock),
        )?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let cfg = Arc::new(cfg);
        clients.insert(key, Arc::clone(&cfg));
        Ok(cfg)
    }

    /// Opens mTLS (HTTP/1.1) to one of `service`'s endpoints, trying each once, round robin.
    async fn connect(
        &self,
        service: &ServiceName,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Refusal> {
        self.connect_alpn(service, b"http/1.1").await
    }

    /// Opens mTLS offering `alpn` to one of `service`'s endpoints, trying each once, round
    /// robin.
    pub(crate) async fn connect_alpn(
        &self,
        service: &ServiceName,
        alpn: &'static [u8],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Refusal> {
        let target = self
            .trust_domain
            .workload(&["ns", service.namespace(), "svc", service.name()])
            .map_err(|e| Refusal {
                status: 400,
                reason: format!("{service}: {e}"),
            })?;
        let endpoints = self
            .resolver
            .endpoints(service)
            .await
            .map_err(|reason| Refusal {
                status: 503,
                reason,
            })?;
        if endpoints.is_empty() {
            return Err(Refusal {
                status: 503,
                reason: format!("no endpoints for {service}"),
            });
        }
        let cfg = self.client_tls(&target, alpn).map_err(|e| Refusal {
            status: 502,
            reason: format!("TLS setup: {e}"),
        })?;
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let name =
            rustls::pki_types::ServerName::try_from(service.to_string()).map_err(|e| Refusal {
                status: 400,
                reason: format!("{service}: {e}"),
            })?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..endpoints.len() {
            let Some(addr) = endpoints.get((start + i) % endpoints.len()) else {
                continue;
            };
            let attempt = async {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                connector.connect(name.clone(), tcp).await
            };
            match tokio::time::timeout(self.limits.connect, attempt).await {
                Ok(Ok(tls)) => return Ok(tls),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: timed out")),
            }
        }
        Err(Refusal {
            status: 502,
            reason: format!(
                "no endpoint of {service} ({target}) could be reached: {}",
                errors.join("; ")
            ),
        })
    }

    /// Serves the outbound loopback listener.
    pub async fn serve_outbound(self: Arc<Self>, listener: TcpListener) -> Result<(), MeshError> {
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                if starts_with_h2_preface(&tcp).await {
                    this.outbound_h2(tcp).await;
                } else {
                    this.outbound_connection(Conn::new(tcp)).await;
                }
            });
        }
    }

    async fn outbound_connection(&self, mut down: Conn<TcpStream>) {
        let mut up: Option<(
            ServiceName,
            Conn<tokio_rustls::client::TlsStream<TcpStream>>,
        )> = None;
        let me = self.me.clone();
        loop {
            let head = match down.read_request(self.limits.idle).await {
                Ok(Some(h)) => h,
                Ok(None) | Err(H1Error::Io(_) | H1Error::Upstream(_)) => return,
                Err(H1Error::Refused(r)) => {
                    self.answer_local(&mut down, "?", &r).await;
                    return;
                }
            };
            let (service, encoded, framing) = match self.outbound_request(&head) {
                Ok(x) => x,
                Err((svc, r)) => {
                    self.answer_local(&mut down, &svc, &r).await;
                    return;
                }
            };
            if up.as_ref().map(|(s, _)| s) != Some(&service) {
                match self.connect(&service).await {
                    Ok(tls) => up = Some((service.clone(), Conn::new(tls))),
                    Err(r) => {
                        self.answer_local(&mut down, &service.to_string(), &r).await;
                        return;
                    }
                }
            }
            let Some((_, u)) = up.as_mut() else { return };
            match exchange(&mut down, u, &head, encoded, framing, self.limits).await {
                Ok((status, close)) => {
                    self.telemetry
                        .count(me.as_str(), &service.to_string(), Outcome::Allow, status);
                    if close {
                        return;
                    }
                }
                Err(ExchangeError::BeforeResponse(e)) => {
                    let r = Refusal {
                        status: 502,
                        reason: format!("{service} did not answer: {e}"),
                    };
                    self.answer_local(&mut down, &service.to_string(), &r).await;
                    return;
                }
                Err(ExchangeError::Client(r)) => {
                    self.answer_local(&mut down, &service.to_string(), &r).await;
                    return;
                }
                Err(ExchangeError::After) => return,
            }
        }
    }

    async fn answer_local(&self, down: &mut Conn<TcpStream>, service: &str, r: &Refusal) {
        let _ = down
            .io
            .write_all(&refusal_response(r.status, r.caller_message()))
            .await;
        let _ = down.io.shutdown().await;
        self.telemetry
            .count(self.me.as_str(), service, Outcome::Refused, r.status);
    }

    /// The outbound checks: the same normalizer, a `Host` that names a service, and the
    /// call-chain link for a token.
    fn outbound_request(
        &self,
        head: &RequestHead,
    ) -> Result<(ServiceName, Vec<u8>, BodyFraming), (String, Refusal)> {
        let q = |r| ("?".to_owned(), r);
        Method::parse(&head.method).map_err(q)?;
        let (authority, origin) = absolute_form(&head.target).map_err(q)?;
        let target = normalize_target(origin).map_err(q)?;
        let framing: BodyFraming =
            request_framing(head.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
                .map_err(q)?
                .into();
        let given = head
            .one("host")
            .map_err(q)?
            .map(|h| String::from_utf8_lossy(h).into_owned());
        let host = match (given, authority) {
            (Some(h), Some(a)) if h != a => {
                return Err(q(Refusal {
                    status: 400,
                    reason: format!(
                        "Host {:?} differs from the request target's authority {:?}",
                        h.chars().take(64).collect::<String>(),
                        a.chars().take(64).collect::<String>()
                    ),
                }));
            }
            (Some(h), _) => h,
            (None, Some(a)) => a.to_owned(),
            (None, None) => {
                return Err(q(Refusal {
                    status: 400,
                    reason: "missing Host: name the service as <service>.<namespace>".into(),
                }));
            }
        };
        let add_host = head.one("host").map_err(q)?.is_none();
        let bare = match host.rsplit_once(':') {
            Some((h, port))
                if !port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                h
            }
            Some(_) => {
                return Err(q(Refusal {
                    status: 400,
                    reason: format!(
                        "Host {:?}: a port is 1 to 5 digits",
                        host.chars().take(64).collect::<String>()
                    ),
                }));
            }
            None => host.as_str(),
        };
        let service = ServiceName::parse(bare).map_err(|_| {
            q(Refusal {
                status: 400,
                reason: format!(
                    "Host {:?} does not name a mesh service <service>.<namespace> (lower case)",
                    host.chars().take(64).collect::<String>()
                ),
            })
        })?;
        if head.one("upgrade").map_err(q)?.is_some() {
            return Err(q(Refusal {
                status: 501,
                reason: "protocol upgrades are not proxied".into(),
            }));
        }
        let mut extra: Vec<(&str, Vec<u8>)> = Vec::new();
        if add_host {
            extra.push(("host", host.clone().into_bytes()));
        }
        if let Some(token) = head.one(txn::TOKEN_HEADER).map_err(q)? {
            let link = self.link_for(token, &service).map_err(q)?;
            let chain = match head.one(txn::CHAIN_HEADER).map_err(q)? {
                Some(c) if !c.is_empty() => format!("{},{link}", String::from_utf8_lossy(c)),
                _ => link,
            };
            extra.push((txn::CHAIN_HEADER, chain.into_bytes()));
        }
        let extra_ref: Vec<(&str, &[u8])> = extra.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let encoded = encode_request(
            head,
            &target.to_origin_form(),
            &[txn::CHAIN_HEADER],
            &extra_ref,
            framing,
        );
        Ok((service, encoded, framing))
    }

    pub(crate) fn link_for(&self, token: &[u8], service: &ServiceName) -> Result<String, Refusal> {
        let unauthorized = |reason: String| Refusal {
            status: 401,
            reason,
        };
        let token =
            std::str::from_utf8(token).map_err(|_| unauthorized("txn-token is not text".into()))?;
        let keys = self.tokens.as_ref().ok_or_else(|| {
            unauthorized("this proxy has no token service keys: it forwards no txn-token".into())
        })?;
        let now = self.clock.now();
        let verified = txn::verify_token(token.trim_ascii(), keys, &self.trust_domain, now)
            .map_err(|e| unauthorized(e.to_string()))?;
        let target = self
            .trust_domain
            .workload(&["ns", service.namespace(), "svc", service.name()])
            .map_err(|e| unauthorized(e.to_string()))?;
        let material = self
            .material
            .borrow()
            .clone()
            .ok_or_else(|| unauthorized("no SVID".into()))?;
        txn::sign_link(&verified, &material, &target, now).map_err(|e| unauthorized(e.to_string()))
    }
}

/// Splits an absolute-form target (`http://orders.shop/path`, as a client sends it to a
/// proxy named in `HTTP_PROXY`) into its authority and its origin form; an origin-form target
/// passes through with no authority. Only `http://` is taken: the mesh adds the TLS, and
/// userinfo, an empty authority or one carrying `?` or `#` are refused.
fn absolute_form(target: &str) -> Result<(Option<&str>, &str), Refusal> {
    let scheme = |s: &str| {
        target
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    };
    if scheme("https://") {
        return Err(Refusal {
            status: 400,
            reason: "an https:// target through the outbound side: send http://, the mesh adds the TLS (with both SVIDs)".into(),
        });
    }
    if !scheme("http://") {
        return Ok((None, target));
    }
    let rest = target.get("http://".len()..).unwrap_or("");
    let (authority, origin) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', '?', '#', '\\']) {
        return Err(Refusal {
            status: 400,
            reason: format!(
                "request target authority {:?}: name the service as <service>.<namespace>",
                authority.chars().take(64).collect::<String>()
            ),
        });
    }
    Ok((Some(authority), origin))
}

/// Whether the client opened with the HTTP/2 preface (prior knowledge), looking without
/// reading.
async fn starts_with_h2_preface(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        let seen = buf.get(..n).unwrap_or_default();
        if n == 0 || !crate::h2::PREFACE.starts_with(seen) {
            return false;
        }
        if n == crate::h2::PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How an exchange failed.
enum ExchangeError {
    /// The upstream failed before a response started: the client can still be answered.
    BeforeResponse(String),
    /// The client's body was malformed.
    Client(Refusal),
    /// Something failed after the response started: close.
    After,
}

/// Sends the request (`encoded` head, then the body of `framing`) upstream and relays the
/// response. Returns the status and whether the connection must close.
async fn exchange<D, U>(
    down: &mut Conn<D>,
    up: &mut Conn<U>,
    head: &RequestHead,
    encoded: Vec<u8>,
    framing: BodyFraming,
    limits: Limits,
) -> Result<(u16, bool), ExchangeError>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let before = |e: std::io::Error| ExchangeError::BeforeResponse(e.to_string());
    // A small body that came with the head goes out with it, in one write (one TLS record).
    let mut encoded = encoded;
    let whole = down.take_buffered_body(framing);
    if let Some(body) = &whole {
        encoded.extend_from_slice(body);
    }
    up.io.write_all(&encoded).await.map_err(before)?;
    if whole.is_none() {
        let expects_continue = head
            .all("expect")
            .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            down.io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ExchangeError::After)?;
        }
        match down.relay_body(framing, &mut up.io).await {
            Ok(()) => {}
            Err(H1Error::Refused(r)) => return Err(ExchangeError::Client(r)),
            Err(e) => return Err(ExchangeError::BeforeResponse(e.to_string())),
        }
    }
    up.io.flush().await.map_err(before)?;
    let response = loop {
        let r = up
            .read_response(limits.response)
            .await
            .map_err(|e| ExchangeError::BeforeResponse(e.to_string()))?;
        if (100..200).contains(&r.status) && r.status != 101 {
            // Interim responses: the proxy already answered any 100-continue itself.
            continue;
        }
        break r;
    };
    if response.status == 101 {
        return Err(ExchangeError::BeforeResponse(
            "the service switched protocols, which is not proxied".into(),
        ));
    }
    let is_head = head.method == "HEAD";
    let rframing = response_framing(&response, is_head)
        .map_err(|e| ExchangeError::BeforeResponse(e.to_string()))?;
    let close = head.wants_close()
        || response.minor == 0
        || rframing == BodyFraming::UntilClose
        || response
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case(b"close"));
    let out_framing = if rframing == BodyFraming::UntilClose {
        BodyFraming::Chunked
    } else {
        rframing
    };
    let mut encoded = encode_response(&response, out_framing, close);
    let whole = up.take_buffered_body(rframing);
    if let Some(body) = &whole {
        encoded.extend_from_slice(body);
    }
    down.io
        .write_all(&encoded)
        .await
        .map_err(|_| ExchangeError::After)?;
    if whole.is_some() {
        // Sent with the head.
    } else if rframing == BodyFraming::UntilClose {
        // Re-frame a close-delimited body as chunks so the client knows where it ends.
        up.relay_until_close_as_chunks(&mut down.io)
            .await
            .map_err(|_| ExchangeError::After)?;
    } else {
        up.relay_body(rframing, &mut down.io)
            .await
            .map_err(|_| ExchangeError::After)?;
    }
    down.io.flush().await.map_err(|_| ExchangeError::After)?;
    Ok((response.status, close))
}
