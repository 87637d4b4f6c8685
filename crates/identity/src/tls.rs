//! Mutual TLS with X.509-SVIDs (rustls, aws-lc-rs): certificate resolvers that always present
//! the workload's current SVID (so rotation needs no restart and drops no connection), and
//! verifiers that accept a peer only if its chain verifies against the trust bundle, it is
//! valid at the verifier's clock, it carries the right extended key usage, and its SPIFFE ID
//! is one the caller allows.
//!
//! SECURITY: no host name is checked (SVIDs carry none); the SPIFFE ID check replaces it, so
//! a verifier without an explicit allow rule would accept any workload of the trust domain.
//! [`PeerPolicy`] makes that choice explicit.

use std::fmt;
use std::sync::Arc;

use ringfence_core::{Clock, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::watch;

use crate::workload_api::X509Material;

/// Which peers a verifier accepts.
#[derive(Debug, Clone)]
pub enum PeerPolicy {
    /// Exactly these SPIFFE IDs.
    OneOf(Vec<SpiffeId>),
    /// Any SPIFFE ID of the bundle's trust domain (say so on purpose).
    AnyInTrustDomain,
}

/// The aws-lc-rs provider every Ringfence TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The SPIFFE ID in a certificate's URI SAN, if it has exactly one valid one.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    SpiffeId::parse(first).ok()
}

/// Presents the workload's current SVID.
#[derive(Debug)]
pub struct SvidResolver {
    material: watch::Receiver<Option<X509Material>>,
    provider: Arc<CryptoProvider>,
    /// The last key loaded and the certificate it belongs to: handshakes between rotations
    /// reuse it instead of parsing the private key again.
    cached: std::sync::Mutex<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl SvidResolver {
    /// Follows `material`.
    pub fn new(material: watch::Receiver<Option<X509Material>>) -> Self {
        Self {
            material,
            provider: provider(),
            cached: std::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let m = self.material.borrow().clone()?;
        // Material with a bundle but no certificate (a client that has none yet) presents
        // nothing.
        if m.cert_der.is_empty() {
            return None;
        }
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cert, key)) = cached.as_ref()
            && cert == &m.cert_der
        {
            return Some(Arc::clone(key));
        }
        let cert_der = m.cert_der.clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(m.key_pkcs8_der));
        let signing = self.provider.key_provider.load_private_key(key).ok()?;
        let certified = Arc::new(CertifiedKey::new(
            std::iter::once(m.cert_der)
                .chain(m.intermediates)
                .map(CertificateDer::from)
                .collect(),
            signing,
        ));
        *cached = Some((cert_der, Arc::clone(&certified)));
        Some(certified)
    }
}

impl rustls::server::ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.material
            .borrow()
            .as_ref()
            .is_some_and(|m| !m.cert_der.is_empty())
    }
}

/// Verifies SVID chains against the current trust bundle with a [`Clock`].
pub struct SvidVerifier {
    material: watch::Receiver<Option<X509Material>>,
    policy: PeerPolicy,
    clock: Arc<dyn Clock>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SvidVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidVerifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SvidVerifier {
    /// A verifier using the bundle in `material` (it follows bundle changes) and `policy`.
    pub fn new(
        material: watch::Receiver<Option<X509Material>>,
        policy: PeerPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            material,
            policy,
            clock,
            algorithms: provider().signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        let bundle = self
            .material
            .borrow()
            .as_ref()
            .map(|m| (m.bundle_der.clone(), m.trust_domain.clone()))
            .ok_or_else(|| rustls::Error::General("no trust bundle yet".into()))?;
        let id = verify_chain(
            &bundle.0,
            &bundle.1,
            end_entity,
            intermediates,
            self.clock.now(),
            usage,
        )?;
        let allowed = match &self.policy {
            PeerPolicy::OneOf(ids) => ids.contains(&id),
            PeerPolicy::AnyInTrustDomain => id.is_member_of(&bundle.1),
        };
        if !allowed {
            return Err(rustls::Error::General(format!("peer {id} is not allowed")));
        }
        Ok(id)
    }
}

/// Verifies an SVID chain against the trust bundle of `trust_domain` at `now`, for `usage`,
/// and returns its SPIFFE ID (exactly one URI SAN, a member of the trust domain).
pub fn verify_chain(
    bundle_der: &[u8],
    trust_domain: &ringfence_core::TrustDomain,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: ringfence_core::UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, rustls::Error> {
    let anchors = split_der_certificates(bundle_der)
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(format!("bad trust bundle: {e}")))?;
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_millis(now.as_millis()));
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(pki_error)?;
    let id = spiffe_id_of(end_entity).ok_or_else(|| {
        rustls::Error::General("peer certificate has no single valid SPIFFE ID".into())
    })?;
    if !id.is_member_of(trust_domain) {
        return Err(rustls::Error::General(format!(
            "peer {id} is not in trust domain {trust_domain}"
        )));
    }
    Ok(id)
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    rustls::Error::InvalidCertificate(match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(PkiError(other.to_string())))),
    })
}

#[derive(Debug)]
struct PkiError(String);

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PkiError {}

/// Splits concatenated DER certificates.
pub fn split_der_certificates(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while let Some(len) = der_len(der) {
        let Some((one, rest)) = der.split_at_checked(len) else {
            break;
        };
        out.push(CertificateDer::from(one.to_vec()));
        der = rest;
    }
    out
}

/// The total length of the DER SEQUENCE at the start of `der`.
fn der_len(der: &[u8]) -> Option<usize> {
    if der.first() != Some(&0x30) {
        return None;
    }
    let first = *der.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*der.get(2 + i)?);
    }
    Some(2 + n + len)
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, webpki::KeyUsage::server_auth())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for SvidVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, webpki::KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 server config that presents the SVID and requires a client SVID allowed by
/// `policy`.
pub fn server_config(
    material: watch::Receiver<Option<X509Material>>,
    policy: PeerPolicy,
    clock: Arc<dyn Clock>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let verifier = Arc::new(SvidVerifier::new(material.clone(), policy, clock));
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SvidResolver::new(material))))
}

/// A TLS 1.3 client config that presents the SVID and accepts a server allowed by `policy`.
pub fn client_config(
    material: watch::Receiver<Option<X509Material>>,
    policy: PeerPolicy,
    clock: Arc<dyn Clock>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(SvidVerifier::new(material.clone(), policy, clock));
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SvidResolver::new(material))))
}
