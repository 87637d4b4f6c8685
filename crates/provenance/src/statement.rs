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

    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_raw(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
    }

    /// The SHA-256 of what `reader` yields, reading at most `limit + 1` bytes; also returns
    /// how many bytes were read (more than `limit` means the input is longer than allowed,
    /// and the digest covers only what was read).
    pub fn of_reader(mut reader: impl std::io::Read, limit: u64) -> std::io::Result<(Self, u64)> {
        use std::io::Read;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 128 * 1024];
        let mut len = 0u64;
        let mut r = reader.by_ref().take(limit.saturating_add(1));
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            len += n as u64;
            ctx.update(buf.get(..n).unwrap_or_default());
        }
        Ok((Self::from_raw(ctx.finish().as_ref()), len))
    }

    /// From the 32 raw bytes of a finished SHA-256 (a streaming hash's output).
    pub fn from_raw(digest: &[u8]) -> Self {
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// A git commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn parse_commit(s: &str) -> Result<String, StatementError> {
    if (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(s.to_owned())
    } else {
        Err(StatementError::Malformed(format!(
            "{s:?} is not a git commit id (40 or 64 lowercase hex digits)"
        )))
    }
}

/// Builds the JSON of a Statement v1 (for signing): subjects are `(name, digest)` pairs
/// where the digest is `sha256:<hex>` or `gitCommit:<hex>`.
pub fn build(subjects: &[(&str, &str)], predicate_type: &str, predicate: Value) -> Value {
    let subject: Vec<Value> = subjects
        .iter()
        .map(|(name, digest)| {
            let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
            serde_json::json!({"name": name, "digest": {alg: hex}})
        })
        .collect();
    serde_json::json!({
        "_type": STATEMENT_V1,
        "subject": subject,
        "predicateType": predicate_type,
        "predicate": predicate,
    })
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

/// One subject: a name and its digest — SHA-256 for artifacts (images, files, job
/// configurations), `gitCommit` for source revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The artifact's name (informative).
    pub name: String,
    /// Its SHA-256 digest, if it has one.
    pub sha256: Option<Sha256>,
    /// The git commit it names, if it is a source revision (40 or 64 lowercase hex digits).
    pub git_commit: Option<String>,
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
                let sha256 = s
                    .digest
                    .get("sha256")
                    .map(|d| Sha256::parse(d))
                    .transpose()?;
                let git_commit = s
                    .digest
                    .get("gitCommit")
                    .map(|c| parse_commit(c))
                    .transpose()?;
                if sha256.is_none() && git_commit.is_none() {
                    return Err(StatementError::Malformed(format!(
                        "subject {:?} has no sha256 or gitCommit digest",
                        s.name
                    )));
                }
                Ok(Subject {
                    name: s.name,
                    sha256,
                    git_commit,
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
        self.subjects
            .iter()
            .any(|s| s.sha256.as_ref() == Some(digest))
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
