//! Small validated names shared across crates: namespaces, services, machines.
//!
//! A [`Name`] is what may appear as one SPIFFE path segment and as one Store key segment, so a
//! name that parses here can never smuggle a `/`, `..` or control character into either.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Maximum length of a [`Name`] in bytes (a DNS label's limit, so names fit in hostnames too).
pub const MAX_NAME_LEN: usize = 63;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("name {name:?} is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong {
        /// The name as given.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A character outside `[a-z0-9-]`, or a dash at either end.
    #[error(
        "name {name:?} is invalid: use lowercase letters, digits and dashes, starting and ending with a letter or digit"
    )]
    BadChar {
        /// The name as given.
        name: String,
    },
}

/// A lowercase DNS-label-style name (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`) for namespaces, services
/// and similar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Parses a name.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > MAX_NAME_LEN {
            return Err(IdError::TooLong {
                name: input.to_owned(),
                len: input.len(),
            });
        }
        let body_ok = input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !body_ok || input.starts_with('-') || input.ends_with('-') {
            return Err(IdError::BadChar {
                name: input.to_owned(),
            });
        }
        Ok(Self(input.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The id of a machine (a host running an agent); a [`Name`] under another type so a machine
/// id cannot be passed where a service name is expected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MachineId(Name);

impl MachineId {
    /// Parses a machine id.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        Name::parse(input).map(Self)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in [
            "a",
            "web",
            "pay-ments",
            "a1",
            "0",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "a-", "A", "a_b", "a.b", "a/b", "..", "a\0", "é"] {
            assert!(
                matches!(Name::parse(bad), Err(IdError::BadChar { .. })),
                "{bad}"
            );
        }
        assert_eq!(Name::parse(""), Err(IdError::Empty));
        assert!(matches!(
            Name::parse(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(IdError::TooLong { len: 64, .. })
        ));
        let err = Name::parse("Web").unwrap_err().to_string();
        assert!(
            err.contains("lowercase letters, digits and dashes"),
            "{err}"
        );
    }

    #[test]
    fn machine_ids_deserialize_through_the_parser() {
        let id: MachineId = serde_json::from_str("\"node-1\"").unwrap();
        assert_eq!(id.as_str(), "node-1");
        assert!(serde_json::from_str::<MachineId>("\"../etc\"").is_err());
    }
}
