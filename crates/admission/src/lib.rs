//! Ringfence Binary Authorization, pure: service policies (YAML), the admission verdict,
//! continuous verification and conformance reports. No I/O: the control plane and the CLI
//! bring the policies, the job, the attestations and the time.

pub mod continuous;
pub mod policy;
pub mod report;
pub mod verdict;
