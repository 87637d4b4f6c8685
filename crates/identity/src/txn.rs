//! End-user context tickets: OAuth Transaction Tokens (draft-ietf-oauth-transaction-tokens),
//! and the call-chain links that bind a token to the workloads it passed through.
//!
//! A **transaction token** is a short-lived (at most 5 minutes) ES256 JWT with header
//! `typ: txntoken+jwt`, minted by the trust domain's token service for an authenticated user:
//! `iss` (the service), `iat`, `exp`, `aud` (`spiffe://<trust domain>`), `txn` (the transaction),
//! `sub` (the user), `purp` (optional), `tctx` (string-valued transaction context) and
//! `rctx.req_wl` (the workload it was minted for, where the call chain starts).
//!
//! A **link** is an ES256 JWS (`typ: ringfence-txn-link+jwt`) that a caller's proxy signs with
//! the caller's own SVID key for every call that carries a token: `tth` (SHA-256 of the token),
//! `txn`, `from` (the caller), `to` (the callee), `iat`, `exp`; its `x5c` header carries the
//! caller's SVID chain. A callee accepts a token presented by peer P only with links
//! `L1..Ln` such that `L1.from` is the token's `req_wl`, each `Li.from` is `L(i-1).to`, `Ln.from`
//! is P (the mTLS peer) and `Ln.to` is the callee itself, every link is signed by the key of an
//! SVID of the trust domain whose SPIFFE ID is its `from`, and every link names this token.
//! A workload that was never handed the token therefore cannot use it, even holding the token
//! and every link: it cannot sign the next link as the workload the last link names.
//!
//! SECURITY: the algorithm is pinned (`alg: none`, `HS256` with the public key as a secret and
//! every other choice are refused before any key is used), the token's `typ` must be
//! `txntoken+jwt` (a JWT-SVID is not a transaction token even under the same key), and token
//! keys come only from the token service's JWKS.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ringfence_core::{SpiffeId, TrustDomain, UnixTime};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value, json};

use crate::jwt::{JwtBundle, JwtError, JwtIssuer, sign_es256, split_compact, verify_es256};
use crate::workload_api::X509Material;

/// The JWT `typ` of a transaction token.
pub const TOKEN_TYP: &str = "txntoken+jwt";
/// The JWT `typ` of a call-chain link.
pub const LINK_TYP: &str = "ringfence-txn-link+jwt";
/// The longest a token may live.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// The default lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);
/// How far ahead a token's `iat` may be (clock skew).
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// The most links a chain may have.
pub const MAX_LINKS: usize = 8;
/// The HTTP header that carries the token.
pub const TOKEN_HEADER: &str = "txn-token";
/// The HTTP header that carries the links, comma-separated, oldest first.
pub const CHAIN_HEADER: &str = "ringfence-txn-chain";

/// Why a token or a chain is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// The JWS layer refused it (malformed, algorithm, key, signature).
    #[error("transaction token refused: {0}")]
    Jws(String),
    /// Another `typ`.
    #[error("transaction token refused: typ {0:?} is not \"txntoken+jwt\"")]
    Type(String),
    /// A claim is missing or malformed.
    #[error("transaction token refused: {0}")]
    Claim(String),
    /// Past its `exp`.
    #[error("transaction token refused: expired at {exp}, now {now}")]
    Expired {
        /// Its expiry, seconds.
        exp: u64,
        /// Now, seconds.
        now: u64,
    },
    /// Issued in the future.
    #[error("transaction token refused: issued at {iat}, after now {now}")]
    NotYetValid {
        /// Its issue time, seconds.
        iat: u64,
        /// Now, seconds.
        now: u64,
    },
    /// Lives longer than allowed.
    #[error("transaction token refused: lifetime {0} s exceeds 300 s")]
    Lifetime(u64),
    /// For another trust domain.
    #[error("transaction token refused: aud {found:?} is not {expected:?}")]
    Audience {
        /// The audience required.
        expected: String,
        /// The token's.
        found: String,
    },
    /// The call chain does not lead from the token's workload to this call.
    #[error("transaction token refused: call chain: {0}")]
    Chain(String),
    /// Minting failed.
    #[error("transaction token could not be minted: {0}")]
    Mint(String),
}

/// What a token is minted for.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The user.
    pub subject: String,
    /// The workload it is handed to (the start of the call chain).
    pub for_workload: SpiffeId,
    /// Why (`purp`), if said.
    pub purpose: Option<String>,
    /// Transaction context (`tctx`).
    pub context: BTreeMap<String, String>,
    /// Lifetime, at most [`MAX_TTL`].
    pub ttl: Duration,
}

/// The trust domain's token service key.
#[derive(Debug)]
pub struct TokenService {
    key: JwtIssuer,
    trust_domain: TrustDomain,
}

impl TokenService {
    /// A new random key.
    pub fn generate(trust_domain: TrustDomain) -> Result<Self, TxnError> {
        let key = JwtIssuer::generate(trust_domain.clone()).map_err(jws)?;
        Ok(Self { key, trust_domain })
    }

    /// From a PKCS#8 P-256 key.
    pub fn from_pkcs8(trust_domain: TrustDomain, pkcs8: &[u8]) -> Result<Self, TxnError> {
        let key = JwtIssuer::from_pkcs8(trust_domain.clone(), pkcs8).map_err(jws)?;
        Ok(Self { key, trust_domain })
    }

    /// The key, PKCS#8 DER (secret).
    pub fn pkcs8(&self) -> &[u8] {
        self.key.pkcs8()
    }

    /// The JWKS proxies verify tokens with (`"use": "txn-token"`).
    pub fn jwks(&self) -> String {
        self.key.jwks_for("txn-token")
    }

    /// The service's own ID, the tokens' `iss`.
    pub fn issuer(&self) -> String {
        format!("spiffe://{}/ringfence/txn-token-service", self.trust_domain)
    }

    /// Mints a token.
    pub fn mint(&self, req: &MintRequest, now: UnixTime) -> Result<String, TxnError> {
        if req.ttl > MAX_TTL || req.ttl.is_zero() {
            return Err(TxnError::Mint(format!(
                "lifetime {:?} must be between 1 s and 300 s",
                req.ttl
            )));
        }
        if req.subject.is_empty() || req.subject.len() > 256 {
            return Err(TxnError::Mint("the user must be 1 to 256 bytes".into()));
        }
        if !req.for_workload.is_member_of(&self.trust_domain) {
            return Err(TxnError::Mint(format!(
                "{} is not in {}",
                req.for_workload, self.trust_domain
            )));
        }
        let mut txn = [0u8; 16];
        aws_lc_rs::rand::fill(&mut txn).map_err(|_| TxnError::Mint("no randomness".into()))?;
        let mut claims = json!({
            "iss": self.issuer(),
            "iat": now.as_secs(),
            "exp": now.saturating_add(req.ttl).as_secs(),
            "aud": self.trust_domain.id().as_str(),
            "txn": B64URL.encode(txn),
            "sub": req.subject,
            "tctx": req.context,
            "rctx": { "req_wl": req.for_workload.as_str() },
        });
        if let (Some(p), Some(m)) = (&req.purpose, claims.as_object_mut()) {
            m.insert("purp".into(), Value::String(p.clone()));
        }
        let header = json!({ "alg": "ES256", "typ": TOKEN_TYP, "kid": self.key.kid() });
        sign_es256(self.key.pair(), &header, &claims).map_err(jws)
    }
}

/// A token whose signature, type, audience and times were checked. Only [`verify_token`]
/// makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The transaction.
    pub txn: String,
    /// The user.
    pub subject: String,
    /// The workload the chain starts at.
    pub requester: SpiffeId,
    /// Why, if said.
    pub purpose: Option<String>,
    /// String-valued transaction context.
    pub context: BTreeMap<String, String>,
    /// Expiry, seconds.
    pub exp: u64,
    /// SHA-256 of the token, base64url: what links name.
    pub hash: String,
}

/// The JWS layer's refusal in a token's words.
fn jws(e: JwtError) -> TxnError {
    TxnError::Jws(match e {
        JwtError::Algorithm(a) => {
            format!("algorithm {a:?} is not allowed: only ES256 is accepted")
        }
        JwtError::UnknownKey(k) => format!("signed by unknown key {k:?}"),
        JwtError::BadSignature => "signature does not verify".into(),
        JwtError::Malformed(m) => format!("malformed: {m}"),
        other => other.to_string(),
    })
}

fn str_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, TxnError> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TxnError::Claim(format!("no {name} claim")))
}

fn token_hash(token: &str) -> String {
    B64URL.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Verifies a token with the token service's `keys` for `trust_domain` at `now`.
pub fn verify_token(
    token: &str,
    keys: &JwtBundle,
    trust_domain: &TrustDomain,
    now: UnixTime,
) -> Result<VerifiedToken, TxnError> {
    let (header, claims) = verify_es256(token, keys).map_err(jws)?;
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if typ != TOKEN_TYP {
        return Err(TxnError::Type(typ.to_owned()));
    }
    let secs = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| TxnError::Claim(format!("no numeric {name} claim")))
    };
    let (iat, exp) = (secs("iat")?, secs("exp")?);
    if exp <= now.as_secs() {
        return Err(TxnError::Expired {
            exp,
            now: now.as_secs(),
        });
    }
    if iat > now.saturating_add(MAX_SKEW).as_secs() {
        return Err(TxnError::NotYetValid {
            iat,
            now: now.as_secs(),
        });
    }
    if exp.saturating_sub(iat) > MAX_TTL.as_secs() {
        return Err(TxnError::Lifetime(exp.saturating_sub(iat)));
    }
    let expected = trust_domain.id().as_str().to_owned();
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if aud != expected {
        return Err(TxnError::Audience {
            expected,
            found: aud.to_owned(),
        });
    }
    let requester = claims
        .get("rctx")
        .and_then(|r| r.get("req_wl"))
        .and_then(Value::as_str)
        .ok_or_else(|| TxnError::Claim("no rctx.req_wl claim".into()))?;
    let requester = SpiffeId::parse(requester)
        .ok()
        .filter(|id| id.is_member_of(trust_domain))
        .ok_or_else(|| {
            TxnError::Claim(format!(
                "rctx.req_wl {requester:?} is not a workload of {trust_domain}"
            ))
        })?;
    let context = claims
        .get("tctx")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(VerifiedToken {
        txn: str_claim(&claims, "txn")?.to_owned(),
        subject: str_claim(&claims, "sub")?.to_owned(),
        requester,
        purpose: claims
            .get("purp")
            .and_then(Value::as_str)
            .map(str::to_owned),
        context,
        exp,
        hash: token_hash(token),
    })
}

/// Signs the link `from` (the caller whose SVID `material` holds) → `to` for `token`.
pub fn sign_link(
    token: &VerifiedToken,
    material: &X509Material,
    to: &SpiffeId,
    now: UnixTime,
) -> Result<String, TxnError> {
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &material.key_pkcs8_der)
        .map_err(|_| TxnError::Mint("the SVID key is not a P-256 key".into()))?;
    let x5c: Vec<String> = std::iter::once(&material.cert_der)
        .chain(material.intermediates.iter())
        .map(|der| B64.encode(der))
        .collect();
    let header = json!({ "alg": "ES256", "typ": LINK_TYP, "x5c": x5c });
    let exp = token.exp.min(now.saturating_add(MAX_TTL).as_secs());
    let claims = json!({
        "tth": token.hash,
        "txn": token.txn,
        "from": material.spiffe_id.as_str(),
        "to": to.as_str(),
        "iat": now.as_secs(),
        "exp": exp,
    });
    sign_es256(&pair, &header, &claims).map_err(jws)
}

/// One verified link: who handed the token to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The caller that signed it.
    pub from: SpiffeId,
    /// The callee it names.
    pub to: SpiffeId,
}

/// Verifies `links` for `token` presented by `presenter` to `callee`, with the X.509 trust
/// `bundle_der` of `trust_domain`, at `now`. Returns the hops, oldest first.
pub fn verify_chain(
    token: &VerifiedToken,
    links: &[&str],
    presenter: &SpiffeId,
    callee: &SpiffeId,
    bundle_der: &[u8],
    trust_domain: &TrustDomain,
    now: UnixTime,
) -> Result<Vec<Hop>, TxnError> {
    let chain = |m: String| TxnError::Chain(m);
    if links.is_empty() {
        return Err(chain(format!(
            "no links: the token was minted for {} and {presenter} shows no hop from it",
            token.requester
        )));
    }
    if links.len() > MAX_LINKS {
        return Err(chain(format!("{} links; at most {MAX_LINKS}", links.len())));
    }
    let mut holder = token.requester.clone();
    let mut hops = Vec::with_capacity(links.len());
    for (i, link) in links.iter().enumerate() {
        let n = i + 1;
        let hop = verify_link(link, token, bundle_der, trust_domain, now)
            .map_err(|e| chain(format!("link {n}: {e}")))?;
        if hop.from != holder {
            return Err(chain(format!(
                "link {n} is from {} but the token was held by {holder}",
                hop.from
            )));
        }
        holder = hop.to.clone();
        hops.push(hop);
    }
    let last = hops.last().ok_or_else(|| chain("no links".into()))?;
    if &last.from != presenter {
        return Err(chain(format!(
            "the last link is from {} but {presenter} presented the token",
            last.from
        )));
    }
    if &last.to != callee {
        return Err(chain(format!(
            "the last link is to {} but this is {callee}",
            last.to
        )));
    }
    Ok(hops)
}

fn verify_link(
    link: &str,
    token: &VerifiedToken,
    bundle_der: &[u8],
    trust_domain: &TrustDomain,
    now: UnixTime,
) -> Result<Hop, String> {
    let (header, claims, signing_input, sig) = split_compact(link).map_err(|e| e.to_string())?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if alg != "ES256" {
        return Err(format!("algorithm {alg:?} is not allowed: only ES256"));
    }
    if header.get("typ").and_then(Value::as_str) != Some(LINK_TYP) {
        return Err(format!("typ is not {LINK_TYP:?}"));
    }
    let x5c: Vec<CertificateDer<'static>> = header
        .get("x5c")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty() && a.len() <= 4)
        .ok_or("x5c must hold 1 to 4 certificates")?
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| B64.decode(s).ok())
                .map(CertificateDer::from)
                .ok_or("x5c entry is not base64 DER")
        })
        .collect::<Result<_, _>>()?;
    let (leaf, intermediates) = x5c.split_first().ok_or("empty x5c")?;
    let signer = crate::tls::verify_chain(
        bundle_der,
        trust_domain,
        leaf,
        intermediates,
        now,
        webpki::KeyUsage::client_auth(),
    )
    .map_err(|e| format!("signer certificate: {e}"))?;
    let point = public_point(leaf)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| "signature does not verify".to_owned())?;
    let get = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if get("tth") != token.hash || get("txn") != token.txn {
        return Err("names another token".into());
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    if exp <= now.as_secs() {
        return Err(format!("expired at {exp}"));
    }
    let from = SpiffeId::parse(get("from")).map_err(|e| format!("from: {e}"))?;
    if from != signer {
        return Err(format!("says it is from {from} but is signed by {signer}"));
    }
    let to = SpiffeId::parse(get("to")).map_err(|e| format!("to: {e}"))?;
    Ok(Hop { from, to })
}

/// The uncompressed P-256 point of a certificate's key.
fn public_point(cert: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| format!("certificate: {e}"))?;
    let point = parsed.public_key().subject_public_key.data.to_vec();
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err("the signer's key is not an uncompressed P-256 point".into());
    }
    Ok(point)
}

#[cfg(test)]
mod tests;
