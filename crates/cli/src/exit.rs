//! The documented exit codes. Scripts may rely on them; change them only with a note in the
//! changelog.

use ringfence_store::StoreError;

/// Success.
pub const SUCCESS: u8 = 0;
/// The operation failed (see the message).
pub const FAILURE: u8 = 1;
/// Bad command-line usage (clap's own code).
pub const USAGE: u8 = 2;
/// The configuration (file, flag or environment) is invalid.
pub const CONFIG: u8 = 3;
/// What was asked for does not exist.
pub const NOT_FOUND: u8 = 4;
/// A compare-and-swap expectation did not hold; nothing was changed.
pub const CONFLICT: u8 = 5;
/// A dependency (etcd, the control plane) is unreachable; retrying later may succeed.
pub const UNAVAILABLE: u8 = 6;
/// Local data is damaged, foreign or locked; an operator must act.
pub const DATA: u8 = 7;

/// The table shown under `ringfence --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed (see the message)
  2  bad command-line usage (unknown flag, malformed argument such as a key)
  3  invalid configuration (file, flag or environment variable)
  4  not found
  5  conflict: an expected revision did not match; nothing was changed
  6  unavailable: a dependency (such as etcd) could not be reached; retry later
  7  local data is damaged, foreign or in use by another process; an operator must act";

fn gate_code(e: &ringfence_bab::GateError) -> u8 {
    match e {
        ringfence_bab::GateError::AuditUnavailable(_) => UNAVAILABLE,
        ringfence_bab::GateError::Store(s) => store_code(s),
        ringfence_bab::GateError::Corrupt { .. } => DATA,
        _ => FAILURE,
    }
}

/// The exit code for an error, from the most specific cause in its chain.
pub fn code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return store_code(e);
        }
        if let Some(e) = cause.downcast_ref::<ringfence_audit::AuditError>() {
            return match e {
                ringfence_audit::AuditError::Store(s) => store_code(s),
                ringfence_audit::AuditError::Corrupt(_) => DATA,
                _ => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<ringfence_bab::GateError>() {
            return gate_code(e);
        }
        if let Some(e) = cause.downcast_ref::<ringfence_controlplane::CpError>() {
            use ringfence_controlplane::CpError;
            match e {
                CpError::AuditUnavailable(_) => return UNAVAILABLE,
                CpError::NotFound(_) => return NOT_FOUND,
                CpError::Store(s) => return store_code(s),
                CpError::Corrupt { .. } => return DATA,
                CpError::Invalid(_) => return FAILURE,
                CpError::Gate(g) => return gate_code(g),
            }
        }
        if let Some(ringfence_bab::artifacts::ArtifactError::NotFound(_)) =
            cause.downcast_ref::<ringfence_bab::artifacts::ArtifactError>()
        {
            return NOT_FOUND;
        }
        if let Some(e) = cause.downcast_ref::<crate::client::ApiError>() {
            return match e.code {
                tonic::Code::Unavailable => UNAVAILABLE,
                tonic::Code::NotFound => NOT_FOUND,
                tonic::Code::InvalidArgument => FAILURE,
                _ => FAILURE,
            };
        }
        if cause.downcast_ref::<crate::store_cmd::NotFound>().is_some() {
            return NOT_FOUND;
        }
    }
    FAILURE
}

fn store_code(e: &StoreError) -> u8 {
    match e {
        StoreError::Conflict { .. } => CONFLICT,
        StoreError::Unavailable { .. } => UNAVAILABLE,
        StoreError::Corrupt { .. } | StoreError::NotAStore { .. } | StoreError::Locked { .. } => {
            DATA
        }
        StoreError::InvalidUrl { .. } => CONFIG,
        StoreError::InvalidKey { .. } => USAGE,
        _ => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_lists_every_code() {
        for code in [
            SUCCESS,
            FAILURE,
            USAGE,
            CONFIG,
            NOT_FOUND,
            CONFLICT,
            UNAVAILABLE,
            DATA,
        ] {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {code}  ")),
                "code {code} missing"
            );
        }
    }

    #[test]
    fn store_errors_map_to_their_codes() {
        let conflict = anyhow::Error::new(StoreError::Conflict {
            key: "/a".into(),
            expected: ringfence_store::Expect::Absent,
            actual: Some(3),
        })
        .context("putting /a");
        assert_eq!(code_for(&conflict), CONFLICT);
        let locked = anyhow::Error::new(StoreError::Locked { path: "/x".into() });
        assert_eq!(code_for(&locked), DATA);
        assert_eq!(code_for(&anyhow::anyhow!("other")), FAILURE);
    }
}
