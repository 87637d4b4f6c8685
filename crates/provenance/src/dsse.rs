//! DSSE (Dead Simple Signing Envelope) v1: the JSON envelope, the pre-authentication
//! encoding, and verification with a threshold of distinct trusted keys.
//!
//! SECURITY: the payload type is signed (inside the PAE) and checked against what the caller
//! expects, so an attestation cannot be replayed as another kind of document; each trusted
//! key counts once toward the threshold however many signatures it made; a signature's
//! `keyid`, when both sides have one, only narrows which key is tried; it never stands in for
//! a verification.

use std::collections::BTreeSet;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};

/// Largest envelope accepted, in bytes of JSON.
pub const MAX_ENVELOPE_LEN: usize = 4 * 1024 * 1024;
/// Most signatures looked at on one envelope.
pub const MAX_SIGNATURES: usize = 32;

/// Why an envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsseError {
    /// Not a DSSE envelope.
    #[error("malformed DSSE envelope: {0}")]
    Malformed(String),
    /// The payload type is not the one expected.
    #[error("DSSE payload type is {found:?}, expected {expected:?}")]
    PayloadType {
        /// Expected.
        expected: String,
        /// Found.
        found: String,
    },
    /// Fewer distinct trusted keys signed than required.
    #[error(
        "DSSE envelope has valid signatures from {got} distinct trusted key(s) ({names}); {need} required"
    )]
    Threshold {
        /// Distinct trusted keys with a valid signature.
        got: usize,
        /// Required.
        need: usize,
        /// Their names.
        names: String,
    },
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The key's id, if the signer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// Base64 signature over the PAE.
    pub sig: String,
}

/// A DSSE JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// Base64 payload.
    pub payload: String,
    /// The payload's type (a URI or media type).
    pub payload_type: String,
    /// Signatures.
    pub signatures: Vec<Signature>,
}

/// `DSSEv1 <len(type)> <type> <len(body)> <body>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A public key trusted to sign envelopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// A name for reports (a builder, a reviewer).
    pub name: String,
    /// The key id signers put in `keyid`, if any.
    pub keyid: Option<String>,
    /// The key.
    pub key: PublicKey,
}

/// Supported public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// ECDSA P-256 with SHA-256, as an uncompressed point; signatures raw r||s or DER.
    EcdsaP256(Vec<u8>),
    /// Ed25519.
    Ed25519([u8; 32]),
}

/// DER prefix of a SubjectPublicKeyInfo holding an uncompressed P-256 point.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of a SubjectPublicKeyInfo holding an Ed25519 key.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl PublicKey {
    /// From a DER SubjectPublicKeyInfo (the body of a `PUBLIC KEY` PEM) for P-256 or Ed25519.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, DsseError> {
        if let Some(point) = der.strip_prefix(&SPKI_P256_PREFIX[..])
            && point.len() == 65
            && point.first() == Some(&0x04)
        {
            return Ok(Self::EcdsaP256(point.to_vec()));
        }
        if let Some(key) = der.strip_prefix(&SPKI_ED25519_PREFIX[..])
            && let Ok(key) = <[u8; 32]>::try_from(key)
        {
            return Ok(Self::Ed25519(key));
        }
        Err(DsseError::Malformed(
            "unsupported public key: use ECDSA P-256 or Ed25519".into(),
        ))
    }

    /// From a `PUBLIC KEY` PEM.
    pub fn from_spki_pem(pem: &str) -> Result<Self, DsseError> {
        Self::from_spki_der(&pem_der(pem, "public key")?)
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            Self::EcdsaP256(point) => {
                let alg = if sig.len() == 64 {
                    &ECDSA_P256_SHA256_FIXED
                } else {
                    &ECDSA_P256_SHA256_ASN1
                };
                UnparsedPublicKey::new(alg, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Self::Ed25519(key) => UnparsedPublicKey::new(&ED25519, key)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

/// An envelope whose signatures met the threshold. Only [`verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    payload_type: String,
    payload: Vec<u8>,
    signers: Vec<String>,
}

impl VerifiedEnvelope {
    /// The payload type (already checked against the expected one).
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The verified payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Names of the distinct trusted keys that signed.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }

    /// An envelope whose one signature `sigstore-verify` checked (with its certificate chain or
    /// key, and its transparency-log entry).
    pub(crate) fn from_sigstore(payload_type: String, payload: Vec<u8>, signer: String) -> Self {
        Self {
            payload_type,
            payload,
            signers: vec![signer],
        }
    }
}

/// Parses an envelope from JSON bytes, with size limits.
pub fn parse(bytes: &[u8]) -> Result<Envelope, DsseError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(DsseError::Malformed(format!(
            "{} bytes; at most {MAX_ENVELOPE_LEN} are accepted",
            bytes.len()
        )));
    }
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| DsseError::Malformed(e.to_string()))?;
    if envelope.signatures.is_empty() {
        return Err(DsseError::Malformed("no signatures".into()));
    }
    if envelope.signatures.len() > MAX_SIGNATURES {
        return Err(DsseError::Malformed(format!(
            "more than {MAX_SIGNATURES} signatures"
        )));
    }
    Ok(envelope)
}

/// Trusted keys parsed once, for verifying many envelopes (a policy's key groups).
#[derive(Clone)]
pub struct PreparedKeys {
    keys: Vec<TrustedKey>,
    parsed: Vec<Parsed>,
}

#[derive(Clone)]
enum Parsed {
    EcdsaP256 {
        asn1: aws_lc_rs::signature::ParsedPublicKey,
        fixed: aws_lc_rs::signature::ParsedPublicKey,
    },
    Ed25519(aws_lc_rs::signature::ParsedPublicKey),
}

impl std::fmt::Debug for PreparedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PreparedKeys").field(&self.keys).finish()
    }
}

impl PartialEq for PreparedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
    }
}

impl Eq for PreparedKeys {}

impl PreparedKeys {
    /// Parses every key; a key the crypto library rejects is an error naming it.
    pub fn new(keys: Vec<TrustedKey>) -> Result<Self, DsseError> {
        use aws_lc_rs::signature::ParsedPublicKey;
        let parsed = keys
            .iter()
            .map(|k| {
                let bad = |_| DsseError::Malformed(format!("public key {:?} is invalid", k.name));
                Ok(match &k.key {
                    PublicKey::EcdsaP256(point) => Parsed::EcdsaP256 {
                        asn1: ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point).map_err(bad)?,
                        fixed: ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                            .map_err(bad)?,
                    },
                    PublicKey::Ed25519(raw) => {
                        Parsed::Ed25519(ParsedPublicKey::new(&ED25519, raw).map_err(bad)?)
                    }
                })
            })
            .collect::<Result<Vec<_>, DsseError>>()?;
        Ok(Self { keys, parsed })
    }

    /// The keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }
}

/// Verifies `envelope`: its payload type must be `expected_type`, and at least `threshold`
/// distinct keys of `trusted` must have valid signatures over the PAE.
pub fn verify(
    envelope: &Envelope,
    expected_type: &str,
    trusted: &[TrustedKey],
    threshold: usize,
) -> Result<VerifiedEnvelope, DsseError> {
    verify_with(
        envelope,
        None,
        expected_type,
        trusted,
        threshold,
        |i, message, sig| trusted.get(i).is_some_and(|k| k.key.verify(message, sig)),
    )
}

/// [`verify`] with keys parsed in advance. `payload`, when given, is the envelope's payload
/// already decoded by the caller (it is what the signatures are checked over, and what the
/// verified envelope holds).
pub fn verify_prepared(
    envelope: &Envelope,
    payload: Option<Vec<u8>>,
    expected_type: &str,
    prepared: &PreparedKeys,
    threshold: usize,
) -> Result<VerifiedEnvelope, DsseError> {
    verify_with(
        envelope,
        payload,
        expected_type,
        &prepared.keys,
        threshold,
        |i, message, sig| match prepared.parsed.get(i) {
            Some(Parsed::EcdsaP256 { asn1, fixed }) => {
                let key = if sig.len() == 64 { fixed } else { asn1 };
                key.verify_sig(message, sig).is_ok()
            }
            Some(Parsed::Ed25519(key)) => key.verify_sig(message, sig).is_ok(),
            None => false,
        },
    )
}

fn verify_with(
    envelope: &Envelope,
    payload: Option<Vec<u8>>,
    expected_type: &str,
    trusted: &[TrustedKey],
    threshold: usize,
    check: impl Fn(usize, &[u8], &[u8]) -> bool,
) -> Result<VerifiedEnvelope, DsseError> {
    if envelope.payload_type != expected_type {
        return Err(DsseError::PayloadType {
            expected: expected_type.to_owned(),
            found: envelope.payload_type.clone(),
        });
    }
    let payload = match payload {
        Some(p) => p,
        None => decode_b64(&envelope.payload)
            .ok_or_else(|| DsseError::Malformed("payload is not base64".into()))?,
    };
    let message = pae(&envelope.payload_type, &payload);
    let mut accepted: BTreeSet<usize> = BTreeSet::new();
    for signature in envelope.signatures.iter().take(MAX_SIGNATURES) {
        let sig = decode_b64(&signature.sig)
            .ok_or_else(|| DsseError::Malformed("a signature is not base64".into()))?;
        for (i, key) in trusted.iter().enumerate() {
            if accepted.contains(&i) {
                continue;
            }
            if let (Some(a), Some(b)) = (&signature.keyid, &key.keyid)
                && a != b
            {
                continue;
            }
            if check(i, &message, &sig) {
                accepted.insert(i);
            }
        }
    }
    let names: Vec<String> = accepted
        .iter()
        .filter_map(|i| trusted.get(*i))
        .map(|k| k.name.clone())
        .collect();
    if threshold == 0 || names.len() < threshold {
        return Err(DsseError::Threshold {
            got: names.len(),
            need: threshold.max(1),
            names: names.join(", "),
        });
    }
    Ok(VerifiedEnvelope {
        payload_type: envelope.payload_type.clone(),
        payload,
        signers: names,
    })
}

/// Standard base64, or URL-safe as the reference implementation also accepts.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok().or_else(|| URL_SAFE.decode(s).ok())
}

/// A private key that signs envelopes (builders, review systems, `ringfence attest sign`).
pub struct SigningKey {
    kind: SigningKind,
    keyid: String,
}

enum SigningKind {
    EcdsaP256(aws_lc_rs::signature::EcdsaKeyPair),
    Ed25519(aws_lc_rs::signature::Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new ECDSA P-256 key, with its PKCS#8 DER (to store it).
    pub fn generate_p256() -> Result<(Self, Vec<u8>), DsseError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .map_err(|_| DsseError::Malformed("could not generate a P-256 key".into()))?;
        let der = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8_der(&der)?, der))
    }

    /// A new Ed25519 key, with its PKCS#8 DER (to store it).
    pub fn generate_ed25519() -> Result<(Self, Vec<u8>), DsseError> {
        let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| DsseError::Malformed("could not generate an Ed25519 key".into()))?;
        let der = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8_der(&der)?, der))
    }

    /// From PKCS#8 DER holding a P-256 or Ed25519 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, DsseError> {
        let kind = if let Ok(k) = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
        ) {
            SigningKind::EcdsaP256(k)
        } else if let Ok(k) = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        {
            SigningKind::Ed25519(k)
        } else {
            return Err(DsseError::Malformed(
                "private key is not a PKCS#8 ECDSA P-256 or Ed25519 key".into(),
            ));
        };
        let mut key = Self {
            kind,
            keyid: String::new(),
        };
        key.keyid = keyid_of(&key.spki_der());
        Ok(key)
    }

    /// From a `PRIVATE KEY` PEM.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, DsseError> {
        Self::from_pkcs8_der(&pem_der(pem, "private key")?)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        use aws_lc_rs::signature::KeyPair;
        match &self.kind {
            SigningKind::EcdsaP256(k) => PublicKey::EcdsaP256(k.public_key().as_ref().to_vec()),
            SigningKind::Ed25519(k) => {
                let mut raw = [0u8; 32];
                raw.copy_from_slice(k.public_key().as_ref());
                PublicKey::Ed25519(raw)
            }
        }
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        self.public_key().spki_der()
    }

    /// The key id put in signatures: the hex SHA-256 of the SubjectPublicKeyInfo.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DsseError> {
        match &self.kind {
            SigningKind::EcdsaP256(k) => k
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| DsseError::Malformed("signing failed".into())),
            SigningKind::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

impl PublicKey {
    /// As DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        let (prefix, key): (&[u8], &[u8]) = match self {
            Self::EcdsaP256(point) => (&SPKI_P256_PREFIX, point),
            Self::Ed25519(key) => (&SPKI_ED25519_PREFIX, key),
        };
        [prefix, key].concat()
    }

    /// As a `PUBLIC KEY` PEM.
    pub fn spki_pem(&self) -> String {
        let b64 = STANDARD.encode(self.spki_der());
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    /// The key id: the hex SHA-256 of its SubjectPublicKeyInfo.
    pub fn keyid(&self) -> String {
        keyid_of(&self.spki_der())
    }
}

/// The DER inside a PEM block (the lines between the `-----` markers).
fn pem_der(pem: &str, what: &str) -> Result<Vec<u8>, DsseError> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD
        .decode(body)
        .map_err(|_| DsseError::Malformed(format!("{what} PEM is not base64")))
}

fn keyid_of(spki: &[u8]) -> String {
    crate::statement::Sha256::of(spki).hex().to_owned()
}

/// Signs `payload` as `payload_type` with every key (each signature carries its key id).
pub fn sign(
    payload_type: &str,
    payload: &[u8],
    keys: &[&SigningKey],
) -> Result<Envelope, DsseError> {
    let message = pae(payload_type, payload);
    let signatures = keys
        .iter()
        .map(|k| {
            Ok(Signature {
                keyid: Some(k.keyid().to_owned()),
                sig: STANDARD.encode(k.sign(&message)?),
            })
        })
        .collect::<Result<Vec<_>, DsseError>>()?;
    Ok(Envelope {
        payload: STANDARD.encode(payload),
        payload_type: payload_type.to_owned(),
        signatures,
    })
}
