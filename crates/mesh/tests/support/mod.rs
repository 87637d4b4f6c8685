//! A test trust domain (CA made here, with rcgen, so tests can also make the certificates the
//! real CA never would), a backend that echoes what it received, and proxies on loopback.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use ringfence_audit::{AuditSink, Event, MemorySink};
use ringfence_core::{Clock, SpiffeId, SystemClock, TrustDomain};
use ringfence_identity::jwt::JwtBundle;
use ringfence_identity::txn::{MintRequest, TokenService};
use ringfence_identity::workload_api::X509Material;
use ringfence_mesh::h1::Conn;
use ringfence_mesh::{Limits, Mesh, MeshParts, PolicyHandle, StaticResolver, Telemetry};
use ringfence_policy::{AccessPolicy, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const WEB: &str = "spiffe://example.org/ns/shop/svc/web";
pub const ORDERS: &str = "spiffe://example.org/ns/shop/svc/orders";
pub const EDGE: &str = "spiffe://example.org/ns/shop/svc/edge";
pub const EVIL: &str = "spiffe://example.org/ns/shop/svc/evil";

pub fn now_secs() -> i64 {
    i64::try_from(SystemClock.now().as_secs()).unwrap()
}

pub struct Pki {
    pub td: TrustDomain,
    pub ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// How to make a leaf.
pub struct Leaf<'a> {
    pub uri: &'a str,
    pub not_before: i64,
    pub not_after: i64,
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
}

impl<'a> Leaf<'a> {
    pub fn new(uri: &'a str) -> Self {
        Self {
            uri,
            not_before: now_secs() - 60,
            not_after: now_secs() + 3600,
            ekus: vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        }
    }
}

impl Pki {
    pub fn new(td: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now_secs() - 86_400).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(now_secs() + 86_400).unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self {
            td: TrustDomain::parse(td).unwrap(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(p, key),
        }
    }

    pub fn svid(&self, id: &str) -> X509Material {
        self.leaf(Leaf::new(id))
    }

    pub fn leaf(&self, leaf: Leaf<'_>) -> X509Material {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI(leaf.uri.try_into().unwrap())];
        p.extended_key_usages = leaf.ekus;
        // X.509-SVIDs carry digitalSignature (SPIFFE X509-SVID §4.3; the spiffe client insists).
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.is_ca = IsCa::ExplicitNoCa;
        p.not_before = time::OffsetDateTime::from_unix_timestamp(leaf.not_before).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(leaf.not_after).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        X509Material {
            // The ID field is what the material claims; the certificate says what it is.
            spiffe_id: SpiffeId::parse(leaf.uri).unwrap_or_else(|_| SpiffeId::parse(WEB).unwrap()),
            cert_der: cert.der().to_vec(),
            intermediates: vec![],
            key_pkcs8_der: key.serialize_der(),
            bundle_der: self.ca_der.clone(),
            trust_domain: self.td.clone(),
        }
    }
}

/// A backend that answers every request with what it received: the request line, then the
/// fields, as the body.
pub async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut c = Conn::new(tcp);
                while let Ok(Some(head)) = c.read_request(Duration::from_secs(30)).await {
                    let framing = ringfence_policy::request_framing(
                        head.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
                    )
                    .unwrap();
                    let mut body = Vec::new();
                    c.relay_body(framing.into(), &mut body).await.unwrap();
                    let mut text = format!("{} {}\n", head.method, head.target);
                    for (n, v) in &head.headers {
                        text.push_str(&format!(
                            "{}: {}\n",
                            n.to_ascii_lowercase(),
                            String::from_utf8_lossy(v)
                        ));
                    }
                    text.push_str(&format!("body: {}\n", body.len()));
                    let out = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if c.io.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub struct Proxy {
    pub mesh: Arc<Mesh>,
    pub addr: SocketAddr,
    pub audit: Arc<MemorySink>,
    pub material: watch::Sender<Option<X509Material>>,
}

pub struct World {
    pub pki: Pki,
    pub tokens: TokenService,
    pub keys: JwtBundle,
}

impl World {
    pub fn new() -> Self {
        let pki = Pki::new("example.org");
        let tokens = TokenService::generate(pki.td.clone()).unwrap();
        let keys = JwtBundle::parse(&tokens.jwks()).unwrap();
        Self { pki, tokens, keys }
    }

    pub fn mint(&self, user: &str, for_workload: &str) -> String {
        self.tokens
            .mint(
                &MintRequest {
                    subject: user.into(),
                    for_workload: SpiffeId::parse(for_workload).unwrap(),
                    purpose: None,
                    context: Default::default(),
                    ttl: Duration::from_secs(120),
                },
                SystemClock.now(),
            )
            .unwrap()
    }

    pub fn mesh(
        &self,
        id: &str,
        policy: AccessPolicy,
        endpoints: HashMap<String, Vec<SocketAddr>>,
    ) -> (
        Arc<Mesh>,
        Arc<MemorySink>,
        watch::Sender<Option<X509Material>>,
    ) {
        self.mesh_limited(id, policy, endpoints, Limits::default().per_source)
    }

    /// [`World::mesh`] with at most `per_source` connections per address.
    pub fn mesh_limited(
        &self,
        id: &str,
        policy: AccessPolicy,
        endpoints: HashMap<String, Vec<SocketAddr>>,
        per_source: usize,
    ) -> (
        Arc<Mesh>,
        Arc<MemorySink>,
        watch::Sender<Option<X509Material>>,
    ) {
        let (tx, rx) = watch::channel(Some(self.pki.svid(id)));
        let audit = Arc::new(MemorySink::default());
        let mesh = Mesh::new(MeshParts {
            material: rx,
            policy: PolicyHandle::new(policy),
            tokens: Some(self.keys.clone()),
            resolver: Arc::new(StaticResolver(endpoints)),
            telemetry: Arc::new(Telemetry::with_audit(
                audit.clone() as Arc<dyn AuditSink>,
                1,
            )),
            clock: Arc::new(SystemClock),
            limits: Limits {
                idle: Duration::from_secs(5),
                response: Duration::from_secs(5),
                connect: Duration::from_secs(2),
                per_source,
                handshakes_per_source: per_source,
            },
        })
        .unwrap();
        (Arc::new(mesh), audit, tx)
    }

    /// An inbound proxy for `id` in front of `backend`.
    pub async fn inbound(&self, id: &str, policy: AccessPolicy, backend: SocketAddr) -> Proxy {
        let (mesh, audit, material) = self.mesh(id, policy, HashMap::new());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(Arc::clone(&mesh).serve_inbound(l, backend));
        Proxy {
            mesh,
            addr,
            audit,
            material,
        }
    }

    /// An inbound proxy for `id`: HTTP to `backend`, raw TCP from the mesh to `tcp`.
    pub async fn inbound_tcp(
        &self,
        id: &str,
        policy: AccessPolicy,
        backend: SocketAddr,
        tcp: SocketAddr,
    ) -> Proxy {
        let (mesh, audit, material) = self.mesh(id, policy, HashMap::new());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(Arc::clone(&mesh).serve_inbound_split(l, backend, Some(tcp)));
        Proxy {
            mesh,
            addr,
            audit,
            material,
        }
    }

    /// An outbound proxy for `id` that finds each service at the given addresses.
    pub async fn outbound(&self, id: &str, endpoints: &[(&str, SocketAddr)]) -> Proxy {
        let map = endpoints
            .iter()
            .map(|(s, a)| ((*s).to_owned(), vec![*a]))
            .collect();
        let (mesh, audit, material) = self.mesh(id, AccessPolicy::empty(Mode::Enforce, false), map);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(Arc::clone(&mesh).serve_outbound(l));
        Proxy {
            mesh,
            addr,
            audit,
            material,
        }
    }
}

/// Waits for an audit event that `pred` accepts.
pub async fn audited(sink: &MemorySink, pred: impl Fn(&Event) -> bool) -> Event {
    for _ in 0..100 {
        if let Some(e) = sink.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no such audit event; have: {:#?}", sink.events());
}

/// A TLS client config presenting `material`, trusting `bundle` for the server `server`.
pub fn client_tls(material: X509Material, server: &str) -> Arc<rustls::ClientConfig> {
    let (_tx, rx) = watch::channel(Some(material));
    std::mem::forget(_tx);
    let mut cfg = ringfence_identity::tls::client_config(
        rx,
        ringfence_identity::tls::PeerPolicy::OneOf(vec![SpiffeId::parse(server).unwrap()]),
        Arc::new(SystemClock),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Sends raw bytes over mTLS and returns (status, whole response text), or the TLS error.
pub async fn raw_mtls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    bytes: &[u8],
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("orders.shop").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(bytes).await.map_err(|e| e.to_string())?;
    read_one(&mut tls).await
}

/// Sends raw bytes in plain TCP and returns (status, whole response text).
pub async fn raw_plain(addr: SocketAddr, bytes: &[u8]) -> Result<(u16, String), String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.map_err(|e| e.to_string())?;
    read_one(&mut tcp).await
}

async fn read_one<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<(u16, String), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n")
                    && let Some(len) = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    && body.len() >= len
                {
                    break;
                }
            }
            Ok(Err(e)) => {
                if buf.is_empty() {
                    return Err(e.to_string());
                }
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    if text.is_empty() {
        return Err("connection closed without a response".into());
    }
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

pub fn get(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").into_bytes()
}
