//! The byte layout of records and history entries in the redb file.
//!
//! Record: `create_revision u64 | mod_revision u64 | version u64 | value`, little-endian.
//! History entry (all events of one revision): repeated
//! `kind u8 | key_len u32 | key | (put only) create u64 | version u64 | value_len u32 | value`.
//! Decoding never trusts a length: every read is bounds-checked, and a short or malformed
//! buffer is a [`CodecError`] (reported as a corrupt store), never a panic.

use crate::key::Key;
use crate::model::{EventKind, Revision, Versioned, WatchEvent};

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const RECORD_HEADER: usize = 24;

/// A stored byte string that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {why}")]
pub(crate) struct CodecError {
    what: &'static str,
    why: &'static str,
}

/// A decoded key record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: u64,
    pub value: Vec<u8>,
}

impl Record {
    pub(crate) fn into_versioned(self, key: Key) -> Versioned {
        Versioned {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

pub(crate) fn encode_record(
    create: Revision,
    modified: Revision,
    version: u64,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    let mut r = Reader::new(bytes, "record");
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    let version = r.u64()?;
    Ok(Record {
        create_revision,
        mod_revision,
        version,
        value: r.rest().to_vec(),
    })
}

pub(crate) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        let key = ev.key.as_bytes();
        match &ev.kind {
            EventKind::Put {
                value,
                create_revision,
                version,
            } => {
                out.push(KIND_PUT);
                put_len(&mut out, key.len());
                out.extend_from_slice(key);
                out.extend_from_slice(&create_revision.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                put_len(&mut out, value.len());
                out.extend_from_slice(value);
            }
            EventKind::Delete => {
                out.push(KIND_DELETE);
                put_len(&mut out, key.len());
                out.extend_from_slice(key);
            }
        }
    }
    out
}

pub(crate) fn decode_events(
    revision: Revision,
    bytes: &[u8],
) -> Result<Vec<WatchEvent>, CodecError> {
    let mut r = Reader::new(bytes, "history entry");
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let key_len = r.len()?;
        let key = std::str::from_utf8(r.take(key_len)?)
            .ok()
            .and_then(|k| Key::new(k).ok())
            .ok_or(r.error("invalid key"))?;
        let kind = match kind {
            KIND_PUT => {
                let create_revision = r.u64()?;
                let version = r.u64()?;
                let value_len = r.len()?;
                EventKind::Put {
                    value: r.take(value_len)?.to_vec(),
                    create_revision,
                    version,
                }
            }
            KIND_DELETE => EventKind::Delete,
            _ => return Err(r.error("unknown event kind")),
        };
        out.push(WatchEvent {
            revision,
            key,
            kind,
        });
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths are bounded by the store limits (1 KiB keys, 1 MiB values), far below u32::MAX.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    fn error(&self, why: &'static str) -> CodecError {
        CodecError {
            what: self.what,
            why,
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.bytes.len() {
            return Err(self.error("too short"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = self.take(1)?;
        b.first().copied().ok_or(self.error("too short"))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| self.error("too short"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn len(&mut self) -> Result<usize, CodecError> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| self.error("too short"))?;
        usize::try_from(u32::from_le_bytes(b)).map_err(|_| self.error("length overflow"))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let bytes = encode_record(3, 9, 4, b"hello");
        assert_eq!(
            decode_record(&bytes).unwrap(),
            Record {
                create_revision: 3,
                mod_revision: 9,
                version: 4,
                value: b"hello".to_vec()
            }
        );
        assert!(decode_record(&bytes[..20]).is_err());
    }

    #[test]
    fn events_round_trip_and_truncation_is_an_error_at_every_length() {
        let events = vec![
            WatchEvent {
                revision: 7,
                key: Key::new("/a/b").unwrap(),
                kind: EventKind::Put {
                    value: b"v".to_vec(),
                    create_revision: 2,
                    version: 3,
                },
            },
            WatchEvent {
                revision: 7,
                key: Key::new("/c").unwrap(),
                kind: EventKind::Delete,
            },
        ];
        let bytes = encode_events(&events);
        assert_eq!(decode_events(7, &bytes).unwrap(), events);
        let boundary = bytes.len() - (1 + 4 + 2);
        for cut in 1..bytes.len() {
            if cut == boundary {
                continue; // a whole first event is a valid (shorter) entry
            }
            assert!(decode_events(7, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode_events(7, &bad).is_err());
    }
}
