//! A witness: remembers the last checkpoint it accepted from a log, accepts a new one only
//! with a consistency proof from it, and countersigns what it accepts (C2SP
//! `tlog-cosignature/v1`). A rollback (smaller size), a fork or split view (same size,
//! another root; or a proof that does not connect the two) is refused.
//!
//! The state is one small JSON file, replaced atomically (write, fsync, rename), so a crash
//! never leaves the witness without the last checkpoint it vouched for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError, cosign};
use crate::note::{Signer, Verifier};
use crate::rfc9162::{self, Hash, ProofError};

/// Why the witness refused.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The checkpoint is not validly signed by the log, or malformed.
    #[error("refused: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The log went back in time.
    #[error(
        "refused: ROLLBACK: the checkpoint has {new} entries but this witness already accepted {old} entries from this log"
    )]
    Rollback {
        /// Size accepted before.
        old: u64,
        /// Size offered.
        new: u64,
    },
    /// Two different trees of the same size.
    #[error(
        "refused: FORK (split view): the checkpoint has the same size {size} as the one this witness accepted but a different root ({new}, accepted {old})"
    )]
    SplitView {
        /// Size.
        size: u64,
        /// Root accepted before (hex).
        old: String,
        /// Root offered (hex).
        new: String,
    },
    /// The proof does not show the new tree extends the old one.
    #[error(
        "refused: FORK: the log of {new} entries is not an extension of the {old} entries this witness accepted: {source}"
    )]
    Inconsistent {
        /// Size accepted before.
        old: u64,
        /// Size offered.
        new: u64,
        /// The proof failure.
        source: ProofError,
    },
    /// The state file cannot be read or written.
    #[error("witness state {}: {reason}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the witness remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessState {
    /// The log's origin.
    pub origin: String,
    /// Size of the last accepted checkpoint.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// The signed checkpoint itself.
    pub checkpoint: String,
}

/// A witness of one log.
#[derive(Debug)]
pub struct Witness {
    log: Verifier,
    origin: String,
    key: Signer,
    state_path: PathBuf,
}

impl Witness {
    /// A witness of the log with public key `log` and `origin`, signing with `key` (a
    /// cosignature key, type 0x04) and remembering in `state_path`.
    pub fn new(log: Verifier, origin: &str, key: Signer, state_path: &Path) -> Self {
        Self {
            log,
            origin: origin.to_owned(),
            key,
            state_path: state_path.to_owned(),
        }
    }

    /// The last accepted state, if any.
    pub fn state(&self) -> Result<Option<WitnessState>, WitnessError> {
        let text = match std::fs::read_to_string(&self.state_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.state_error(e.to_string())),
        };
        let state: WitnessState = serde_json::from_str(&text)
            .map_err(|e| self.state_error(format!("unreadable: {e}")))?;
        if state.origin != self.origin {
            return Err(self.state_error(format!(
                "it is for log {:?}, not {:?}",
                state.origin, self.origin
            )));
        }
        Ok(Some(state))
    }

    fn state_error(&self, reason: String) -> WitnessError {
        WitnessError::State {
            path: self.state_path.clone(),
            reason,
        }
    }

    /// Checks `signed` (a signed checkpoint) against the remembered one with `proof` (the
    /// consistency proof from the remembered size), remembers it, and returns the checkpoint
    /// with this witness's cosignature line appended.
    pub fn witness(
        &self,
        signed: &[u8],
        proof: &[Hash],
        timestamp: u64,
    ) -> Result<String, WitnessError> {
        let (checkpoint, note) = Checkpoint::open(signed, &self.log, &self.origin)?;
        if let Some(old) = self.state()? {
            let old_root = parse_root(&old.root)
                .ok_or_else(|| self.state_error("the remembered root is not a hex hash".into()))?;
            if checkpoint.size < old.size {
                return Err(WitnessError::Rollback {
                    old: old.size,
                    new: checkpoint.size,
                });
            }
            if checkpoint.size == old.size && checkpoint.root != old_root {
                return Err(WitnessError::SplitView {
                    size: old.size,
                    old: old.root,
                    new: rfc9162::hex(&checkpoint.root),
                });
            }
            rfc9162::verify_consistency(
                old.size,
                checkpoint.size,
                proof,
                &old_root,
                &checkpoint.root,
            )
            .map_err(|source| WitnessError::Inconsistent {
                old: old.size,
                new: checkpoint.size,
                source,
            })?;
        }
        self.remember(&WitnessState {
            origin: self.origin.clone(),
            size: checkpoint.size,
            root: rfc9162::hex(&checkpoint.root),
            checkpoint: note.text.clone(),
        })?;
        let signed_text = String::from_utf8_lossy(signed).into_owned();
        Ok(format!(
            "{signed_text}{}",
            cosign(&self.key, &checkpoint, timestamp)
        ))
    }

    fn remember(&self, state: &WitnessState) -> Result<(), WitnessError> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| self.state_error(e.to_string()))?;
        let tmp = self.state_path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.state_path)?;
            if let Some(dir) = self
                .state_path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| self.state_error(e.to_string()))
    }
}

/// Parses a 64-digit hex hash.
pub fn parse_root(hex: &str) -> Option<Hash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}
