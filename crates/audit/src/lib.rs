//! Ringfence's tamper-evident audit log.
//!
//! Every component records what it decided here. Entries are leaves of an RFC 9162 Merkle
//! tree; the log publishes signed checkpoints (C2SP `tlog-checkpoint` in a C2SP signed note,
//! Ed25519), serves inclusion and consistency proofs that anyone can check with only a
//! checkpoint and the log's public key, and witnesses countersign checkpoints they have
//! checked to be consistent with everything they saw before (C2SP `tlog-cosignature`).

pub mod checkpoint;
pub mod event;
mod log;
pub mod note;
pub mod proof;
pub mod rfc9162;
mod sink;
mod verify;
pub mod witness;

pub use event::{Decision, Event, EventError};
pub use log::{AuditError, AuditLog, Head, LogOptions, LogReader, Published};
pub use sink::{AuditSink, BATCH_BYTES, MemorySink, Spool};
pub use verify::{VerifyError, VerifyReport, verify_log};
pub use witness::{Witness, WitnessError, WitnessState};
