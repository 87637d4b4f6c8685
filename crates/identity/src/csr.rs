//! Certificate signing requests from workloads, parsed and checked strictly: the workload's
//! key never leaves its machine, so the CSR is all the CA sees of it.
//!
//! SECURITY: the CA never copies anything from a CSR into a certificate except the public key
//! and the one SPIFFE ID, and only after this module has checked that the CSR's signature
//! verifies with that key, that the key is ECDSA P-256, and that the CSR asks for nothing but
//! that one URI SAN.

use ringfence_core::{SpiffeId, SpiffeIdError};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

/// Largest CSR accepted, in bytes.
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a DER PKCS#10 request, or too large.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The signature does not verify with the CSR's own key.
    #[error("CSR signature does not verify: the request was altered or not signed by its key")]
    BadSignature,
    /// The key is not ECDSA P-256.
    #[error("unsupported key: {0}; workload keys must be ECDSA P-256")]
    UnsupportedKey(String),
    /// The CSR asks for something other than exactly one SPIFFE URI SAN.
    #[error(
        "CSR asks for {0}; a CSR carries exactly one URI SAN (the SPIFFE ID) and no other extension"
    )]
    UnexpectedContent(String),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("CSR names an invalid SPIFFE ID {uri:?}: {reason}")]
    InvalidSpiffeId {
        /// The URI as requested.
        uri: String,
        /// Why it is invalid.
        reason: SpiffeIdError,
    },
}

/// A CSR that passed every check: its key (DER SubjectPublicKeyInfo) and its SPIFFE ID.
/// Only [`parse_csr`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    spki_der: Vec<u8>,
    spiffe_id: SpiffeId,
}

impl VerifiedCsr {
    /// The requested SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The workload's public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// Parses and checks a DER CSR.
pub fn parse_csr(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::Malformed(format!(
            "{} bytes; at most {MAX_CSR_LEN} are accepted",
            der.len()
        )));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrError::UnsupportedKey(format!(
            "key algorithm {}",
            spki.algorithm.algorithm
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
    if curve != OID_EC_P256 {
        return Err(CsrError::UnsupportedKey(format!("curve {curve}")));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut uris = Vec::new();
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                            other => {
                                return Err(CsrError::UnexpectedContent(format!(
                                    "a non-URI SAN ({other})"
                                )));
                            }
                        }
                    }
                }
                other => {
                    return Err(CsrError::UnexpectedContent(format!(
                        "an extra extension ({other:?})"
                    )));
                }
            }
        }
    }
    let uri = match uris.as_slice() {
        [one] => one.clone(),
        [] => return Err(CsrError::UnexpectedContent("no URI SAN".into())),
        many => {
            return Err(CsrError::UnexpectedContent(format!(
                "{} URI SANs",
                many.len()
            )));
        }
    };
    let spiffe_id =
        SpiffeId::parse(&uri).map_err(|reason| CsrError::InvalidSpiffeId { uri, reason })?;
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
        spiffe_id,
    })
}
