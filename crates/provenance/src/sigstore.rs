//! Sigstore bundles verified offline: with a given public key (a managed key) or with a trusted
//! root (Fulcio certificate authorities, Rekor and timestamp keys) and the signer's expected
//! identity and OIDC issuer. No network: the trusted root is a file (or the public-good
//! instance's root embedded in `sigstore-verify`), the transparency-log entry and its
//! inclusion proof travel in the bundle.
//!
//! A bundle holding a DSSE envelope of an in-toto statement becomes a [`VerifiedEnvelope`], so
//! statements signed through sigstore flow into the same Statement / SLSA / review readers as
//! Ringfence's own DSSE envelopes.

use ringfence_core::UnixTime;
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{
    Artifact, ArtifactDigest, Bundle, DerPublicKey, Sha256Hash, SignatureContent,
};
use sigstore_verify::{IdentityMatcher, PublicKeyVerificationPolicy, VerificationPolicy};

use crate::dsse::VerifiedEnvelope;
use crate::statement::Sha256;

/// The trusted root of the Sigstore public-good instance, as shipped with `sigstore-verify`.
pub const PUBLIC_GOOD_TRUSTED_ROOT: &str =
    sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT;
/// Largest bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 4 * 1024 * 1024;

/// Why a bundle is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigstoreError {
    /// Not a sigstore bundle, or a bad key or root.
    #[error("malformed sigstore input: {0}")]
    Malformed(String),
    /// Verification failed.
    #[error("sigstore bundle refused: {0}")]
    Refused(String),
}

/// Whom to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A managed key (PEM SubjectPublicKeyInfo); the transparency log entry is still checked.
    Key(String),
    /// A Fulcio-issued certificate for this identity (SAN: email or URI) from this issuer.
    Identity {
        /// The certificate's subject alternative name.
        identity: String,
        /// The OIDC issuer.
        issuer: String,
    },
}

/// What the bundle proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Who signed: the certificate identity, or `key:<sha256 of the key>`.
    pub signer: String,
    /// The certificate's OIDC issuer, when a certificate signed.
    pub issuer: Option<String>,
    /// When the transparency log integrated the entry.
    pub integrated_time: Option<UnixTime>,
    /// The signed in-toto statement, for DSSE bundles.
    pub envelope: Option<VerifiedEnvelope>,
}

/// The artifact a bundle is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// The artifact's bytes.
    Bytes(&'a [u8]),
    /// Its SHA-256 (an image's manifest digest; a DSSE bundle's statement subject).
    Digest(&'a Sha256),
    /// Its SHA-512, as hex (statements of npm packages name those).
    Sha512Hex(&'a str),
}

/// Verifies `bundle_json` for `subject` under `trust`, with `trusted_root_json` (the Sigstore
/// instance's trusted root; [`PUBLIC_GOOD_TRUSTED_ROOT`] for the public-good instance).
pub fn verify(
    bundle_json: &[u8],
    subject: Subject<'_>,
    trust: &Trust,
    trusted_root_json: &str,
) -> Result<Verified, SigstoreError> {
    if bundle_json.len() > MAX_BUNDLE_LEN {
        return Err(SigstoreError::Malformed(format!(
            "bundle is {} bytes; at most {MAX_BUNDLE_LEN} are accepted",
            bundle_json.len()
        )));
    }
    let text = std::str::from_utf8(bundle_json)
        .map_err(|_| SigstoreError::Malformed("bundle is not UTF-8".into()))?;
    let bundle =
        Bundle::from_json(text).map_err(|e| SigstoreError::Malformed(format!("bundle: {e}")))?;
    let root = TrustedRoot::from_json(trusted_root_json)
        .map_err(|e| SigstoreError::Malformed(format!("trusted root: {e}")))?;
    let artifact = match subject {
        Subject::Bytes(b) => Artifact::Blob(b),
        Subject::Digest(d) => Artifact::Digest(ArtifactDigest::sha256(
            Sha256Hash::from_hex(d.hex())
                .map_err(|e| SigstoreError::Malformed(format!("digest: {e}")))?,
        )),
        Subject::Sha512Hex(hex) => {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|b| b.len() == 64)
                .ok_or_else(|| {
                    SigstoreError::Malformed(format!("{hex:?} is not a sha512 digest"))
                })?;
            Artifact::Digest(
                ArtifactDigest::new(sigstore_verify::types::HashAlgorithm::Sha2512, bytes)
                    .map_err(|e| SigstoreError::Malformed(format!("digest: {e}")))?,
            )
        }
    };
    let refused = |e: sigstore_verify::Error| SigstoreError::Refused(e.to_string());
    let (result, signer) = match trust {
        Trust::Key(pem) => {
            let key = DerPublicKey::from_pem(pem)
                .map_err(|e| SigstoreError::Malformed(format!("public key: {e}")))?;
            let keyid = crate::dsse::PublicKey::from_spki_der(key.as_bytes())
                .map(|k| k.keyid())
                .unwrap_or_else(|_| Sha256::of(key.as_bytes()).hex().to_owned());
            let policy = PublicKeyVerificationPolicy::new(key);
            (
                sigstore_verify::verify(artifact, &bundle, &policy, &root).map_err(refused)?,
                format!("key:{keyid}"),
            )
        }
        Trust::Identity { identity, issuer } => {
            let policy = VerificationPolicy::any_identity()
                .require_identity(IdentityMatcher::Exact(identity.clone()))
                .require_issuer(issuer.clone());
            let r = sigstore_verify::verify(artifact, &bundle, &policy, &root).map_err(refused)?;
            if !r.identity_policy_checked() {
                return Err(SigstoreError::Refused(
                    "the signer's identity was not checked".into(),
                ));
            }
            (r, identity.clone())
        }
    };
    if !result.tlog_verified() {
        return Err(SigstoreError::Refused(
            "the transparency log entry was not verified".into(),
        ));
    }
    let integrated_time = result
        .integrated_time()
        .map(|t| UnixTime::from_millis(u64::try_from(t.as_millisecond()).unwrap_or_default()));
    let envelope = match &bundle.content {
        SignatureContent::DsseEnvelope(env) => Some(VerifiedEnvelope::from_sigstore(
            env.payload_type.clone(),
            env.payload.as_bytes().to_vec(),
            signer.clone(),
        )),
        _ => None,
    };
    Ok(Verified {
        signer,
        issuer: result.issuer().map(str::to_owned),
        integrated_time,
        envelope,
    })
}
