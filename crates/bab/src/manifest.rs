//! The job manifest (`kind: Job`) as admission reads it. The job's configuration digest is the
//! SHA-256 of the manifest file exactly as submitted: the same bytes a code review approved
//! (the review attestation lists them by that digest), so no flag can change unreviewed.

use std::collections::BTreeMap;

use ringfence_admission::verdict::Job;
use ringfence_provenance::statement::Sha256;
use serde::{Deserialize, Serialize};

/// Largest manifest, in bytes.
pub const MAX_MANIFEST_LEN: usize = 256 * 1024;

/// Metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Job name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// A port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Name.
    pub name: String,
    /// Number.
    pub port: u16,
}

/// Resources.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (`0.5`).
    #[serde(default)]
    pub cpu: Option<String>,
    /// Memory (`256M`).
    #[serde(default)]
    pub memory: Option<String>,
}

/// The spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// The service identity it runs as.
    pub service: String,
    /// Environment (default `production`).
    #[serde(default = "production")]
    pub environment: String,
    /// `repository@sha256:...`.
    pub image: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resources.
    #[serde(default)]
    pub resources: Resources,
    /// Replicas (default 1).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Workload Security Ring (`foundational`, `sensitive`, `hardened`, `unhardened`).
    #[serde(default)]
    pub ring: Option<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<Port>,
}

fn production() -> String {
    "production".into()
}

fn one() -> u32 {
    1
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobManifest {
    /// `ringfence.dev/v1`.
    pub api_version: String,
    /// `Job`.
    pub kind: String,
    /// Metadata.
    pub metadata: Metadata,
    /// Spec.
    pub spec: JobSpec,
}

impl JobManifest {
    /// Parses a manifest and derives the job admission sees.
    pub fn parse(bytes: &[u8]) -> Result<(Self, Job), String> {
        if bytes.len() > MAX_MANIFEST_LEN {
            return Err(format!(
                "job manifest is {} bytes; at most {MAX_MANIFEST_LEN} are accepted",
                bytes.len()
            ));
        }
        let m: Self =
            serde_yaml_ng::from_slice(bytes).map_err(|e| format!("invalid job manifest: {e}"))?;
        if m.api_version != "ringfence.dev/v1" || m.kind != "Job" {
            return Err(format!(
                "invalid job manifest: expected apiVersion ringfence.dev/v1, kind Job (got {}, {})",
                m.api_version, m.kind
            ));
        }
        let job = Job {
            name: m.metadata.name.clone(),
            namespace: m.metadata.namespace.clone(),
            service: m.spec.service.clone(),
            environment: m.spec.environment.clone(),
            image: m.spec.image.clone(),
            config_digest: Sha256::of(bytes),
        };
        Ok((m, job))
    }
}
