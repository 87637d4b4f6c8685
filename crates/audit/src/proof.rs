//! Proofs as JSON documents (what `ringfence audit prove` prints and `audit check-proof`
//! reads), and their offline verification against signed checkpoints.
//!
//! ```json
//! {"type":"inclusion","origin":"...","index":3,"size":8,"leaf_hash":"<hex>","proof":["<hex>",...],"root":"<hex>"}
//! {"type":"consistency","origin":"...","from":4,"to":8,"proof":["<hex>",...],"from_root":"<hex>","to_root":"<hex>"}
//! ```
//!
//! The roots inside a document are informative only: verification takes roots from
//! checkpoints signed by the log, never from the document.

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::note::Verifier;
use crate::rfc9162::{self, Hash};

/// Largest proof document accepted.
pub const MAX_PROOF_DOC: usize = 16 * 1024;
/// Most hashes in a proof (a tree of 2^63 entries needs fewer).
pub const MAX_PROOF_HASHES: usize = 64;

/// Why a proof document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofDocError {
    /// The document does not parse.
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// A checkpoint does not match the proof's sizes or origin, or is not signed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The proof does not verify.
    #[error("proof does not verify: {0}")]
    Invalid(String),
}

/// A proof document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProofDoc {
    /// Entry `index` is in the tree of `size` entries.
    Inclusion {
        /// The log.
        origin: String,
        /// The entry.
        index: u64,
        /// The tree size.
        size: u64,
        /// The entry's leaf hash, hex.
        leaf_hash: String,
        /// Proof hashes, hex.
        proof: Vec<String>,
        /// The tree's root, hex (informative).
        root: String,
    },
    /// The tree of `to` entries extends the tree of `from` entries.
    Consistency {
        /// The log.
        origin: String,
        /// Older size.
        from: u64,
        /// Newer size.
        to: u64,
        /// Proof hashes, hex.
        proof: Vec<String>,
        /// Older root, hex (informative).
        from_root: String,
        /// Newer root, hex (informative).
        to_root: String,
    },
}

impl ProofDoc {
    /// Parses a proof document with size limits.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProofDocError> {
        if bytes.len() > MAX_PROOF_DOC {
            return Err(ProofDocError::Malformed(format!(
                "{} bytes; at most {MAX_PROOF_DOC} are accepted",
                bytes.len()
            )));
        }
        let doc: Self =
            serde_json::from_slice(bytes).map_err(|e| ProofDocError::Malformed(e.to_string()))?;
        let proof = match &doc {
            Self::Inclusion {
                proof,
                leaf_hash,
                root,
                ..
            } => {
                parse_hash(leaf_hash, "leaf_hash")?;
                parse_hash(root, "root")?;
                proof
            }
            Self::Consistency {
                proof,
                from_root,
                to_root,
                from,
                to,
                ..
            } => {
                parse_hash(from_root, "from_root")?;
                parse_hash(to_root, "to_root")?;
                if from > to {
                    return Err(ProofDocError::Malformed(format!(
                        "from ({from}) is larger than to ({to})"
                    )));
                }
                proof
            }
        };
        if proof.len() > MAX_PROOF_HASHES {
            return Err(ProofDocError::Malformed(format!(
                "{} proof hashes; at most {MAX_PROOF_HASHES}",
                proof.len()
            )));
        }
        for (i, h) in proof.iter().enumerate() {
            parse_hash(h, &format!("proof[{i}]"))?;
        }
        Ok(doc)
    }

    /// Verifies the proof offline. For an inclusion proof, `checkpoint` is a signed checkpoint
    /// of exactly `size` entries; for a consistency proof, `checkpoint` is the one of `to`
    /// entries and `old_checkpoint` the one of `from` entries. With `entry`, the leaf hash is
    /// recomputed from the entry's bytes instead of taken from the document.
    pub fn verify(
        &self,
        log: &Verifier,
        checkpoint: &[u8],
        old_checkpoint: Option<&[u8]>,
        entry: Option<&[u8]>,
    ) -> Result<String, ProofDocError> {
        match self {
            Self::Inclusion {
                origin,
                index,
                size,
                leaf_hash,
                proof,
                ..
            } => {
                let cp = open(checkpoint, log, origin)?;
                if cp.size != *size {
                    return Err(ProofDocError::Checkpoint(format!(
                        "the checkpoint covers {} entries but the proof is for a tree of {size}",
                        cp.size
                    )));
                }
                let leaf = match entry {
                    Some(bytes) => rfc9162::leaf_hash(bytes),
                    None => parse_hash(leaf_hash, "leaf_hash")?,
                };
                let hashes = parse_hashes(proof)?;
                rfc9162::verify_inclusion(*index, *size, &leaf, &hashes, &cp.root)
                    .map_err(|e| ProofDocError::Invalid(e.to_string()))?;
                Ok(format!(
                    "entry {index} is in the log {origin} of {size} entries (root {})",
                    rfc9162::hex(&cp.root)
                ))
            }
            Self::Consistency {
                origin,
                from,
                to,
                proof,
                ..
            } => {
                let new = open(checkpoint, log, origin)?;
                let old_bytes = old_checkpoint.ok_or_else(|| {
                    ProofDocError::Checkpoint(
                        "a consistency proof needs the older checkpoint too (--old-checkpoint)"
                            .into(),
                    )
                })?;
                let old = open(old_bytes, log, origin)?;
                if old.size != *from || new.size != *to {
                    return Err(ProofDocError::Checkpoint(format!(
                        "the checkpoints cover {} and {} entries but the proof is from {from} to {to}",
                        old.size, new.size
                    )));
                }
                let hashes = parse_hashes(proof)?;
                rfc9162::verify_consistency(*from, *to, &hashes, &old.root, &new.root)
                    .map_err(|e| ProofDocError::Invalid(e.to_string()))?;
                Ok(format!(
                    "the log {origin} of {to} entries extends its first {from} entries"
                ))
            }
        }
    }
}

fn open(bytes: &[u8], log: &Verifier, origin: &str) -> Result<Checkpoint, ProofDocError> {
    Checkpoint::open(bytes, log, origin)
        .map(|(cp, _)| cp)
        .map_err(|e| ProofDocError::Checkpoint(e.to_string()))
}

fn parse_hashes(hex: &[String]) -> Result<Vec<Hash>, ProofDocError> {
    hex.iter()
        .enumerate()
        .map(|(i, h)| parse_hash(h, &format!("proof[{i}]")))
        .collect()
}

fn parse_hash(hex: &str, what: &str) -> Result<Hash, ProofDocError> {
    crate::witness::parse_root(hex)
        .ok_or_else(|| ProofDocError::Malformed(format!("{what} is not 64 hex digits")))
}

/// Hex strings of hashes, for building documents.
pub fn to_hex(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(rfc9162::hex).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_documents_are_refused_with_reasons() {
        let h = "ab".repeat(32);
        let ok = format!(
            r#"{{"type":"inclusion","origin":"o","index":0,"size":1,"leaf_hash":"{h}","proof":[],"root":"{h}"}}"#
        );
        assert!(ProofDoc::parse(ok.as_bytes()).is_ok());
        for (doc, why) in [
            (ok.replace("inclusion", "exclusion"), "unknown variant"),
            (
                ok.replace(r#""proof":[]"#, r#""proof":["zz"]"#),
                "proof[0] is not 64 hex",
            ),
            (
                ok.replace(&format!(r#""root":"{h}""#), r#""root":"00""#),
                "root is not 64 hex",
            ),
            (ok.replace("\"size\":1", "\"size\":-1"), "invalid value"),
            (ok.replace("}", ",\"extra\":1}"), "unknown field"),
            (format!("{ok} trailing"), "trailing characters"),
            ("{".to_owned(), "EOF"),
            (
                format!(
                    r#"{{"type":"consistency","origin":"o","from":5,"to":4,"proof":[],"from_root":"{h}","to_root":"{h}"}}"#
                ),
                "larger than",
            ),
        ] {
            let err = ProofDoc::parse(doc.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(why), "{doc}: {err}");
        }
        let many: Vec<String> = (0..65).map(|_| h.clone()).collect();
        let big = ok.replace(
            r#""proof":[]"#,
            &format!(r#""proof":{}"#, serde_json::to_string(&many).unwrap()),
        );
        assert!(
            ProofDoc::parse(big.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
        assert!(ProofDoc::parse(&vec![b' '; MAX_PROOF_DOC + 1]).is_err());
    }
}
