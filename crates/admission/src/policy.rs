//! Service policies: which code and configuration may run as a service identity, in one
//! environment. YAML, Kubernetes-style; every level refuses unknown fields, so a misspelt
//! requirement is an error rather than a requirement silently not enforced.
//!
//! ```yaml
//! apiVersion: ringfence.dev/v1
//! kind: ServicePolicy
//! metadata: {name: web-production}
//! spec:
//!   namespace: payments
//!   service: web
//!   environments: [production]
//!   mode: enforce                    # or dry-run
//!   images:
//!     repositories: ["registry.acme.test/payments/*"]
//!   builders:
//!     - id: https://builder.acme.test/v1
//!       threshold: 2
//!       keys: [{name: ci-a, publicKey: "-----BEGIN PUBLIC KEY-----..."}]
//!   source:
//!     repositories: ["https://git.acme.test/payments/*"]
//!     refs: ["refs/heads/main"]
//!   review:
//!     minReviewers: 1
//!     ownerApproval: true
//!     owners: [carol]
//!     configReviewed: true
//!     threshold: 1
//!     keys: [...]
//!   maxAge: 90d
//!   continuousVerification: {interval: 24h, revokeSvidOnFailure: true}
//! ```

use std::time::Duration;

use ringfence_provenance::dsse::{PreparedKeys, PublicKey, TrustedKey};
use ringfence_provenance::statement::Sha256;
use serde::{Deserialize, Serialize};

/// Largest policy document, in bytes.
pub const MAX_POLICY_LEN: usize = 256 * 1024;
/// The API version of policies.
pub const API_VERSION: &str = "ringfence.dev/v1";

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not valid YAML for a policy.
    #[error("invalid service policy: {0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(s.into())
}

/// Enforce or only record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A non-conforming job is refused.
    #[default]
    Enforce,
    /// A non-conforming job is admitted and the would-deny recorded.
    DryRun,
}

/// The document as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyDoc {
    /// `ringfence.dev/v1`.
    pub api_version: String,
    /// `ServicePolicy`.
    pub kind: String,
    /// Name.
    pub metadata: Metadata,
    /// The policy.
    pub spec: Spec,
}

/// Metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The policy's name (unique in a policy set).
    pub name: String,
}

/// A public key in a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySpec {
    /// A name for reasons and reports.
    pub name: String,
    /// SPKI PEM (ECDSA P-256 or Ed25519).
    pub public_key: String,
}

/// A trusted builder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuilderSpec {
    /// The builder id its provenance must name.
    pub id: String,
    /// Its signing keys.
    pub keys: Vec<KeySpec>,
    /// Distinct keys that must sign (default 1).
    #[serde(default = "one")]
    pub threshold: usize,
}

fn one() -> usize {
    1
}

/// Image rules.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    /// Allowed repositories (globs: `*` within a path segment, `**` across segments).
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Allowed manifest digests (`sha256:...`), whatever the repository.
    #[serde(default)]
    pub digests: Vec<String>,
}

/// Source rules for the provenance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Allowed repositories (globs).
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Allowed refs (globs).
    #[serde(default)]
    pub refs: Vec<String>,
}

/// Review rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewSpec {
    /// Approvals needed from people other than the author.
    #[serde(default = "one")]
    pub min_reviewers: usize,
    /// The owner must approve.
    #[serde(default)]
    pub owner_approval: bool,
    /// Who counts as owner (empty: any owner approval the review system signed).
    #[serde(default)]
    pub owners: Vec<String>,
    /// The job's configuration must be among the reviewed files.
    #[serde(default)]
    pub config_reviewed: bool,
    /// The review system's signing keys.
    pub keys: Vec<KeySpec>,
    /// Distinct keys that must sign (default 1).
    #[serde(default = "one")]
    pub threshold: usize,
}

/// Another attestation the policy requires (a scan, a test result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationSpec {
    /// Its predicate type.
    pub predicate_type: String,
    /// The attestor's keys.
    pub keys: Vec<KeySpec>,
    /// Distinct keys that must sign (default 1).
    #[serde(default = "one")]
    pub threshold: usize,
}

/// An exemption with its justification (C5, C12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exemption {
    /// Why.
    pub justification: String,
    /// Who approved the exemption.
    pub approved_by: String,
}

/// Continuous verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContinuousSpec {
    /// How often running jobs are re-checked (at most 24h).
    #[serde(default = "day", with = "duration")]
    pub interval: Duration,
    /// A failing job loses SVID renewal.
    #[serde(default)]
    pub revoke_svid_on_failure: bool,
}

fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for ContinuousSpec {
    fn default() -> Self {
        Self {
            interval: day(),
            revoke_svid_on_failure: false,
        }
    }
}

/// Who is told.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySpec {
    /// The owning team's sink name (configured in the daemon config).
    #[serde(default)]
    pub owners: Option<String>,
}

/// The policy proper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// The service's namespace.
    pub namespace: String,
    /// The service.
    pub service: String,
    /// Environments it applies to (empty: all).
    #[serde(default)]
    pub environments: Vec<String>,
    /// Enforce or dry-run.
    #[serde(default)]
    pub mode: Mode,
    /// An explicit allow-all (services without sensitive data), with its reason.
    #[serde(default)]
    pub allow_all: Option<Exemption>,
    /// An opt-out from enforcement, with its justification.
    #[serde(default)]
    pub opt_out: Option<Exemption>,
    /// Image rules.
    #[serde(default)]
    pub images: ImageSpec,
    /// Trusted builders (provenance required when non-empty).
    #[serde(default)]
    pub builders: Vec<BuilderSpec>,
    /// Source rules.
    #[serde(default)]
    pub source: SourceSpec,
    /// Review rules (review required when present).
    #[serde(default)]
    pub review: Option<ReviewSpec>,
    /// Further required attestations.
    #[serde(default)]
    pub attestations: Vec<AttestationSpec>,
    /// Oldest acceptable attestation.
    #[serde(default, with = "opt_dur")]
    pub max_age: Option<Duration>,
    /// Continuous verification.
    #[serde(default)]
    pub continuous_verification: ContinuousSpec,
    /// Notifications.
    #[serde(default)]
    pub notify: NotifySpec,
}

/// Serde for a `Duration` written as humantime text (`24h`, `90days`).
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    /// Writes the duration as humantime text.
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    /// Reads humantime text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

mod opt_dur {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s)
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
        })
        .transpose()
    }
}

/// A group of keys with a threshold, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroup {
    /// The keys, parsed for verification.
    pub keys: PreparedKeys,
    /// Distinct keys required.
    pub threshold: usize,
}

/// A trusted builder, keys parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builder {
    /// Its id.
    pub id: String,
    /// Its keys.
    pub keys: KeyGroup,
}

/// A policy checked and compiled for evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The document.
    pub doc: PolicyDoc,
    /// SHA-256 of the canonical JSON of the document (names the exact version in verdicts).
    pub digest: Sha256,
    /// Builders.
    pub builders: Vec<Builder>,
    /// Review keys.
    pub review_keys: Option<KeyGroup>,
    /// Further attestations' keys, in `spec.attestations` order.
    pub attestation_keys: Vec<KeyGroup>,
    /// Allowed digests.
    pub digests: Vec<Sha256>,
}

fn key_group(what: &str, keys: &[KeySpec], threshold: usize) -> Result<KeyGroup, PolicyError> {
    if keys.is_empty() {
        return Err(invalid(format!("{what}: no keys")));
    }
    if threshold == 0 || threshold > keys.len() {
        return Err(invalid(format!(
            "{what}: threshold {threshold} must be between 1 and the number of keys ({})",
            keys.len()
        )));
    }
    let mut out: Vec<TrustedKey> = Vec::with_capacity(keys.len());
    for k in keys {
        let key = PublicKey::from_spki_pem(&k.public_key)
            .map_err(|e| invalid(format!("{what}: key {:?}: {e}", k.name)))?;
        if out.iter().any(|o| o.key == key) {
            return Err(invalid(format!(
                "{what}: key {:?} is listed twice; a threshold counts distinct keys",
                k.name
            )));
        }
        out.push(TrustedKey {
            name: k.name.clone(),
            keyid: Some(key.keyid()),
            key,
        });
    }
    Ok(KeyGroup {
        keys: PreparedKeys::new(out).map_err(|e| invalid(format!("{what}: {e}")))?,
        threshold,
    })
}

impl Policy {
    /// Parses and checks a YAML policy.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(invalid(format!(
                "{} bytes; at most {MAX_POLICY_LEN} are accepted",
                text.len()
            )));
        }
        let doc: PolicyDoc = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        Self::from_doc(doc)
    }

    /// Checks a parsed document.
    pub fn from_doc(doc: PolicyDoc) -> Result<Self, PolicyError> {
        if doc.api_version != API_VERSION {
            return Err(invalid(format!(
                "apiVersion {:?} is not {API_VERSION}",
                doc.api_version
            )));
        }
        if doc.kind != "ServicePolicy" {
            return Err(invalid(format!("kind {:?} is not ServicePolicy", doc.kind)));
        }
        let s = &doc.spec;
        for (what, v) in [
            ("metadata.name", &doc.metadata.name),
            ("spec.namespace", &s.namespace),
            ("spec.service", &s.service),
        ] {
            ringfence_core::Name::parse(v).map_err(|e| invalid(format!("{what}: {e}")))?;
        }
        if s.continuous_verification.interval > day()
            || s.continuous_verification.interval < Duration::from_secs(1)
        {
            return Err(invalid(
                "spec.continuousVerification.interval must be between 1s and 24h",
            ));
        }
        if s.allow_all.is_some() && s.opt_out.is_some() {
            return Err(invalid("allowAll and optOut exclude each other"));
        }
        for i in 0..s.builders.len() {
            if s.builders
                .iter()
                .skip(i + 1)
                .any(|b| s.builders.get(i).is_some_and(|a| a.id == b.id))
            {
                return Err(invalid(
                    "a builder id is listed twice: list its keys once, under one threshold",
                ));
            }
        }
        if let Some(e) = s.allow_all.as_ref().or(s.opt_out.as_ref())
            && (e.justification.trim().is_empty() || e.approved_by.trim().is_empty())
        {
            return Err(invalid(
                "allowAll and optOut need a justification and who approved it",
            ));
        }
        let restrictive = !s.images.repositories.is_empty()
            || !s.images.digests.is_empty()
            || !s.builders.is_empty()
            || s.review.is_some()
            || !s.attestations.is_empty();
        if s.allow_all.is_some() && restrictive {
            return Err(invalid(
                "allowAll cannot be combined with image or attestation requirements",
            ));
        }
        if s.allow_all.is_none() && !restrictive {
            return Err(invalid(
                "the policy requires nothing: name images or attestations, or say allowAll with a justification",
            ));
        }
        if (!s.source.repositories.is_empty() || !s.source.refs.is_empty()) && s.builders.is_empty()
        {
            return Err(invalid(
                "source rules need builders: the source is read from their provenance",
            ));
        }
        for g in s
            .images
            .repositories
            .iter()
            .chain(&s.source.repositories)
            .chain(&s.source.refs)
        {
            if g.is_empty() {
                return Err(invalid("an empty glob matches nothing"));
            }
        }
        let digests = s
            .images
            .digests
            .iter()
            .map(|d| {
                if !d.starts_with("sha256:") {
                    return Err(invalid(format!(
                        "images.digests: {d:?} is not sha256:<hex>"
                    )));
                }
                Sha256::parse(d).map_err(|e| invalid(format!("images.digests: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let builders = s
            .builders
            .iter()
            .map(|b| {
                if b.id.is_empty() {
                    return Err(invalid("builders: an id is empty"));
                }
                Ok(Builder {
                    id: b.id.clone(),
                    keys: key_group(&format!("builder {}", b.id), &b.keys, b.threshold)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let review_keys = s
            .review
            .as_ref()
            .map(|r| {
                if r.min_reviewers == 0 {
                    return Err(invalid("review.minReviewers must be at least 1"));
                }
                key_group("review", &r.keys, r.threshold)
            })
            .transpose()?;
        let attestation_keys = s
            .attestations
            .iter()
            .map(|a| {
                key_group(
                    &format!("attestation {}", a.predicate_type),
                    &a.keys,
                    a.threshold,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let canonical = serde_json::to_vec(&doc).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            digest: Sha256::of(&canonical),
            doc,
            builders,
            review_keys,
            attestation_keys,
            digests,
        })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.doc.metadata.name
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.doc.spec
    }

    /// True when it governs this service in this environment.
    pub fn applies_to(&self, namespace: &str, service: &str, environment: &str) -> bool {
        let s = self.spec();
        s.namespace == namespace
            && s.service == service
            && (s.environments.is_empty() || s.environments.iter().any(|e| e == environment))
    }
}

/// Glob match: `*` matches one or more characters within one `/`-separated segment, `**`
/// matches across segments, everything else literally.
///
/// SECURITY: a text that could name something other than what it spells is never matched:
/// `.` or `..` or empty path segments (after an optional `scheme://`), percent-escapes, `?`,
/// `#`, `@`, backslashes, whitespace and control characters. So
/// `https://git.acme.test/payments/**` does not match `https://git.acme.test/payments/../evil`,
/// and `https://*.acme.test/**` does not match `https://evil.test#.acme.test/x`.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => {
                if let Some(rest2) = rest.strip_prefix(b"*") {
                    (0..=t.len()).any(|i| t.get(i..).is_some_and(|tail| go(rest2, tail)))
                } else {
                    let seg = t.iter().position(|c| *c == b'/').unwrap_or(t.len());
                    (1..=seg).any(|i| t.get(i..).is_some_and(|tail| go(rest, tail)))
                }
            }
            Some((c, rest)) => match t.split_first() {
                Some((d, trest)) if c == d => go(rest, trest),
                _ => false,
            },
        }
    }
    !ambiguous(text) && go(pattern.as_bytes(), text.as_bytes())
}

fn ambiguous(text: &str) -> bool {
    if text.is_empty()
        || text.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '%' | '?' | '#' | '@' | '\\')
        })
    {
        return true;
    }
    let path = match text.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            rest
        }
        _ => text,
    };
    path.split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

/// A set of policies; at most one applies to a (namespace, service, environment).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// Builds a set; two policies that could apply to the same service and environment are
    /// refused, so which policy governs a job is never ambiguous.
    pub fn new(policies: Vec<Policy>) -> Result<Self, PolicyError> {
        for (i, a) in policies.iter().enumerate() {
            for b in policies.iter().skip(i + 1) {
                let (sa, sb) = (a.spec(), b.spec());
                if a.name() == b.name() {
                    return Err(invalid(format!("two policies are named {:?}", a.name())));
                }
                let overlap = sa.namespace == sb.namespace
                    && sa.service == sb.service
                    && (sa.environments.is_empty()
                        || sb.environments.is_empty()
                        || sa.environments.iter().any(|e| sb.environments.contains(e)));
                if overlap {
                    return Err(invalid(format!(
                        "policies {:?} and {:?} both govern {}/{} in the same environment",
                        a.name(),
                        b.name(),
                        sa.namespace,
                        sa.service
                    )));
                }
            }
        }
        Ok(Self { policies })
    }

    /// The policy governing this service in this environment.
    pub fn find(&self, namespace: &str, service: &str, environment: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.applies_to(namespace, service, environment))
    }

    /// All policies.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }
}
