//! Store keys and prefixes: `/`-separated paths of a restricted alphabet.
//!
//! SECURITY: keys are built from names that arrive over the API (namespaces, services, machine
//! ids). A restricted alphabet with no empty, `.` or `..` segments means a caller-supplied name
//! can never address a key outside the subtree the caller meant, and a key prefix scan of
//! `/jobs/a/` can never match `/jobs/a-b`.

use std::fmt;

use crate::error::StoreError;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// A validated key: starts with `/`, segments of `[A-Za-z0-9._:@=+,~-]`, no empty, `.` or `..`
/// segment, no trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Parses a key.
    pub fn new(key: impl Into<String>) -> Result<Self, StoreError> {
        let key = key.into();
        if let Err(reason) = check(&key, false) {
            return Err(StoreError::InvalidKey { key, reason });
        }
        Ok(Self(key))
    }

    /// A key made of segments joined under `/`; a segment containing `/` is refused, so one
    /// name can never stand for two levels.
    pub fn from_segments<I, S>(segments: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::new();
        for segment in segments {
            if segment.as_ref().contains('/') {
                key.push('/');
                key.push_str(segment.as_ref());
                return Err(StoreError::InvalidKey {
                    key,
                    reason: "a key segment cannot contain '/'",
                });
            }
            key.push('/');
            key.push_str(segment.as_ref());
        }
        Self::new(key)
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// This key followed by one more segment.
    pub fn child(&self, segment: &str) -> Result<Self, StoreError> {
        Self::new(format!("{}/{segment}", self.0))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated key prefix for ranges and watches: like a key, but may end with `/` (and `/`
/// alone means every key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// Parses a prefix.
    pub fn new(prefix: impl Into<String>) -> Result<Self, StoreError> {
        let prefix = prefix.into();
        if let Err(reason) = check(&prefix, true) {
            return Err(StoreError::InvalidKey {
                key: prefix,
                reason,
            });
        }
        Ok(Self(prefix))
    }

    /// Every key in the store.
    pub fn all() -> Self {
        Self("/".to_owned())
    }

    /// The prefix as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `key` is under this prefix.
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }

    /// The first key after every key with this prefix, as etcd's `range_end`.
    pub(crate) fn range_end(&self) -> Vec<u8> {
        let mut end = self.0.as_bytes().to_vec();
        // Every byte of a valid prefix is printable ASCII (< 0x7f), so incrementing the last
        // byte never overflows.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        end
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&Key> for Prefix {
    fn from(key: &Key) -> Self {
        Self(key.0.clone())
    }
}

fn check(s: &str, is_prefix: bool) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("a key cannot be empty");
    }
    if s.len() > MAX_KEY_LEN {
        return Err("a key is at most 1024 bytes");
    }
    let Some(body) = s.strip_prefix('/') else {
        return Err("a key starts with '/'");
    };
    if body.is_empty() {
        return if is_prefix {
            Ok(())
        } else {
            Err("a key needs at least one segment after '/'")
        };
    }
    let body = match body.strip_suffix('/') {
        Some(inner) if is_prefix => inner,
        Some(_) => return Err("a key cannot end with '/'"),
        None => body,
    };
    for segment in body.split('/') {
        match segment {
            "" => return Err("a key cannot contain an empty segment ('//')"),
            "." | ".." => return Err("a key cannot contain '.' or '..' segments"),
            _ => {}
        }
        if !segment.bytes().all(is_key_byte) {
            return Err("key segments use only letters, digits and . _ : @ = + , ~ -");
        }
    }
    Ok(())
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'.' | b'_' | b':' | b'@' | b'=' | b'+' | b',' | b'~' | b'-'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_paths_of_safe_segments() {
        for ok in ["/a", "/jobs/ns-1/web", "/x/A.b_c:d@e=f+g,h~i-j", "/a/..b"] {
            assert!(Key::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_keys_are_typed_errors_with_reasons() {
        let cases = [
            ("", "empty"),
            ("a", "starts with '/'"),
            ("/", "at least one segment"),
            ("/a/", "cannot end with '/'"),
            ("/a//b", "empty segment"),
            ("/a/../b", "'..'"),
            ("/a/./b", "'..'"),
            ("/a b", "only letters"),
            ("/a\0b", "only letters"),
            ("/caf\u{e9}", "only letters"),
            ("/a%2Fb", "only letters"),
        ];
        for (key, want) in cases {
            match Key::new(key) {
                Err(StoreError::InvalidKey { key: k, reason }) => {
                    assert_eq!(k, key);
                    assert!(reason.contains(want), "{key:?}: {reason}");
                }
                other => panic!("{key:?}: expected InvalidKey, got {other:?}"),
            }
        }
        let long = format!("/{}", "a".repeat(MAX_KEY_LEN));
        assert!(matches!(Key::new(long), Err(StoreError::InvalidKey { .. })));
    }

    #[test]
    fn prefixes_may_end_with_slash_and_match_by_bytes() {
        let p = Prefix::new("/jobs/a/").unwrap();
        assert!(p.matches("/jobs/a/x"));
        assert!(!p.matches("/jobs/a-b/x"));
        assert_eq!(p.range_end(), b"/jobs/a0".to_vec());
        assert!(Prefix::new("/").is_ok());
        assert!(Prefix::new("/a//").is_err());
        assert!(Prefix::new("jobs").is_err());
        assert_eq!(Prefix::all().range_end(), b"0".to_vec());
    }

    #[test]
    fn from_segments_and_child_validate_every_segment() {
        let k = Key::from_segments(["jobs", "ns", "web"]).unwrap();
        assert_eq!(k.as_str(), "/jobs/ns/web");
        assert!(k.child("..").is_err());
        assert!(matches!(
            Key::from_segments(["jobs", "a/b"]),
            Err(StoreError::InvalidKey { reason, .. }) if reason.contains("cannot contain '/'")
        ));
        assert!(Key::from_segments(["jobs", ""]).is_err());
    }
}
