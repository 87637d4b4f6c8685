//! The Ringfence node agent. Today: the task runner, which runs each admitted task in the
//! runtime sandbox under a host uid of its own and restarts it with backoff when it crashes.
//! Registration with the control plane, assignments, Workload API sockets and status reports
//! come with the spine.

pub mod runner;

pub use runner::{
    Backoff, Runner, RunnerConfig, RunnerError, TaskEvent, TaskHandle, TaskSpec, TaskState,
};
