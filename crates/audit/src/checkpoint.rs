//! C2SP `tlog-checkpoint` bodies, signed as notes, and C2SP `tlog-cosignature/v1`
//! witness cosignatures.
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <base64 root hash>\n
//! [extension lines]
//! ```
//!
//! A cosignature signs `cosignature/v1\ntime <unix seconds>\n` followed by the checkpoint
//! body; its signature payload is the 8-byte big-endian timestamp and the 64-byte signature.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::note::{Note, NoteError, Signer, TYPE_COSIGNATURE, Verifier};
use crate::rfc9162::Hash;

/// Why a checkpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note around it is bad or not signed by the log.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The body does not parse.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The origin line names another log.
    #[error("checkpoint is for log {found:?}, not {expected:?}")]
    WrongOrigin {
        /// The origin expected.
        expected: String,
        /// The origin found.
        found: String,
    },
    /// A cosignature does not verify.
    #[error("cosignature from {name} does not verify")]
    BadCosignature {
        /// Witness key name.
        name: String,
    },
}

/// A checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin (its unique name).
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// Root hash of the tree of `size` entries.
    pub root: Hash,
    /// Extension lines, verbatim.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for ext in &self.extensions {
            s.push_str(ext);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint body (the text of a note).
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_owned());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("the body must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("empty origin line"))?;
        let size_line = lines.next().ok_or_else(|| bad("missing tree size line"))?;
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(bad(
                "the tree size must be a decimal number without leading zeros",
            ));
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| bad("the tree size is out of range"))?;
        let root_line = lines.next().ok_or_else(|| bad("missing root hash line"))?;
        let root_raw = B64
            .decode(root_line)
            .map_err(|_| bad("the root hash is not base64"))?;
        let root: Hash = root_raw
            .try_into()
            .map_err(|_| bad("the root hash is not 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint with the log's key: a complete signed note.
    pub fn sign(&self, log_key: &Signer) -> Result<String, CheckpointError> {
        Ok(log_key.sign_note(&self.body())?)
    }

    /// Parses a signed checkpoint and checks the log's signature and origin.
    pub fn open(
        signed: &[u8],
        log: &Verifier,
        origin: &str,
    ) -> Result<(Self, Note), CheckpointError> {
        let note = Note::parse(signed)?;
        note.verify(log)?;
        let checkpoint = Self::parse_body(&note.text)?;
        if checkpoint.origin != origin {
            return Err(CheckpointError::WrongOrigin {
                expected: origin.to_owned(),
                found: checkpoint.origin,
            });
        }
        Ok((checkpoint, note))
    }
}

fn cosigned_message(body: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{body}")
}

/// A witness's cosignature line over `checkpoint` at `timestamp` (Unix seconds).
pub fn cosign(witness: &Signer, checkpoint: &Checkpoint, timestamp: u64) -> String {
    let sig = witness.sign_bytes(cosigned_message(&checkpoint.body(), timestamp).as_bytes());
    let mut payload = timestamp.to_be_bytes().to_vec();
    payload.extend_from_slice(&sig);
    witness.signature_line(&payload)
}

/// Checks a cosignature by `witness` on a parsed signed checkpoint; returns its timestamp.
pub fn verify_cosignature(note: &Note, witness: &Verifier) -> Result<u64, CheckpointError> {
    if witness.key_type() != TYPE_COSIGNATURE {
        return Err(
            NoteError::BadKey("a witness key has type 0x04 (cosignature/v1)".into()).into(),
        );
    }
    let sig = note
        .signatures
        .iter()
        .find(|s| s.name == witness.name() && s.key_id == witness.id())
        .ok_or_else(|| CheckpointError::BadCosignature {
            name: witness.name().to_owned(),
        })?;
    let (ts, signature) =
        sig.payload
            .split_at_checked(8)
            .ok_or_else(|| CheckpointError::BadCosignature {
                name: witness.name().to_owned(),
            })?;
    let mut ts_bytes = [0u8; 8];
    ts_bytes.copy_from_slice(ts);
    let timestamp = u64::from_be_bytes(ts_bytes);
    if witness.verify_bytes(
        cosigned_message(&note.text, timestamp).as_bytes(),
        signature,
    ) {
        Ok(timestamp)
    } else {
        Err(CheckpointError::BadCosignature {
            name: witness.name().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::TYPE_ED25519;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "ringfence.test/audit".into(),
            size: 7,
            root: [9; 32],
            extensions: vec![],
        }
    }

    #[test]
    fn signed_checkpoints_round_trip_and_bind_origin() {
        let key = Signer::generate("ringfence.test/audit", TYPE_ED25519).unwrap();
        let signed = checkpoint().sign(&key).unwrap();
        assert!(signed.starts_with("ringfence.test/audit\n7\nCQkJ"));
        let (cp, _) =
            Checkpoint::open(signed.as_bytes(), &key.verifier(), "ringfence.test/audit").unwrap();
        assert_eq!(cp, checkpoint());
        assert!(matches!(
            Checkpoint::open(signed.as_bytes(), &key.verifier(), "other"),
            Err(CheckpointError::WrongOrigin { .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_refused_with_reasons() {
        let root = B64.encode([1u8; 32]);
        for (body, why) in [
            ("o\n7\n".to_owned(), "missing root"),
            (format!("\n7\n{root}\n"), "empty origin"),
            (format!("o\n07\n{root}\n"), "leading zeros"),
            (format!("o\n-1\n{root}\n"), "decimal"),
            (format!("o\n99999999999999999999\n{root}\n"), "out of range"),
            ("o\n7\nnot-base64\n".to_owned(), "not base64"),
            (format!("o\n7\n{}\n", B64.encode([1u8; 31])), "32 bytes"),
            (format!("o\n7\n{root}"), "newline"),
            (format!("o\n7\n{root}\n\n"), "empty extension"),
        ] {
            let err = Checkpoint::parse_body(&body).unwrap_err().to_string();
            assert!(err.contains(why), "{body:?}: {err}");
        }
        let ok = Checkpoint::parse_body(&format!("o\n0\n{root}\next one\n")).unwrap();
        assert_eq!(ok.extensions, ["ext one"]);
    }

    #[test]
    fn cosignatures_verify_and_bind_the_checkpoint() {
        let log = Signer::generate("log", TYPE_ED25519).unwrap();
        let witness = Signer::generate("witness.example", TYPE_COSIGNATURE).unwrap();
        let cp = checkpoint();
        let mut signed = cp.sign(&log).unwrap();
        signed.push_str(&cosign(&witness, &cp, 1_700_000_000));
        let note = Note::parse(signed.as_bytes()).unwrap();
        assert_eq!(
            verify_cosignature(&note, &witness.verifier()).unwrap(),
            1_700_000_000
        );
        // The log signature still verifies with the cosignature appended.
        note.verify(&log.verifier()).unwrap();
        // Moved onto another checkpoint, it fails.
        let mut other = cp.clone();
        other.size = 8;
        let mut forged = other.sign(&log).unwrap();
        forged.push_str(&cosign(&witness, &cp, 1_700_000_000));
        let note = Note::parse(forged.as_bytes()).unwrap();
        assert!(verify_cosignature(&note, &witness.verifier()).is_err());
    }
}
