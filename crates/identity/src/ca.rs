//! The SPIFFE certificate authority: a P-256 root for the trust domain, and X.509-SVIDs
//! issued only under an issuance authorization (the control plane's statement that this
//! SPIFFE ID belongs to a task that was admitted and placed on the requesting machine).
//!
//! SVID profile (SPIFFE X509-SVID spec): exactly one URI SAN (the SPIFFE ID), `CA:FALSE`,
//! key usage digitalSignature, extended key usage serverAuth + clientAuth, a random 128-bit
//! serial, and a short validity (default 1 hour), back-dated 30 s for clock skew.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use ringfence_core::{MachineId, SpiffeId, TrustDomain, UnixTime};

use crate::csr::{CsrError, parse_csr};

/// Default X.509-SVID lifetime.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// How far back `notBefore` is set, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(30);

/// The control plane's statement that `spiffe_id` may be issued to `machine` until
/// `not_after`. Only an [`IssuanceAuthority`] produces these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceAuthorization {
    /// The one identity the certificate may carry.
    pub spiffe_id: SpiffeId,
    /// The machine whose agent may request it.
    pub machine: MachineId,
    /// After this, the authorization is void.
    pub not_after: UnixTime,
}

/// Decides whether `machine` may obtain an SVID for `spiffe_id` (the control plane: the task
/// is admitted and placed on that machine).
pub trait IssuanceAuthority: Send + Sync {
    /// The authorization, or why there is none.
    fn authorize(
        &self,
        machine: &MachineId,
        spiffe_id: &SpiffeId,
    ) -> Result<IssuanceAuthorization, String>;
}

/// Why an issuance was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The CSR failed its checks.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// No authorization covers this request.
    #[error("no issuance authorization: {0}")]
    Unauthorized(String),
    /// The authorization names another identity.
    #[error("the CSR asks for {requested} but the authorization is for {authorized}")]
    WrongIdentity {
        /// Asked for.
        requested: String,
        /// Authorized.
        authorized: String,
    },
    /// The authorization is for another machine.
    #[error("the authorization is for machine {authorized}, not {requester}")]
    WrongMachine {
        /// Who asked.
        requester: String,
        /// Who is authorized.
        authorized: String,
    },
    /// The authorization has expired.
    #[error("the authorization expired at {expired_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Its end.
        expired_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// The identity is not in this CA's trust domain.
    #[error("{0} is not in this CA's trust domain")]
    ForeignTrustDomain(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A certificate authority for one trust domain.
pub struct Ca {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    /// When this CA is an intermediate: the upstream root certificates (the trust bundle).
    upstream: Vec<Vec<u8>>,
    ttl: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SECURITY: never print the key.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// An issued X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// The SPIFFE ID it carries.
    pub spiffe_id: SpiffeId,
    /// DER certificate.
    pub cert_der: Vec<u8>,
    /// Certificates between it and the trust bundle (the intermediate CA, if any), DER.
    pub intermediates: Vec<Vec<u8>>,
    /// Validity end.
    pub not_after: UnixTime,
    /// Serial number, hex.
    pub serial: String,
}

impl Ca {
    /// A new self-signed root CA for `trust_domain` with a fresh P-256 key, valid from `now`
    /// for `validity`.
    pub fn generate(
        trust_domain: TrustDomain,
        now: UnixTime,
        validity: Duration,
    ) -> Result<Self, IssueError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Ringfence");
        dn.push(DnType::CommonName, format!("Ringfence CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri_san(trust_domain.id().as_str())?];
        params.serial_number = Some(random_serial()?);
        params.not_before = to_time(now.saturating_sub(BACKDATE))?;
        params.not_after = to_time(now.saturating_add(validity))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(Self {
            trust_domain,
            cert_der: cert.der().to_vec(),
            upstream: Vec::new(),
            issuer: Issuer::new(params, key),
            ttl: DEFAULT_SVID_TTL,
        })
    }

    /// Writes the CA into `dir` under `name`: the key through a [`SoftwareKeyFile`]
    /// (`<name>.key`, PKCS#8 PEM, mode 0600) and the certificate as `<name>.pem`. Existing
    /// files are replaced atomically.
    pub fn save(&self, dir: &std::path::Path, name: &str) -> Result<(), IssueError> {
        SoftwareKeyFile::new(dir.join(format!("{name}.key"))).store_key(self.issuer.key())?;
        write_atomically(
            &dir.join(format!("{name}.pem")),
            pem_certificate(&self.cert_der).as_bytes(),
            0o644,
        )?;
        let upstream_path = dir.join(format!("{name}.upstream.pem"));
        if self.upstream.is_empty() {
            let _ = std::fs::remove_file(&upstream_path);
            Ok(())
        } else {
            let pems: String = self.upstream.iter().map(|c| pem_certificate(c)).collect();
            write_atomically(&upstream_path, pems.as_bytes(), 0o644)
        }
    }

    /// Loads a CA saved with [`Ca::save`].
    pub fn load(
        dir: &std::path::Path,
        name: &str,
        trust_domain: TrustDomain,
    ) -> Result<Self, IssueError> {
        let key = SoftwareKeyFile::new(dir.join(format!("{name}.key")));
        let upstream = dir.join(format!("{name}.upstream.pem"));
        if upstream.exists() {
            Self::load_intermediate(
                &key,
                &dir.join(format!("{name}.pem")),
                &upstream,
                trust_domain,
            )
        } else {
            Self::load_with(&key, &dir.join(format!("{name}.pem")), trust_domain)
        }
    }

    /// Loads a CA whose key comes from `keys` and whose certificate is at `cert_path`.
    pub fn load_with(
        keys: &dyn CaKeyProvider,
        cert_path: &std::path::Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, IssueError> {
        let key = keys.load_key()?;
        let cert_pem = std::fs::read_to_string(cert_path)
            .map_err(|e| IssueError::Signing(format!("{}: {e}", cert_path.display())))?;
        let parsed = pem::parse(cert_pem.as_bytes())
            .map_err(|e| IssueError::Signing(format!("{}: {e}", cert_path.display())))?;
        let cert_der = rustls_pki_types::CertificateDer::from(parsed.contents().to_vec());
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(Self {
            trust_domain,
            issuer,
            cert_der: cert_der.to_vec(),
            upstream: Vec::new(),
            ttl: DEFAULT_SVID_TTL,
        })
    }

    /// An intermediate CA under an upstream root: its key from `keys`, its certificate (signed
    /// by the upstream) at `cert_path`, and the upstream root certificates (PEM, the trust
    /// bundle) at `upstream_path`. Its SVIDs carry the intermediate in their chain.
    pub fn load_intermediate(
        keys: &dyn CaKeyProvider,
        cert_path: &std::path::Path,
        upstream_path: &std::path::Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, IssueError> {
        let mut ca = Self::load_with(keys, cert_path, trust_domain)?;
        let text = std::fs::read(upstream_path)
            .map_err(|e| IssueError::Signing(format!("{}: {e}", upstream_path.display())))?;
        ca.upstream = pem::parse_many(text)
            .map_err(|e| IssueError::Signing(format!("{}: {e}", upstream_path.display())))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.contents().to_vec())
            .collect();
        if ca.upstream.is_empty() {
            return Err(IssueError::Signing(format!(
                "{} holds no certificate",
                upstream_path.display()
            )));
        }
        // The intermediate must chain to the upstream: check its signature now, not at the
        // first handshake.
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, own) = X509Certificate::from_der(&ca.cert_der)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let signed = ca.upstream.iter().any(|root| {
            X509Certificate::from_der(root)
                .map(|(_, r)| own.verify_signature(Some(r.public_key())).is_ok())
                .unwrap_or(false)
        });
        if !signed {
            return Err(IssueError::Signing(format!(
                "{} is not signed by any certificate in {}",
                cert_path.display(),
                upstream_path.display()
            )));
        }
        Ok(ca)
    }

    /// True when this CA is an intermediate under an upstream root.
    pub fn is_intermediate(&self) -> bool {
        !self.upstream.is_empty()
    }

    /// The certificates relying parties must trust for this CA's SVIDs: the upstream roots,
    /// or this CA's own certificate when it is a root.
    pub fn trust_anchors(&self) -> Vec<Vec<u8>> {
        if self.upstream.is_empty() {
            vec![self.cert_der.clone()]
        } else {
            self.upstream.clone()
        }
    }

    /// Sets the SVID lifetime.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The SVID lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The CA certificate (the trust bundle's entry), DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Issues an X.509-SVID for a DER CSR sent by `machine`, if `authority` authorizes it.
    /// Crate-private: issuance goes through the audited [`crate::IssuanceService`].
    pub(crate) fn issue(
        &self,
        csr_der: &[u8],
        machine: &MachineId,
        authority: &dyn IssuanceAuthority,
        now: UnixTime,
    ) -> Result<Svid, IssueError> {
        let csr = parse_csr(csr_der)?;
        let requested = csr.spiffe_id().clone();
        if !requested.is_member_of(&self.trust_domain) {
            return Err(IssueError::ForeignTrustDomain(requested.to_string()));
        }
        let auth = authority
            .authorize(machine, &requested)
            .map_err(IssueError::Unauthorized)?;
        // SECURITY: the authority's answer is checked here too, so an authority bug that
        // returns some other task's authorization cannot mint that task's identity.
        if auth.spiffe_id != requested {
            return Err(IssueError::WrongIdentity {
                requested: requested.to_string(),
                authorized: auth.spiffe_id.to_string(),
            });
        }
        if &auth.machine != machine {
            return Err(IssueError::WrongMachine {
                requester: machine.to_string(),
                authorized: auth.machine.to_string(),
            });
        }
        if auth.not_after <= now {
            return Err(IssueError::Expired {
                expired_ms: auth.not_after.as_millis(),
                now_ms: now.as_millis(),
            });
        }
        let not_after = now.saturating_add(self.ttl);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![uri_san(requested.as_str())?];
        let serial = random_serial()?;
        let serial_hex: String = serial
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params.serial_number = Some(serial);
        params.not_before = to_time(now.saturating_sub(BACKDATE))?;
        params.not_after = to_time(not_after)?;
        params.use_authority_key_identifier_extension = true;
        let public_key = SubjectPublicKeyInfo::from_der(csr.public_key_der())
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| IssueError::Signing(e.to_string()))?;
        Ok(Svid {
            spiffe_id: requested,
            cert_der: cert.der().to_vec(),
            intermediates: if self.upstream.is_empty() {
                vec![]
            } else {
                vec![self.cert_der.clone()]
            },
            not_after,
            serial: serial_hex,
        })
    }
}

/// Where a CA's private key lives. Software key files now; a TPM or HSM provider later
/// implements the same trait.
pub trait CaKeyProvider: Send + Sync {
    /// Loads the key.
    fn load_key(&self) -> Result<KeyPair, IssueError>;
    /// Stores a new key.
    fn store_key(&self, key: &KeyPair) -> Result<(), IssueError>;
}

/// A PKCS#8 PEM key file readable only by its owner (mode 0600); a file readable by others
/// is refused.
#[derive(Debug, Clone)]
pub struct SoftwareKeyFile {
    path: std::path::PathBuf,
}

impl SoftwareKeyFile {
    /// The key file at `path`.
    pub fn new(path: std::path::PathBuf) -> Self {
        Self { path }
    }
}

impl CaKeyProvider for SoftwareKeyFile {
    fn load_key(&self) -> Result<KeyPair, IssueError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |e: std::io::Error| IssueError::Signing(format!("{}: {e}", self.path.display()));
        let mode = std::fs::metadata(&self.path)
            .map_err(err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(IssueError::Signing(format!(
                "{} is readable by other users (mode {:o}): run `chmod 600` on it",
                self.path.display(),
                mode & 0o777
            )));
        }
        let pem = std::fs::read_to_string(&self.path).map_err(err)?;
        KeyPair::from_pem(&pem)
            .map_err(|e| IssueError::Signing(format!("{}: {e}", self.path.display())))
    }

    fn store_key(&self, key: &KeyPair) -> Result<(), IssueError> {
        write_atomically(&self.path, key.serialize_pem().as_bytes(), 0o600)
    }
}

/// Writes `bytes` to `path` through a temporary file with `mode`, fsync and rename.
pub(crate) fn write_atomically(
    path: &std::path::Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), IssueError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| IssueError::Signing(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// A DER certificate as PEM.
pub fn pem_certificate(der: &[u8]) -> String {
    pem_lf(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// PEM with Unix line endings (the `pem` crate defaults to CRLF).
pub fn pem_lf(p: &pem::Pem) -> String {
    pem::encode_config(
        p,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn uri_san(uri: &str) -> Result<SanType, IssueError> {
    Ok(SanType::URI(uri.try_into().map_err(
        |e: rcgen::Error| IssueError::Signing(e.to_string()),
    )?))
}

/// A random positive serial of 128 bits (the spec asks for at least 64 bits of entropy).
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| IssueError::Signing("no randomness available".into()))?;
    // Clear the top bit so the DER INTEGER stays positive without a padding byte, and set
    // the next one so the length is fixed.
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x40;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_time(t: UnixTime) -> Result<time::OffsetDateTime, IssueError> {
    let secs =
        i64::try_from(t.as_secs()).map_err(|_| IssueError::Signing("time out of range".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| IssueError::Signing(e.to_string()))
}
