//! JWT-SVIDs (SPIFFE JWT-SVID spec): compact JWS, algorithm pinned to ES256, `sub` the
//! SPIFFE ID, `aud` required, short expiry (default 5 minutes); and the JWT bundle (a JWKS
//! whose keys have `"use": "jwt-svid"`).
//!
//! SECURITY: validation never looks at the token to decide how to validate it beyond
//! choosing a key by `kid`: the algorithm must be exactly `ES256` (so `none`, `HS256` with the
//! public key as a secret, and every other confusion are refused), the key must be in the
//! bundle, and `exp` must be present and in the future.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ringfence_core::{SpiffeId, TrustDomain, UnixTime};
use serde_json::{Map, Value, json};

/// Default JWT-SVID lifetime.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Largest token accepted for validation.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a JWT-SVID is refused (or cannot be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a compact JWS, bad base64 or JSON, or too large.
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    /// The header names another algorithm.
    #[error("JWT-SVID algorithm {0:?} is not allowed: only ES256 is accepted")]
    Algorithm(String),
    /// No key in the bundle has this `kid`.
    #[error("JWT-SVID signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("JWT-SVID signature does not verify")]
    BadSignature,
    /// `exp` is missing or past.
    #[error("JWT-SVID expired or without expiry: {0}")]
    Expired(String),
    /// The audience does not match.
    #[error("JWT-SVID audience {found:?} does not include {expected:?}")]
    Audience {
        /// The audience required.
        expected: String,
        /// The token's audiences.
        found: Vec<String>,
    },
    /// `sub` is not a SPIFFE ID of the trust domain.
    #[error("JWT-SVID subject is invalid: {0}")]
    Subject(String),
    /// An audience is required to mint one.
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    /// Signing failed.
    #[error("signing failed")]
    Signing,
}

/// Signs JWT-SVIDs for one trust domain with a P-256 key.
pub struct JwtIssuer {
    trust_domain: TrustDomain,
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtIssuer {
    /// A new random key.
    pub fn generate(trust_domain: TrustDomain) -> Result<Self, JwtError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| JwtError::Signing)?;
        Self::from_pkcs8(trust_domain, pkcs8.as_ref())
    }

    /// From a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(trust_domain: TrustDomain, pkcs8: &[u8]) -> Result<Self, JwtError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|_| JwtError::Signing)?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pair.public_key().as_ref());
        let kid = B64URL.encode(digest.as_ref().get(..12).unwrap_or_default());
        Ok(Self {
            trust_domain,
            pair,
            pkcs8: pkcs8.to_vec(),
            kid,
        })
    }

    /// The key, PKCS#8 DER (secret).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWT bundle (JWKS JSON) holding this key.
    pub fn jwks(&self) -> String {
        self.jwks_for("jwt-svid")
    }

    /// The key pair.
    pub(crate) fn pair(&self) -> &EcdsaKeyPair {
        &self.pair
    }

    /// A JWKS holding this key with `"use": use_`.
    pub(crate) fn jwks_for(&self, use_: &str) -> String {
        let point = self.pair.public_key().as_ref();
        // Uncompressed point: 0x04 || X (32) || Y (32).
        let x = point.get(1..33).unwrap_or_default();
        let y = point.get(33..65).unwrap_or_default();
        json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": use_, "kid": self.kid,
            "x": B64URL.encode(x), "y": B64URL.encode(y),
        }]})
        .to_string()
    }

    /// Mints a JWT-SVID for `subject` and `audiences`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        now: UnixTime,
        ttl: Duration,
    ) -> Result<String, JwtError> {
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(JwtError::NoAudience);
        }
        if !subject.is_member_of(&self.trust_domain) {
            return Err(JwtError::Subject(format!(
                "{subject} is not in {}",
                self.trust_domain
            )));
        }
        let header = json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" });
        let claims = json!({
            "sub": subject.as_str(),
            "aud": audiences,
            "iat": now.as_secs(),
            "exp": now.saturating_add(ttl).as_secs(),
        });
        sign_es256(&self.pair, &header, &claims)
    }
}

/// A parsed JWT bundle: `kid` → uncompressed P-256 point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtBundle {
    keys: Vec<(String, Vec<u8>)>,
}

impl JwtBundle {
    /// Parses a JWKS; keys that are not `EC`/`P-256` are skipped.
    pub fn parse(jwks: &str) -> Result<Self, JwtError> {
        let v: Value =
            serde_json::from_str(jwks).map_err(|e| JwtError::Malformed(format!("JWKS: {e}")))?;
        let mut keys = Vec::new();
        for k in v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwtError::Malformed("JWKS without keys".into()))?
        {
            if k.get("kty").and_then(Value::as_str) != Some("EC")
                || k.get("crv").and_then(Value::as_str) != Some("P-256")
            {
                continue;
            }
            let field = |name: &str| -> Result<Vec<u8>, JwtError> {
                let s = k
                    .get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| JwtError::Malformed(format!("JWK without {name}")))?;
                B64URL
                    .decode(s)
                    .map_err(|_| JwtError::Malformed(format!("JWK {name} is not base64url")))
            };
            let (x, y) = (field("x")?, field("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(JwtError::Malformed(
                    "JWK coordinates are not 32 bytes".into(),
                ));
            }
            let kid = k
                .get("kid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            keys.push((kid, point));
        }
        Ok(Self { keys })
    }
}

/// A validated token's subject and claims.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// All claims.
    pub claims: Map<String, Value>,
}

/// A decoded JSON object (a JWS header or claims set).
pub type JsonObject = Map<String, Value>;

/// Verifies an ES256 compact JWS against `bundle` and returns its header and claims. Only
/// `ES256` is accepted, the key is chosen by `kid` from the bundle alone, and nothing else in
/// the header decides how the token is checked.
pub fn verify_es256(token: &str, bundle: &JwtBundle) -> Result<(JsonObject, JsonObject), JwtError> {
    let (header, claims, signing_input, sig) = split_compact(token)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if alg != "ES256" {
        return Err(JwtError::Algorithm(alg.to_owned()));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (_, point) = bundle
        .keys
        .iter()
        .find(|(k, _)| k == kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.to_owned()))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature)?;
    Ok((header, claims))
}

/// A compact JWS split into its decoded header and claims, the signing input and the
/// signature bytes (nothing verified yet).
pub(crate) type Compact<'a> = (JsonObject, JsonObject, &'a str, Vec<u8>);

/// Splits a compact JWS (size-limited) without verifying it.
pub(crate) fn split_compact(token: &str) -> Result<Compact<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed(format!(
            "{} bytes; at most {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts".into()));
    };
    let decode_json = |part: &str, what: &str| -> Result<Map<String, Value>, JwtError> {
        let bytes = B64URL
            .decode(part)
            .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(JwtError::Malformed(format!("{what} is not a JSON object"))),
        }
    };
    let header = decode_json(h, "header")?;
    let claims = decode_json(p, "claims")?;
    let sig = B64URL
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url".into()))?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or_else(|| JwtError::Malformed("truncated".into()))?;
    Ok((header, claims, signing_input, sig))
}

/// Signs `header` and `claims` as an ES256 compact JWS.
pub(crate) fn sign_es256(
    pair: &EcdsaKeyPair,
    header: &Value,
    claims: &Value,
) -> Result<String, JwtError> {
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let sig = pair
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| JwtError::Signing)?;
    Ok(format!("{signing_input}.{}", B64URL.encode(sig.as_ref())))
}

/// Validates a JWT-SVID for `audience` against `bundle` of `trust_domain` at `now`.
pub fn validate(
    token: &str,
    audience: &str,
    bundle: &JwtBundle,
    trust_domain: &TrustDomain,
    now: UnixTime,
) -> Result<ValidatedJwt, JwtError> {
    let (_, claims) = verify_es256(token, bundle)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| JwtError::Expired("no exp claim".into()))?;
    if exp <= now.as_secs() {
        return Err(JwtError::Expired(format!(
            "exp {exp} is not after now {}",
            now.as_secs()
        )));
    }
    let audiences: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    };
    if !audiences.iter().any(|a| a == audience) {
        return Err(JwtError::Audience {
            expected: audience.to_owned(),
            found: audiences,
        });
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Subject("no sub claim".into()))?;
    let spiffe_id = SpiffeId::parse(sub).map_err(|e| JwtError::Subject(e.to_string()))?;
    if !spiffe_id.is_member_of(trust_domain) {
        return Err(JwtError::Subject(format!(
            "{spiffe_id} is not in {trust_domain}"
        )));
    }
    Ok(ValidatedJwt { spiffe_id, claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

    fn setup() -> (JwtIssuer, JwtBundle, TrustDomain, SpiffeId) {
        let td = TrustDomain::parse("example.org").unwrap();
        let issuer = JwtIssuer::generate(td.clone()).unwrap();
        let bundle = JwtBundle::parse(&issuer.jwks()).unwrap();
        (
            issuer,
            bundle,
            td,
            SpiffeId::parse("spiffe://example.org/ns/prod/svc/web").unwrap(),
        )
    }

    fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string()),
            B64URL.encode(sig)
        )
    }

    #[test]
    fn round_trip_and_audience_expiry() {
        let (issuer, bundle, td, id) = setup();
        let token = issuer
            .issue(&id, &["api".into()], NOW, DEFAULT_JWT_TTL)
            .unwrap();
        let v = validate(&token, "api", &bundle, &td, NOW).unwrap();
        assert_eq!(v.spiffe_id, id);
        assert_eq!(
            validate(&token, "other", &bundle, &td, NOW),
            Err(JwtError::Audience {
                expected: "other".into(),
                found: vec!["api".into()]
            })
        );
        let later = NOW.saturating_add(DEFAULT_JWT_TTL);
        assert!(matches!(
            validate(&token, "api", &bundle, &td, later),
            Err(JwtError::Expired(_))
        ));
        assert_eq!(
            issuer.issue(&id, &[], NOW, DEFAULT_JWT_TTL),
            Err(JwtError::NoAudience)
        );
    }

    #[test]
    fn alg_none_and_hs256_with_the_public_key_are_refused() {
        let (issuer, bundle, td, _) = setup();
        let claims =
            json!({"sub": "spiffe://example.org/x", "aud": ["api"], "exp": NOW.as_secs() + 60});
        let none = forge(&json!({"alg": "none", "kid": issuer.kid()}), &claims, b"");
        assert_eq!(
            validate(&none, "api", &bundle, &td, NOW),
            Err(JwtError::Algorithm("none".into()))
        );
        // HS256 keyed with the public key bytes: the classic confusion.
        let header = json!({"alg": "HS256", "kid": issuer.kid()});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, issuer.jwks().as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        let hs = format!("{input}.{}", B64URL.encode(tag.as_ref()));
        assert_eq!(
            validate(&hs, "api", &bundle, &td, NOW),
            Err(JwtError::Algorithm("HS256".into()))
        );
    }

    #[test]
    fn unknown_keys_tampering_and_garbage_are_refused() {
        let (issuer, bundle, td, id) = setup();
        let other = JwtIssuer::generate(td.clone()).unwrap();
        let token = other
            .issue(&id, &["api".into()], NOW, DEFAULT_JWT_TTL)
            .unwrap();
        assert!(matches!(
            validate(&token, "api", &bundle, &td, NOW),
            Err(JwtError::UnknownKey(_))
        ));
        let good = issuer
            .issue(&id, &["api".into()], NOW, DEFAULT_JWT_TTL)
            .unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let evil_claims = json!({"sub": "spiffe://example.org/ns/prod/svc/admin", "aud": ["api"], "exp": NOW.as_secs() + 60});
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(evil_claims.to_string()),
            parts[2]
        );
        assert_eq!(
            validate(&tampered, "api", &bundle, &td, NOW),
            Err(JwtError::BadSignature)
        );
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(
                    validate(bad, "api", &bundle, &td, NOW),
                    Err(JwtError::Malformed(_))
                ),
                "{bad:.20}"
            );
        }
        let foreign = TrustDomain::parse("evil.org").unwrap();
        assert!(matches!(
            validate(&good, "api", &bundle, &foreign, NOW),
            Err(JwtError::Subject(_))
        ));
    }
}
