//! Raw TCP: between meshed services, to non-mesh destinations (egress), and from non-mesh
//! clients (ingress) on ports the configuration names.
//!
//! **Between services.** The local workload connects to a loopback port bound to one service
//! (`[[tcp]]`). The outbound side opens mTLS to that service with ALPN `ringfence-tcp`, checking
//! the server's SPIFFE ID as for HTTP. The inbound side decides `Action::"connect"` for the
//! verified caller with Cedar, then answers one verdict line before any payload: `ok\n`, or
//! `denied: <reason>\n` and a close. The outbound side reads that line, so the refusal and its
//! reason reach the caller's proxy log rather than a bare reset, then splices the two streams.
//!
//! **Egress.** A loopback port bound to a named destination outside the mesh (`[[egress]]`,
//! `name = "postgres.external"`, `to = [...]`). Each connection is decided for this workload
//! with [`AccessPolicy::decide_egress`](ringfence_policy::AccessPolicy::decide_egress): a
//! destination no policy permits is closed, whatever the default-deny switch says.
//!
//! **Ingress.** A plain listener in front of the service (`[[ingress]]`), for clients that hold
//! no SVID: only on the ports configured, and only from the client networks listed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ringfence_audit::Decision as AuditDecision;
use ringfence_core::SpiffeId;
use ringfence_policy::{AccessRequest, Action, Refusal, ServiceName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{Mesh, MeshError};
use crate::telemetry::Outcome;

/// The ALPN protocol of a raw TCP connection between proxies.
pub const ALPN_TCP: &[u8] = b"ringfence-tcp";

/// Longest verdict line the outbound side reads.
const MAX_VERDICT: u64 = 1024;

/// A client network, `10.0.0.0/8` or `::1/128` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or `addr`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network (10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        let c = Self { addr, prefix };
        if c.masked(addr) != Some(c.bits()) {
            return Err(format!(
                "{s:?} has host bits set: write the network ({}/{prefix})",
                c.network()
            ));
        }
        Ok(c)
    }

    fn bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    fn mask(&self) -> u128 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (width - u32::from(self.prefix))) & (u128::MAX >> (128 - width))
        }
    }

    fn masked(&self, ip: IpAddr) -> Option<u128> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(a)) => u128::from(u32::from(a)),
            (IpAddr::V6(_), IpAddr::V6(a)) => u128::from(a),
            _ => return None,
        };
        Some(bits & self.mask())
    }

    fn network(&self) -> IpAddr {
        let n = self.bits() & self.mask();
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(u32::try_from(n).unwrap_or(0).into()),
            IpAddr::V6(_) => IpAddr::V6(n.into()),
        }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.masked(ip) == Some(self.bits())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

async fn splice<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

impl Mesh {
    /// Inbound side of a raw TCP connection from `peer` (ALPN `ringfence-tcp`).
    pub(crate) async fn inbound_tcp<S>(&self, mut io: S, peer: SpiffeId, forward: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let callee = self.service().to_string();
        let target = format!("{callee} connect");
        let decision = self.policy().current().decide(&AccessRequest {
            caller: &peer,
            callee: self.service(),
            action: Action::Connect,
            user: None,
        });
        if !decision.allowed {
            let r = Refusal::denied(&decision.reason);
            self.telemetry()
                .count(peer.as_str(), &callee, Outcome::Deny, 403);
            self.telemetry().audit(
                self.event(
                    &peer,
                    "mesh.connect",
                    target,
                    AuditDecision::Deny,
                    &r.reason,
                )
                .with_detail("status", "403"),
            );
            // The peer learns that the policy denied it; which policy is the audit log's.
            let _ = io
                .write_all(format!("denied: {}\n", r.caller_message()).as_bytes())
                .await;
            let _ = io.shutdown().await;
            return;
        }
        let up = match self.connect_local(forward).await {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("the service's local port does not answer: {e}");
                self.telemetry()
                    .count(peer.as_str(), &callee, Outcome::Refused, 502);
                self.telemetry().audit(
                    self.event(&peer, "mesh.connect", target, AuditDecision::Deny, &reason)
                        .with_detail("status", "502"),
                );
                let _ = io
                    .write_all(format!("unavailable: {reason}\n").as_bytes())
                    .await;
                let _ = io.shutdown().await;
                return;
            }
        };
        if decision.denied_by_policy {
            self.telemetry()
                .count(peer.as_str(), &callee, Outcome::DryRunDeny, 200);
            self.telemetry().audit(self.event(
                &peer,
                "mesh.connect",
                target,
                AuditDecision::WouldDeny,
                &decision.reason,
            ));
        } else {
            self.telemetry()
                .count(peer.as_str(), &callee, Outcome::Allow, 200);
            self.telemetry().audit_allow(|| {
                self.event(
                    &peer,
                    "mesh.connect",
                    target,
                    AuditDecision::Allow,
                    &decision.reason,
                )
            });
        }
        if io.write_all(b"ok\n").await.is_err() {
            return;
        }
        splice(io, up).await;
    }

    /// Serves a loopback port whose connections go, as raw TCP over mTLS, to `service`.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        service: ServiceName,
    ) -> Result<(), MeshError> {
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let this = Arc::clone(&self);
            let service = service.clone();
            tokio::spawn(async move { this.outbound_tcp(tcp, &service).await });
        }
    }

    async fn outbound_tcp(&self, local: TcpStream, service: &ServiceName) {
        let me = self.id().as_str().to_owned();
        let name = service.to_string();
        let tls = match self.connect_alpn(service, ALPN_TCP).await {
            Ok(t) => t,
            Err(r) => {
                tracing::warn!(service = %name, reason = %r.reason, "raw TCP connection refused");
                self.telemetry()
                    .count(&me, &name, Outcome::Refused, r.status);
                return;
            }
        };
        let mut tls = BufReader::new(tls);
        let mut line = Vec::new();
        let read = async {
            (&mut tls)
                .take(MAX_VERDICT)
                .read_until(b'\n', &mut line)
                .await
        };
        let verdict = match tokio::time::timeout(self.limits().response, read).await {
            Ok(Ok(_)) => String::from_utf8_lossy(&line).trim_end().to_owned(),
            Ok(Err(e)) => format!("no verdict from {name}: {e}"),
            Err(_) => format!("no verdict from {name} in time"),
        };
        if verdict != "ok" {
            let status = if verdict.starts_with("denied:") {
                403
            } else {
                502
            };
            tracing::warn!(service = %name, reason = %verdict, "raw TCP connection refused");
            self.telemetry().count(
                &me,
                &name,
                if status == 403 {
                    Outcome::Deny
                } else {
                    Outcome::Refused
                },
                status,
            );
            return;
        }
        self.telemetry().count(&me, &name, Outcome::Allow, 200);
        // Bytes the inbound side sent after the verdict are in the buffer: keep them.
        splice(local, tls).await;
    }

    /// Serves a loopback port whose connections go, after the egress decision, to one of `to`.
    pub async fn serve_egress(
        self: Arc<Self>,
        listener: TcpListener,
        name: ServiceName,
        to: Vec<SocketAddr>,
    ) -> Result<(), MeshError> {
        let to: Arc<[SocketAddr]> = to.into();
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let this = Arc::clone(&self);
            let name = name.clone();
            let to = Arc::clone(&to);
            tokio::spawn(async move { this.egress(tcp, &name, &to).await });
        }
    }

    async fn egress(&self, local: TcpStream, name: &ServiceName, to: &[SocketAddr]) {
        let me = self.id().clone();
        let callee = name.to_string();
        let target = format!("{callee} connect");
        let decision = self.policy().current().decide_egress(&AccessRequest {
            caller: &me,
            callee: name,
            action: Action::Connect,
            user: None,
        });
        if !decision.allowed {
            let reason = Refusal::denied(&decision.reason).reason;
            tracing::warn!(destination = %callee, %reason, "egress refused");
            self.telemetry()
                .count(me.as_str(), &callee, Outcome::Deny, 403);
            self.telemetry().audit(
                self.event(&me, "mesh.egress", target, AuditDecision::Deny, &reason)
                    .with_detail("status", "403"),
            );
            return;
        }
        let mut errors = Vec::new();
        let mut up = None;
        for addr in to {
            match self.connect_local(*addr).await {
                Ok(s) => {
                    up = Some(s);
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        let Some(up) = up else {
            let reason = format!("{callee} could not be reached: {}", errors.join("; "));
            tracing::warn!(destination = %callee, %reason, "egress failed");
            self.telemetry()
                .count(me.as_str(), &callee, Outcome::Refused, 502);
            return;
        };
        let (outcome, decision_kind) = if decision.denied_by_policy {
            (Outcome::DryRunDeny, AuditDecision::WouldDeny)
        } else {
            (Outcome::Allow, AuditDecision::Allow)
        };
        self.telemetry().count(me.as_str(), &callee, outcome, 200);
        let event = || {
            self.event(
                &me,
                "mesh.egress",
                target.clone(),
                decision_kind,
                &decision.reason,
            )
        };
        if outcome == Outcome::DryRunDeny {
            self.telemetry().audit(event());
        } else {
            self.telemetry().audit_allow(event);
        }
        splice(local, up).await;
    }

    /// Serves a plain (non-mesh) port in front of the service: clients from `allow_from`
    /// reach `forward`; others are closed and audited.
    pub async fn serve_ingress(
        self: Arc<Self>,
        listener: TcpListener,
        forward: SocketAddr,
        allow_from: Vec<Cidr>,
    ) -> Result<(), MeshError> {
        let port = listener.local_addr()?.port();
        let allow_from: Arc<[Cidr]> = allow_from.into();
        loop {
            let (tcp, addr) = listener.accept().await?;
            let Some(slot) = self.admit_source(addr, port) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let this = Arc::clone(&self);
            let allow_from = Arc::clone(&allow_from);
            tokio::spawn(async move {
                let _slot = slot;
                this.ingress(tcp, addr, port, forward, &allow_from).await;
            });
        }
    }

    async fn ingress(
        &self,
        tcp: TcpStream,
        client: SocketAddr,
        port: u16,
        forward: SocketAddr,
        allow_from: &[Cidr],
    ) {
        let me = self.id().clone();
        let callee = self.service().to_string();
        let target = format!("{callee} ingress :{port}");
        if !allow_from.iter().any(|c| c.contains(client.ip())) {
            let reason = format!(
                "client {} is not in the ingress allow list of port {port}",
                client.ip()
            );
            tracing::info!(%client, port, "plain ingress refused");
            self.telemetry()
                .count("external", &callee, Outcome::Deny, 403);
            self.telemetry().audit_from(
                client.ip(),
                self.event(&me, "mesh.ingress", target, AuditDecision::Deny, &reason)
                    .with_detail("client", client.to_string())
                    .with_detail("status", "403"),
            );
            return;
        }
        let up = match self.connect_local(forward).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%client, error = %e, "plain ingress: the service does not answer");
                self.telemetry()
                    .count("external", &callee, Outcome::Refused, 502);
                return;
            }
        };
        self.telemetry()
            .count("external", &callee, Outcome::Allow, 200);
        splice(tcp, up).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err(),
            "\"10.0.0.1/8\" has host bits set: write the network (10.0.0.0/8)"
        );
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(Cidr::parse("example.org").is_err());
    }
}
