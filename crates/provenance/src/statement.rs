//! in-toto Statement v1: the signed claim inside a DSSE envelope — which artifacts (subjects,
//! by digest) a predicate is about.
//!
//! Only a [`VerifiedEnvelope`] of payload type `application/vnd.in-toto+json` can become a
//! [`Statement`], so nothing downstream can read claims whose signatures were not checked.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::dsse::VerifiedEnvelope;

/// The DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The Statement v1 type URI.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    /// Not a Statement v1.
    #[error("malformed in-toto statement: {0}")]
    Malformed(String),
}

/// A SHA-256 digest: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(String);

impl Sha256 {
    /// Parses `sha256:<hex>` or bare hex.
    pub fn parse(s: &str) -> Result<Self, StatementError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(StatementError::Malformed(format!(
                "{s:?} is not a sha256 digest (64 lowercase hex digits)"
            )));
        }
        Ok(Self(hex.to_owned()))
    }

    /// The hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<RawSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    predicate: Value,
}

#[derive(Deserialize)]
struct RawSubject {
    #[serde(default)]
    name: String,
    digest: BTreeMap<String, String>,
}

/// One subject: a name and its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The artifact's name (informative).
    pub name: String,
    /// Its SHA-256 digest.
    pub sha256: Sha256,
}

/// A statement from a verified envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    subjects: Vec<Subject>,
    predicate_type: String,
    predicate: Value,
    signers: Vec<String>,
}

impl Statement {
    /// Reads the statement inside a verified envelope. Subjects must carry a SHA-256 digest;
    /// other digest algorithms of a subject are ignored.
    pub fn from_envelope(envelope: &VerifiedEnvelope) -> Result<Self, StatementError> {
        if envelope.payload_type() != PAYLOAD_TYPE {
            return Err(StatementError::Malformed(format!(
                "payload type {:?} is not {PAYLOAD_TYPE}",
                envelope.payload_type()
            )));
        }
        let raw: RawStatement = serde_json::from_slice(envelope.payload())
            .map_err(|e| StatementError::Malformed(e.to_string()))?;
        if raw.type_ != STATEMENT_V1 {
            return Err(StatementError::Malformed(format!(
                "_type {:?} is not {STATEMENT_V1}",
                raw.type_
            )));
        }
        if raw.predicate_type.is_empty() {
            return Err(StatementError::Malformed("predicateType is empty".into()));
        }
        if raw.subject.is_empty() {
            return Err(StatementError::Malformed("no subject".into()));
        }
        let subjects = raw
            .subject
            .into_iter()
            .map(|s| {
                let digest = s.digest.get("sha256").ok_or_else(|| {
                    StatementError::Malformed(format!("subject {:?} has no sha256 digest", s.name))
                })?;
                Ok(Subject {
                    name: s.name,
                    sha256: Sha256::parse(digest)?,
                })
            })
            .collect::<Result<Vec<_>, StatementError>>()?;
        Ok(Self {
            subjects,
            predicate_type: raw.predicate_type,
            predicate: raw.predicate,
            signers: envelope.signers().to_vec(),
        })
    }

    /// True when a subject has exactly this digest.
    pub fn covers(&self, digest: &Sha256) -> bool {
        self.subjects.iter().any(|s| &s.sha256 == digest)
    }

    /// The subjects.
    pub fn subjects(&self) -> &[Subject] {
        &self.subjects
    }

    /// The predicate type URI.
    pub fn predicate_type(&self) -> &str {
        &self.predicate_type
    }

    /// The predicate (its schema depends on the predicate type).
    pub fn predicate(&self) -> &Value {
        &self.predicate
    }

    /// Who signed the envelope it came in.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }
}
