//! mTLS for the control-plane API. The server presents its SVID and verifies the client's
//! against the trust bundle; every request then carries the caller's verified SPIFFE ID as a
//! [`Peer`] extension, so handlers decide on the certificate, never on a request field.
//! Clients connect lazily and reconnect on their own after the server restarts.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ringfence_core::SpiffeId;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many handshakes in progress at once; more connections wait in the kernel's
/// backlog.
pub const MAX_HANDSHAKES: usize = 256;

/// The caller of a request: the SPIFFE ID of its verified client certificate, or `None` for
/// a connection without one (allowed only where the server says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer(pub Option<SpiffeId>);

impl Peer {
    /// The caller of `req` (`None` when the request did not come through [`incoming`]).
    pub fn of<T>(req: &tonic::Request<T>) -> Option<SpiffeId> {
        req.extensions().get::<Peer>().and_then(|p| p.0.clone())
    }
}

/// A server-side TLS connection with the peer it authenticated.
#[derive(Debug)]
pub struct PeerIo {
    inner: TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for PeerIo {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The TLS connections accepted on `listener`: handshakes run concurrently (at most
/// [`MAX_HANDSHAKES`], each within [`HANDSHAKE_TIMEOUT`]); failed ones are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<PeerIo, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(ringfence_identity::tls::spiffe_id_of);
                        let _ = tx
                            .send(Ok(PeerIo {
                                inner: tls,
                                peer: Peer(peer),
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::info!(%addr, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A client-certificate verifier that also lets a client without a certificate finish the
/// handshake (its requests then carry `Peer(None)` and only handlers that allow that answer).
/// A certificate that is presented is verified in full.
#[derive(Debug)]
pub struct OptionalClientAuth(pub Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for OptionalClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A channel to the control plane at `addr` over TLS with `config` (which verifies the
/// server's SVID). It connects on first use and again whenever the connection drops.
pub fn channel(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Channel {
    let connector = tokio_rustls::TlsConnector::from(config);
    // The URI only satisfies the HTTP layer: the connector below decides where to connect,
    // and the server is checked by its SPIFFE ID, not by a name.
    let endpoint = Endpoint::from_static("http://controlplane.ringfence")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from("controlplane.ringfence")
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    }))
}

/// A channel to the control plane at `addr` presenting `material` (its certificate, if it has
/// one) and accepting only `spiffe://<td>/ringfence/controlplane` of the material's trust
/// domain, over HTTP/2.
pub fn control_plane_channel(
    addr: SocketAddr,
    material: tokio::sync::watch::Receiver<Option<ringfence_identity::workload_api::X509Material>>,
    clock: Arc<dyn ringfence_core::Clock>,
) -> Result<Channel, String> {
    let td = material
        .borrow()
        .as_ref()
        .map(|m| m.trust_domain.clone())
        .ok_or("no trust bundle to check the control plane with")?;
    let server = td
        .workload(&["ringfence", "controlplane"])
        .map_err(|e| e.to_string())?;
    let mut config = ringfence_identity::tls::client_config(
        material,
        ringfence_identity::tls::PeerPolicy::OneOf(vec![server]),
        clock,
    )
    .map_err(|e| format!("TLS: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(channel(addr, Arc::new(config)))
}

/// The control plane's audit log as an audit sink, through `Node.Audit`: a batch is one call,
/// and the control plane keeps each event once (by its id). What the control plane takes depends on the caller's SVID (a machine's
/// `agent.*` events, a service proxy's `mesh.*` events).
#[derive(Debug, Clone)]
pub struct NodeAudit(crate::pb::node_client::NodeClient<Channel>);

impl NodeAudit {
    /// A sink calling through `client` (over a [`control_plane_channel`]).
    pub fn new(client: crate::pb::node_client::NodeClient<Channel>) -> Self {
        Self(client)
    }
}

#[async_trait::async_trait]
impl ringfence_audit::AuditSink for NodeAudit {
    async fn record(
        &self,
        event: &ringfence_audit::Event,
    ) -> Result<(), ringfence_audit::AuditError> {
        self.record_batch_once(std::slice::from_ref(event)).await
    }

    async fn record_batch_once(
        &self,
        events: &[ringfence_audit::Event],
    ) -> Result<(), ringfence_audit::AuditError> {
        let events = events
            .iter()
            .map(ringfence_audit::Event::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.0
            .clone()
            .audit(crate::pb::AuditRequest { events })
            .await
            .map_err(|s| {
                ringfence_audit::AuditError::Append(format!(
                    "control plane: audit: {} ({:?})",
                    s.message(),
                    s.code()
                ))
            })?;
        Ok(())
    }
}
