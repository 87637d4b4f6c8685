//! The Ringfence mesh proxy: mutual TLS between services with SPIFFE identities, a Cedar
//! decision on every request (the caller's workload, the method and normal path, the called
//! service, the end user), transaction tokens bound to their call chain, Prometheus counters
//! and an audit entry for every denial.
//!
//! See `docs/mesh.md` for the model and the configuration.

pub mod config;
pub mod discovery;
pub mod h1;
pub mod h2;
pub mod proxy;
pub mod source;
pub mod tcp;
pub mod telemetry;

pub use proxy::{Limits, Mesh, MeshError, MeshParts, PolicyHandle, Resolver, StaticResolver};
pub use tcp::Cidr;
pub use telemetry::{Outcome, Telemetry};
