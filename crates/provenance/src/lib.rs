//! Ringfence provenance, pure: DSSE envelopes verified against trusted keys with a threshold.
//! The in-toto Statement, SLSA Provenance and review attestations build on this module.

pub mod dsse;
pub mod oci;
pub mod review;
pub mod sigstore;
pub mod slsa;
pub mod statement;
