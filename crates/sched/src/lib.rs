//! The first scheduler, pure: where a task may run under the Workload Security Rings (SPEC
//! E1–E3) and where it fits.
//!
//! Rules:
//! - **foundational** runs only on foundational machines, and never shares a machine with a
//!   task that is not foundational (foundational machines run nothing else);
//! - **sensitive** runs only on production machines;
//! - **unhardened** runs only on development machines;
//! - **hardened** runs on production or development, preferring production;
//! - a machine without host attestation (development mode) serves only the development pool;
//! - a job's ring cannot claim more trust than its admission supports: a job admitted by
//!   break-glass, dry-run or opt-out is neither foundational nor sensitive, and hardened needs a
//!   conforming verdict (compliant or allow-all) or the sandbox.
//!
//! Among the machines that may take a task and have room, the preferred pool comes first, then
//! the tightest fit (keeping large holes for large tasks), then the machine id, so the same
//! inputs always give the same placement.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Workload Security Ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ring {
    /// Runs the platform itself.
    Foundational,
    /// Handles sensitive data.
    Sensitive,
    /// Conforms to Binary Authorization, or is sandboxed.
    Hardened,
    /// Anything else.
    Unhardened,
}

/// A machine pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Platform machines.
    Foundational,
    /// Production.
    Production,
    /// Development.
    Development,
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Foundational => "foundational",
            Self::Sensitive => "sensitive",
            Self::Hardened => "hardened",
            Self::Unhardened => "unhardened",
        })
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Foundational => "foundational",
            Self::Production => "production",
            Self::Development => "development",
        })
    }
}

impl Ring {
    /// The pools this ring may run in, preferred first.
    pub fn pools(self) -> &'static [Pool] {
        match self {
            Self::Foundational => &[Pool::Foundational],
            Self::Sensitive => &[Pool::Production],
            Self::Hardened => &[Pool::Production, Pool::Development],
            Self::Unhardened => &[Pool::Development],
        }
    }
}

/// How the job was admitted (from its Binary Authorization verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Meets its policy.
    Compliant,
    /// Its policy is an explicit allow-all.
    AllowAll,
    /// Admitted under an opt-out.
    OptOut,
    /// Admitted under a dry-run policy.
    DryRun,
    /// Admitted by break-glass.
    BreakGlass,
}

/// CPU in millicores and memory in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Millicores.
    pub cpu_milli: u64,
    /// MiB.
    pub memory_mib: u64,
}

impl Resources {
    fn fits_in(self, free: Resources) -> bool {
        self.cpu_milli <= free.cpu_milli && self.memory_mib <= free.memory_mib
    }

    fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.saturating_sub(other.cpu_milli),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
        }
    }

    fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
        }
    }
}

/// A task placed on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The task's id.
    pub task: String,
    /// Its ring.
    pub ring: Ring,
    /// What it reserved.
    pub resources: Resources,
}

/// A machine as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Its id.
    pub id: String,
    /// Its pool (assigned by the control plane, never claimed by the agent).
    pub pool: Pool,
    /// Whether it proved a measured boot; without it, only the development pool.
    pub attested: bool,
    /// Whether it takes new work (false while draining or unreachable).
    pub schedulable: bool,
    /// Capacity.
    pub capacity: Resources,
    /// Tasks on it.
    pub tasks: Vec<Placed>,
}

impl Machine {
    fn used(&self) -> Resources {
        self.tasks
            .iter()
            .fold(Resources::default(), |acc, t| acc.plus(t.resources))
    }

    fn free(&self) -> Resources {
        self.capacity.minus(self.used())
    }
}

/// A task to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// The ring its job asks for.
    pub ring: Ring,
    /// How its job was admitted.
    pub admission: Admission,
    /// Whether it runs in the sandbox.
    pub sandboxed: bool,
    /// What it needs.
    pub resources: Resources,
}

/// Why a task cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// The ring claims more trust than the admission supports.
    #[error(
        "task {task} asks for ring {ring}, which a job admitted as {admission:?}{sandbox} cannot have"
    )]
    RingNotSupported {
        /// The task.
        task: String,
        /// The ring asked for.
        ring: Ring,
        /// How it was admitted.
        admission: Admission,
        /// ", not sandboxed" when that matters.
        sandbox: String,
    },
    /// No machine may take it.
    #[error("task {task} ({ring}) fits nowhere: {reasons}")]
    Unschedulable {
        /// The task.
        task: String,
        /// Its ring.
        ring: Ring,
        /// Per machine, why not.
        reasons: String,
    },
}

/// Checks that the task's ring is one its admission supports.
pub fn check_ring(task: &Task) -> Result<(), SchedError> {
    let conforming = matches!(task.admission, Admission::Compliant | Admission::AllowAll);
    let ok = match task.ring {
        // Allow-all is for services without sensitive data: not foundational or sensitive.
        Ring::Foundational | Ring::Sensitive => task.admission == Admission::Compliant,
        Ring::Hardened => conforming || task.sandboxed,
        Ring::Unhardened => true,
    };
    if ok {
        Ok(())
    } else {
        Err(SchedError::RingNotSupported {
            task: task.id.clone(),
            ring: task.ring,
            admission: task.admission,
            sandbox: if task.ring == Ring::Hardened {
                ", not sandboxed".into()
            } else {
                String::new()
            },
        })
    }
}

/// Why `machine` cannot take `task`, or `None` when it can.
pub fn refusal(machine: &Machine, task: &Task) -> Option<String> {
    if !machine.schedulable {
        return Some("not schedulable".into());
    }
    if !task.ring.pools().contains(&machine.pool) {
        return Some(format!(
            "pool {} does not serve ring {}",
            machine.pool, task.ring
        ));
    }
    if !machine.attested && machine.pool != Pool::Development {
        return Some("no host attestation: development pool only".into());
    }
    let foundational_here = machine.tasks.iter().any(|t| t.ring == Ring::Foundational);
    let others_here = machine.tasks.iter().any(|t| t.ring != Ring::Foundational);
    if task.ring == Ring::Foundational && others_here {
        return Some("runs non-foundational tasks".into());
    }
    if task.ring != Ring::Foundational && foundational_here {
        return Some("runs foundational tasks".into());
    }
    if !task.resources.fits_in(machine.free()) {
        let free = machine.free();
        return Some(format!(
            "needs {}m CPU / {} MiB, {}m / {} MiB free",
            task.resources.cpu_milli, task.resources.memory_mib, free.cpu_milli, free.memory_mib
        ));
    }
    None
}

/// Preferred pool position, free CPU after placing, free memory after placing, machine id.
type Rank<'a> = (usize, u64, u64, &'a str);

/// Chooses the machine for `task`: the preferred pool first, then the tightest fit, then the id.
pub fn place<'a>(machines: &'a [Machine], task: &Task) -> Result<&'a Machine, SchedError> {
    check_ring(task)?;
    let pools = task.ring.pools();
    let mut best: Option<(&Machine, Rank<'_>)> = None;
    let mut reasons = Vec::new();
    for m in machines {
        if let Some(why) = refusal(m, task) {
            reasons.push(format!("{}: {why}", m.id));
            continue;
        }
        let free = m.free().minus(task.resources);
        let rank = (
            pools
                .iter()
                .position(|p| *p == m.pool)
                .unwrap_or(usize::MAX),
            free.cpu_milli,
            free.memory_mib,
            m.id.as_str(),
        );
        if best.as_ref().is_none_or(|(_, r)| rank < *r) {
            best = Some((m, rank));
        }
    }
    best.map(|(m, _)| m)
        .ok_or_else(|| SchedError::Unschedulable {
            task: task.id.clone(),
            ring: task.ring,
            reasons: if reasons.is_empty() {
                "no machines".into()
            } else {
                reasons.join("; ")
            },
        })
}

/// Places `task` and records it on the chosen machine; returns the machine's id.
pub fn place_and_record(machines: &mut [Machine], task: &Task) -> Result<String, SchedError> {
    let id = place(machines, task)?.id.clone();
    if let Some(m) = machines.iter_mut().find(|m| m.id == id) {
        m.tasks.push(Placed {
            task: task.id.clone(),
            ring: task.ring,
            resources: task.resources,
        });
    }
    Ok(id)
}
