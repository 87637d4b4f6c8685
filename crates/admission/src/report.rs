//! The conformance report (C10): per service and environment, how many running jobs conform,
//! which do not and why, active break-glass deployments, and — for dry-run policies — what
//! would break if the policy were enforced.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ringfence_core::UnixTime;
use serde::{Deserialize, Serialize};

use crate::continuous::{Flag, Status};
use crate::policy::{Mode, PolicySet};
use crate::verdict::Finding;

/// A job that would be refused under enforcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WouldBreak {
    /// The deployment id.
    pub id: String,
    /// The job name.
    pub job: String,
    /// Why.
    pub findings: Vec<Finding>,
}

/// One service in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// The governing policy, if any.
    pub policy: Option<String>,
    /// `enforce`, `dry-run`, `allow-all`, `opt-out`, or `none`.
    pub mode: String,
    /// Running jobs.
    pub jobs: usize,
    /// Conforming.
    pub compliant: usize,
    /// Not conforming (whatever admitted them).
    pub non_compliant: usize,
    /// Running by break-glass.
    pub break_glass: usize,
    /// Dry-run would-deny.
    pub dry_run_would_deny: usize,
    /// Jobs whose SVID renewal is withheld.
    pub svid_revoked: usize,
    /// What would break if enforced (dry-run and opt-out policies) or fails now.
    pub would_break: Vec<WouldBreak>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When.
    pub generated_at: UnixTime,
    /// Rows, sorted by namespace, service, environment.
    pub services: Vec<Row>,
    /// Policies that govern no running job.
    pub idle_policies: Vec<String>,
}

/// Builds the report from re-verified statuses.
pub fn build(policies: &PolicySet, statuses: &[Status], now: UnixTime) -> Report {
    let mut rows: BTreeMap<(String, String, String), Row> = BTreeMap::new();
    let mut used = std::collections::BTreeSet::new();
    for s in statuses {
        let j = &s.job;
        let policy = policies.find(&j.namespace, &j.service, &j.environment);
        if let Some(p) = policy {
            used.insert(p.name().to_owned());
        }
        let row = rows
            .entry((
                j.namespace.clone(),
                j.service.clone(),
                j.environment.clone(),
            ))
            .or_insert_with(|| Row {
                namespace: j.namespace.clone(),
                service: j.service.clone(),
                environment: j.environment.clone(),
                policy: policy.map(|p| p.name().to_owned()),
                mode: match policy {
                    None => "none".into(),
                    Some(p) if p.spec().allow_all.is_some() => "allow-all".into(),
                    Some(p) if p.spec().opt_out.is_some() => "opt-out".into(),
                    Some(p) if p.spec().mode == Mode::DryRun => "dry-run".into(),
                    Some(_) => "enforce".into(),
                },
                jobs: 0,
                compliant: 0,
                non_compliant: 0,
                break_glass: 0,
                dry_run_would_deny: 0,
                svid_revoked: 0,
                would_break: Vec::new(),
            });
        row.jobs += 1;
        if s.now.conforms() {
            row.compliant += 1;
        } else {
            row.non_compliant += 1;
            row.would_break.push(WouldBreak {
                id: s.id.clone(),
                job: j.name.clone(),
                findings: s.now.findings.clone(),
            });
        }
        if s.flags.iter().any(|f| matches!(f, Flag::BreakGlass { .. })) {
            row.break_glass += 1;
        }
        if s.flags.contains(&Flag::DryRunWouldDeny) {
            row.dry_run_would_deny += 1;
        }
        if s.revoke_svid {
            row.svid_revoked += 1;
        }
    }
    Report {
        generated_at: now,
        services: rows.into_values().collect(),
        idle_policies: policies
            .policies()
            .iter()
            .map(|p| p.name().to_owned())
            .filter(|n| !used.contains(n))
            .collect(),
    }
}

/// Renders the report as a table, then the jobs that fail (or would, if enforced) with reasons.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let header = [
        "NAMESPACE",
        "SERVICE",
        "ENV",
        "POLICY",
        "MODE",
        "JOBS",
        "OK",
        "FAIL",
        "BREAK-GLASS",
        "WOULD-DENY",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for r in &report.services {
        lines.push(vec![
            r.namespace.clone(),
            r.service.clone(),
            r.environment.clone(),
            r.policy.clone().unwrap_or_else(|| "-".into()),
            r.mode.clone(),
            r.jobs.to_string(),
            r.compliant.to_string(),
            r.non_compliant.to_string(),
            r.break_glass.to_string(),
            r.dry_run_would_deny.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for r in &report.services {
        if r.would_break.is_empty() {
            continue;
        }
        let title = match r.mode.as_str() {
            "dry-run" | "opt-out" => "would break if enforced",
            _ => "failing",
        };
        let _ = writeln!(
            out,
            "\n{}/{} ({}) — {title}:",
            r.namespace, r.service, r.environment
        );
        for w in &r.would_break {
            let _ = writeln!(out, "  {} ({})", w.job, w.id);
            for f in &w.findings {
                let _ = writeln!(out, "    {f}");
            }
        }
    }
    if !report.idle_policies.is_empty() {
        let _ = writeln!(
            out,
            "\npolicies governing no running job: {}",
            report.idle_policies.join(", ")
        );
    }
    out
}
