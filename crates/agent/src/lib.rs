//! The Ringfence node agent: registers its machine with the control plane, follows its
//! assignments, runs each admitted task in the runtime sandbox under a host uid of its own
//! (restarted with backoff when it crashes), serves each task a Workload API socket of its own
//! with the SVID the CA issued for it, and reports every task's state.

pub mod node;
pub mod remote;
pub mod runner;

pub use node::{AgentConfig, ControlPlaneApi};
pub use runner::{
    Backoff, Runner, RunnerConfig, RunnerError, TaskEvent, TaskHandle, TaskSpec, TaskState,
};
