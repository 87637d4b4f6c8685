//! Workload identity: a SPIFFE certificate authority that issues X.509-SVIDs only for CSRs
//! that pass strict checks and only under an issuance authorization from the control plane
//! (admission gates identity, SPEC A3).
//!
//! This is the pure core of the identity work: CA, SVID profile, CSR checks, authorization.
//! Rotation, JWT-SVIDs, the Workload API server and audit wiring build on it.

mod authority_fix;
mod ca;
mod csr;
pub mod files;
pub mod jwt;
mod rotation;
mod service;
pub mod tls;
pub mod txn;
pub mod workload_api;

pub use ca::{
    Ca, CaKeyProvider, DEFAULT_SVID_TTL, IssuanceAuthority, IssuanceAuthorization, IssueError,
    SoftwareKeyFile, Svid, pem_certificate, pem_lf,
};
pub use csr::{CsrError, MAX_CSR_LEN, VerifiedCsr, parse_csr};
pub use rotation::CaSet;
pub use service::{IssuanceService, ServiceError};
