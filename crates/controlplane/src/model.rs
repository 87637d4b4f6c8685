//! What the control plane stores, and the requests agents make.
//!
//! Store layout (JSON values):
//! - `/cp/pools/<machine>`: the pool an operator assigned to a machine (`production`, ...)
//! - `/cp/machines/<machine>`: the machine as registered, with its last heartbeat
//! - `/cp/jobs/<namespace>/<job>`: a submitted job, its verdict and where its tasks are
//! - `/cp/assignments/<machine>/<task>`: what the machine's agent must run
//! - `/cp/tasks/<task>`: the last status the agent reported for a task

use std::collections::BTreeMap;

use ringfence_core::{SpiffeId, UnixTime};
use ringfence_sched::{Admission, Pool, Resources, Ring};
use serde::{Deserialize, Serialize};

/// How far the control plane trusts the host a machine's agent runs on.
///
/// Pool membership is the control plane's decision, never the agent's claim; this is what the
/// control plane knows about the host when it decides. Until host attestation (a TPM quote)
/// lands, an agent that registers from elsewhere is always `Development`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostTrust {
    /// An agent the control plane started itself, on its own host (`ringfence up`): the host
    /// is trusted exactly as much as the control plane's own.
    ControlPlaneHost,
    /// No host attestation: the explicit development mode, development pool only.
    Development,
}

/// An agent's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    /// The machine id (a DNS label).
    pub machine: String,
    /// What the machine offers.
    pub capacity: Resources,
    /// Where its tasks' ports are reachable (an IP address).
    pub address: String,
}

/// A registered machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRecord {
    /// The machine id.
    pub id: String,
    /// The pool the control plane placed it in.
    pub pool: Pool,
    /// What the control plane knows about its host.
    pub trust: HostTrust,
    /// What it offers.
    pub capacity: Resources,
    /// Where its tasks are reachable.
    pub address: String,
    /// First registration.
    pub registered_at: UnixTime,
    /// Last heartbeat (registration or status report).
    pub last_seen: UnixTime,
}

/// A job's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum JobState {
    /// Admitted and every task placed.
    Placed,
    /// Admitted, but some task fits nowhere yet.
    Pending(String),
    /// Admission or the ring rules refused it.
    Refused(String),
    /// Stopped on request.
    Stopped,
}

impl JobState {
    /// The state in a word (`placed`, `pending`, `refused`, `stopped`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Pending(_) => "pending",
            Self::Refused(_) => "refused",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pending(why) | Self::Refused(why) => write!(f, "{}: {why}", self.name()),
            Self::Placed | Self::Stopped => f.write_str(self.name()),
        }
    }
}

/// A task of a job and where it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskPlacement {
    /// `<namespace>.<service>.<job>.<replica>`.
    pub id: String,
    /// The machine, if placed.
    pub machine: Option<String>,
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// Namespace.
    pub namespace: String,
    /// Job name.
    pub name: String,
    /// Service identity.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// The manifest exactly as submitted.
    pub manifest: String,
    /// `repository@sha256:...` as submitted.
    pub image: String,
    /// The manifest digest admission approved.
    pub digest: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<(String, u16)>,
    /// Ring.
    pub ring: Ring,
    /// Per-task resources.
    pub resources: Resources,
    /// Memory limit per task, bytes (from `resources.memory`).
    pub memory_limit: Option<u64>,
    /// CPU limit per task, cores (from `resources.cpu`).
    pub cpu_limit: Option<f64>,
    /// Replicas.
    pub replicas: u32,
    /// How admission decided (`compliant`, `dry-run`, ...), if it admitted.
    pub admission: Option<Admission>,
    /// The verdict's basis and findings, as shown to users.
    pub verdict: String,
    /// Where the job is.
    pub state: JobState,
    /// Its tasks.
    pub tasks: Vec<TaskPlacement>,
    /// Who submitted it.
    pub by: String,
    /// When.
    pub submitted_at: UnixTime,
}

impl JobRecord {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// How admission decided, in a word (`compliant`, `dry-run`, `denied`...): the start of
    /// [`JobRecord::verdict`].
    pub fn basis(&self) -> &str {
        self.verdict.split([':', ' ']).next().unwrap_or_default()
    }
}

/// What one machine's agent must run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Task id.
    pub task: String,
    /// `namespace/name` of its job.
    pub job: String,
    /// The identity the task's SVID carries.
    pub spiffe_id: SpiffeId,
    /// The manifest digest admitted (`sha256:...`).
    pub digest: String,
    /// Arguments after the image's entrypoint.
    pub args: Vec<String>,
    /// Environment (`K=V`).
    pub env: Vec<String>,
    /// Ring.
    pub ring: Ring,
    /// Resources reserved.
    pub resources: Resources,
    /// Memory limit, bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit, cores.
    pub cpu_limit: Option<f64>,
    /// Ports.
    pub ports: Vec<(String, u16)>,
}

/// A task's state as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskReport {
    /// Task id.
    pub task: String,
    /// `starting`, `running`, `backoff`, `completed`, `stopped`, `failed`.
    pub state: String,
    /// Details (an exit status, a failure).
    #[serde(default)]
    pub detail: String,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Whether the task's Workload API socket holds an SVID.
    #[serde(default)]
    pub svid: bool,
}

/// A task's last report, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The machine that reported it.
    pub machine: String,
    /// The report.
    pub report: TaskReport,
    /// When.
    pub at: UnixTime,
}

/// One endpoint of a service (for discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Task id.
    pub task: String,
    /// Machine.
    pub machine: String,
    /// Machine address.
    pub address: String,
    /// Port name.
    pub port_name: String,
    /// Port.
    pub port: u16,
}
