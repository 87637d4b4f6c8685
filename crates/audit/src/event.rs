//! Audit events and their canonical encoding: the exact bytes that become a Merkle leaf.
//!
//! The encoding is compact JSON with a fixed field order and sorted detail keys, so one event
//! has exactly one encoding. Decoding re-encodes and compares: bytes that are valid JSON but
//! not canonical are refused, so nobody can store a "same meaning, different bytes" entry.

use std::collections::BTreeMap;
use std::fmt;

use ringfence_core::{SpiffeId, UnixTime};
use serde::{Deserialize, Serialize};

/// Largest encoded event, in bytes.
pub const MAX_EVENT_LEN: usize = 64 * 1024;

/// What the recorded decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed or done.
    Allow,
    /// Refused.
    Deny,
    /// Allowed only because enforcement was off (dry-run) and would have been refused.
    WouldDeny,
    /// Allowed by break-glass, bypassing a refusal.
    BreakGlass,
    /// Something failed.
    Error,
    /// A fact with no decision (a state change, an observation).
    Info,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
            Self::BreakGlass => "break_glass",
            Self::Error => "error",
            Self::Info => "info",
        })
    }
}

impl std::str::FromStr for Decision {
    type Err = EventError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            EventError::Invalid(format!(
                "unknown decision {s:?}: use allow, deny, would_deny, break_glass, error or info"
            ))
        })
    }
}

/// Why an event is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A field is invalid.
    #[error("invalid audit event: {0}")]
    Invalid(String),
    /// Stored bytes are not a canonical event.
    #[error("not a canonical audit event: {0}")]
    NotCanonical(String),
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique id (32 lowercase hex digits), used to drop duplicates when spooled events are
    /// forwarded again.
    pub id: String,
    /// When it happened, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who did it.
    pub actor: SpiffeId,
    /// What was done, dotted (`identity.issue`, `admission.verdict`, ...).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// The decision.
    pub decision: Decision,
    /// Why, in words.
    pub reason: String,
    /// Anything else, as sorted string pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

impl Event {
    /// A new event with a fresh random id.
    pub fn new(
        time: UnixTime,
        actor: SpiffeId,
        action: impl Into<String>,
        target: impl Into<String>,
        decision: Decision,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            id: new_event_id(),
            time_ms: time.as_millis(),
            actor,
            action: action.into(),
            target: target.into(),
            decision,
            reason: reason.into(),
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// Checks the fields and returns the canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EventError> {
        self.validate()?;
        let bytes = serde_json::to_vec(self).map_err(|e| EventError::Invalid(e.to_string()))?;
        if bytes.len() > MAX_EVENT_LEN {
            return Err(EventError::Invalid(format!(
                "event is {} bytes encoded; at most {MAX_EVENT_LEN} are allowed",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Parses canonical bytes; anything else is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        if bytes.len() > MAX_EVENT_LEN {
            return Err(EventError::NotCanonical("too large".into()));
        }
        let event: Self =
            serde_json::from_slice(bytes).map_err(|e| EventError::NotCanonical(e.to_string()))?;
        let again = event
            .encode()
            .map_err(|e| EventError::NotCanonical(e.to_string()))?;
        if again != bytes {
            return Err(EventError::NotCanonical(
                "the bytes are not the canonical encoding".into(),
            ));
        }
        Ok(event)
    }

    fn validate(&self) -> Result<(), EventError> {
        if self.id.len() != 32
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(EventError::Invalid(
                "id must be 32 lowercase hex digits".into(),
            ));
        }
        if self.action.is_empty()
            || !self.action.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
        {
            return Err(EventError::Invalid(format!(
                "action {:?} must be non-empty lowercase words joined by '.', '_' or '-'",
                self.action
            )));
        }
        for (name, value) in [("target", &self.target), ("reason", &self.reason)] {
            if value.chars().any(char::is_control) {
                return Err(EventError::Invalid(format!(
                    "{name} contains control characters"
                )));
            }
        }
        if self.details.iter().any(|(k, v)| {
            k.is_empty()
                || k.chars().any(char::is_control)
                || v.chars().any(|c| c.is_control() && c != '\n')
        }) {
            return Err(EventError::Invalid(
                "detail keys must be non-empty and free of control characters".into(),
            ));
        }
        Ok(())
    }
}

/// A fresh random event id.
pub fn new_event_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG failing leaves zeros; ids then collide and duplicates are dropped, which
    // is loud in tests and never silent data corruption.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event::new(
            UnixTime::from_millis(1_700_000_000_123),
            SpiffeId::parse("spiffe://example.org/ringfence/controlplane").unwrap(),
            "identity.issue",
            "spiffe://example.org/ns/prod/svc/web",
            Decision::Allow,
            "admitted and placed",
        )
        .with_detail("serial", "0a1b")
        .with_detail("agent", "node-1")
    }

    #[test]
    fn canonical_encoding_round_trips_with_fixed_order() {
        let e = event();
        let bytes = e.encode().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&format!(
            "{{\"id\":\"{}\",\"time_ms\":1700000000123,\"actor\":",
            e.id
        )));
        assert!(text.ends_with("\"details\":{\"agent\":\"node-1\",\"serial\":\"0a1b\"}}"));
        assert_eq!(Event::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn non_canonical_or_invalid_bytes_are_refused() {
        let bytes = event().encode().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let spaced = text.replacen(",", ", ", 1);
        assert!(matches!(
            Event::decode(spaced.as_bytes()),
            Err(EventError::NotCanonical(_))
        ));
        let extra = text.replacen("{", "{\"x\":1,", 1);
        assert!(Event::decode(extra.as_bytes()).is_err());
        let bad_actor = text.replace(
            "spiffe://example.org/ringfence/controlplane",
            "spiffe://Example.org/x",
        );
        assert!(Event::decode(bad_actor.as_bytes()).is_err());
        assert!(Event::decode(b"not json").is_err());
        let mut e = event();
        e.action = "Identity Issue".into();
        assert!(
            e.encode()
                .unwrap_err()
                .to_string()
                .contains("lowercase words")
        );
        let mut e = event();
        e.reason = "line\u{1b}[31m".into();
        assert!(e.encode().is_err());
        let mut e = event();
        e.reason = "x".repeat(MAX_EVENT_LEN);
        assert!(e.encode().unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn decisions_parse_from_words() {
        assert_eq!(
            "would_deny".parse::<Decision>().unwrap(),
            Decision::WouldDeny
        );
        assert!(
            "maybe"
                .parse::<Decision>()
                .unwrap_err()
                .to_string()
                .contains("use allow")
        );
    }
}
