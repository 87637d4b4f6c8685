//! The Ringfence control plane (shell): machines and their pools, the job lifecycle
//! (Binary Authorization, placement under the Workload Security Rings, assignments for the
//! agents), service discovery, and the issuance authority the CA asks before it signs a
//! task's SVID. Decisions stay in the pure crates (`admission`, `sched`); this crate loads
//! state, calls them, audits and persists.

pub mod model;
pub mod plane;
pub mod server;

pub use model::{
    Assignment, Endpoint, HostTrust, JobRecord, JobState, MachineRecord, Registration,
    TaskPlacement, TaskReport, TaskStatus,
};
pub use plane::{ControlPlane, CpError, Settings};
