//! SPIFFE IDs and trust domains, parsed strictly per the SPIFFE ID specification
//! (`spiffe://<trust-domain>/<path>`): no percent-encoding, no port, userinfo, query or fragment,
//! no empty, `.` or `..` segments, no trailing slash.
//!
//! SECURITY: these values end up compared byte for byte in authorization decisions. Any
//! leniency here (case folding, decoding `%2F`, accepting `..`) would let two spellings name the
//! same workload, or one spelling name two, so the parser refuses rather than normalizes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The scheme prefix every SPIFFE ID starts with, lowercase.
const SCHEME_PREFIX: &str = "spiffe://";
/// Maximum length of a trust domain name in bytes (the spec's DNS-derived limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID in bytes (the spec's URI limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string is empty.
    #[error("spiffe id is empty")]
    Empty,
    /// The string does not start with `spiffe://`.
    #[error("scheme is missing or invalid: a spiffe id starts with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain (uppercase, `:`, `@`, `%`, ...).
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found {found:?} at byte {at})"
    )]
    BadTrustDomainChar {
        /// The offending character.
        found: char,
        /// Byte offset within the trust domain.
        at: usize,
    },
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong {
        /// Actual length.
        len: usize,
    },
    /// The whole id is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("spiffe id is {len} bytes long; at most {MAX_SPIFFE_ID_LEN} are allowed")]
    TooLong {
        /// Actual length.
        len: usize,
    },
    /// `//` inside the path.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends in `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A character outside `[A-Za-z0-9._-]` in a path segment (`%`, `?`, `#`, NUL, ...).
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores (found {found:?})"
    )]
    BadPathChar {
        /// The offending character.
        found: char,
    },
    /// A path was given where only a trust domain is expected.
    #[error("a trust domain name cannot contain a path")]
    UnexpectedPath,
}

/// A SPIFFE trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a SPIFFE ID with no path
    /// (`spiffe://example.org`).
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        let name = match input.strip_prefix(SCHEME_PREFIX) {
            Some(rest) => {
                if rest.contains('/') {
                    return Err(SpiffeIdError::UnexpectedPath);
                }
                rest
            }
            None if input.contains("://") => return Err(SpiffeIdError::WrongScheme),
            None => input,
        };
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID naming the trust domain itself (`spiffe://example.org`).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME_PREFIX}{}", self.0),
            td_len: self.0.len(),
        }
    }

    /// A workload id in this trust domain built from already-validated segments.
    pub fn workload(&self, segments: &[&str]) -> Result<SpiffeId, SpiffeIdError> {
        let mut uri = format!("{SCHEME_PREFIX}{}", self.0);
        for segment in segments {
            uri.push('/');
            uri.push_str(segment);
        }
        SpiffeId::parse(&uri)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust-domain>[/<segment>...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    // INVARIANT: `uri` passed `SpiffeId::parse`, and `td_len` is the byte length of its trust
    // domain, so the slicing in the accessors is always in bounds and on char boundaries.
    uri: String,
    td_len: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID strictly; see the module docs for the rules.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            uri: input.to_owned(),
            td_len: td.len(),
        })
    }

    /// The trust domain this id belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain name as a string slice.
    pub fn trust_domain_str(&self) -> &str {
        let start = SCHEME_PREFIX.len();
        self.uri.get(start..start + self.td_len).unwrap_or_default()
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        self.uri
            .get(SCHEME_PREFIX.len() + self.td_len..)
            .unwrap_or_default()
    }

    /// The path's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// True when this id is a member of `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    for (at, c) in td.char_indices() {
        if !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_') {
            return Err(SpiffeIdError::BadTrustDomainChar { found: c, at });
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        // "spiffe://td/" is a trailing slash, not an empty segment.
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(found) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar { found });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
