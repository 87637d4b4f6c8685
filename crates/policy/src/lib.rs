//! Service-access policy (pure): the one normalizer every request goes through before any
//! decision ([`request`]), and Cedar decisions over the calling workload, the method, the
//! called service and the end user ([`access`]).
//!
//! Cedar dominates build time, so this crate is a leaf: only the mesh and the CLI use it.

pub mod access;
pub mod request;

pub use access::{
    AccessPolicy, AccessRequest, Action, Decision, Mode, PolicyError, ServiceName, UserContext,
};
pub use request::{
    Framing, Method, NormalPath, Refusal, Target, check_authority, grpc_call, normalize_target,
    request_framing,
};
