//! `ringfence bab`: Binary Authorization against the Store — service policies, admission with
//! audit-first break-glass, continuous verification and the conformance report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use ringfence_admission::report;
use ringfence_admission::verdict::Request;
use ringfence_bab::Gate;
use ringfence_bab::manifest::JobManifest;
use ringfence_bab::notify::Outbox;
use ringfence_core::{SystemClock, TrustDomain};
use ringfence_store::open_store;

use crate::attest_cmd::{Output, read_attestations};
use crate::config::Settings;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum BabCommand {
    /// Service policies
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Decide on a deploy: audit the verdict, then record the job as running if admitted
    /// (exit 0 admitted, 1 denied)
    Admit {
        /// The job manifest (kind: Job)
        #[arg(long, value_name = "FILE")]
        job: PathBuf,
        /// Attestation envelopes (default: those kept with the image in the artifact store)
        #[arg(long = "attestation", value_name = "FILE")]
        attestations: Vec<PathBuf>,
        /// Bypass enforcement in an emergency; the justification is audited before admission
        /// and sent to the security team at once and to the owners after `notify.owners_delay`
        #[arg(long, value_name = "JUSTIFICATION")]
        break_glass: Option<String>,
        /// Who asks (default: $USER)
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Stop tracking a job (it was stopped)
    Remove {
        /// The job manifest
        #[arg(long, value_name = "FILE")]
        job: PathBuf,
    },
    /// Re-check every running job against the current policies now
    Reverify {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run continuous verification until interrupted: on every policy change, when an
    /// attestation is about to age out, and at least every --max-interval; delivers
    /// notifications
    Watch {
        /// Longest time between passes
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        max_interval: Duration,
    },
    /// The conformance report: per service, compliant and non-compliant jobs, break-glass,
    /// dry-run would-deny, and what would break if enforced
    Report {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Notifications waiting in the outbox; --deliver tries the due ones now
    Outbox {
        /// Deliver what is due
        #[arg(long)]
        deliver: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a service policy; running jobs are re-verified at once
    Apply {
        /// The policy (YAML)
        file: PathBuf,
        /// Who applies it (default: $USER)
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
    /// List the policies
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Delete a policy (its services then have none: new deploys are refused)
    Delete {
        /// The policy's name
        name: String,
        /// Who deletes it (default: $USER)
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
}

pub(crate) fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) async fn gate(settings: &Settings) -> Result<Gate> {
    let (store, audit) = store_and_audit(settings).await?;
    gate_with(settings, store, audit)
}

/// The Store and the audit log, as every admission command opens them.
pub(crate) async fn store_and_audit(
    settings: &Settings,
) -> Result<(
    Arc<dyn ringfence_store::Store>,
    Arc<dyn ringfence_audit::AuditSink>,
)> {
    let store = open_store(&settings.store, &settings.data_dir)
        .await
        .context("cannot open the store")?;
    let audit_dir = settings.data_dir.join("audit");
    let log = crate::audit_cmd::open_log_on(Arc::clone(&store), &audit_dir)
        .await
        .context(
            "admission writes every verdict to the audit log: run `ringfence audit init` first",
        )?;
    Ok((store, Arc::new(log)))
}

/// The trust domain of this data directory's CA (`ringfence.local` before there is one).
pub(crate) fn trust_domain(settings: &Settings) -> Result<TrustDomain> {
    match std::fs::read_to_string(settings.data_dir.join("identity").join("trust-domain")) {
        Ok(t) => TrustDomain::parse(t.trim()).context("invalid identity/trust-domain file"),
        Err(_) => Ok(TrustDomain::parse("ringfence.local")?),
    }
}

/// A gate over `store`, auditing to `audit`.
pub(crate) fn gate_with(
    settings: &Settings,
    store: Arc<dyn ringfence_store::Store>,
    audit: Arc<dyn ringfence_audit::AuditSink>,
) -> Result<Gate> {
    let outbox = Outbox::open(&settings.data_dir.join("outbox"), settings.notify_config())
        .context("invalid [notify] configuration")?;
    let actor = trust_domain(settings)?.workload(&["ringfence", "admission"])?;
    Ok(Gate::new(
        store,
        audit,
        outbox,
        Arc::new(SystemClock),
        actor,
    ))
}

fn read_job(path: &PathBuf) -> Result<(JobManifest, ringfence_admission::verdict::Job)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    JobManifest::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub async fn run(cmd: BabCommand, settings: &Settings) -> Result<u8> {
    if let BabCommand::Policy(PolicyCommand::List { output }) = &cmd
        && let Some(mut api) = crate::client::admin(settings)?
    {
        let reply = api
            .list_policies(ringfence_api::pb::ListRequest {})
            .await
            .map_err(|s| crate::client::call_error("list policies", s))?
            .into_inner();
        // Each is the policy's document as JSON, which is YAML too.
        let policies = reply
            .json
            .iter()
            .map(|j| ringfence_admission::policy::Policy::from_yaml(j))
            .collect::<Result<Vec<_>, _>>()?;
        return print_policies(&policies, *output);
    }
    if let BabCommand::Policy(PolicyCommand::Apply { file, by }) = &cmd
        && let Some(mut api) = crate::client::admin(settings)?
    {
        if by.is_some() {
            anyhow::bail!(
                "--by does not apply with --server: the control plane records the person in your certificate"
            );
        }
        let policy =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let reply = api
            .apply_policy(ringfence_api::pb::ApplyPolicyRequest { policy })
            .await
            .map_err(|s| crate::client::call_error(&format!("policy {}", file.display()), s))?
            .into_inner();
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Applied {
            name: String,
            namespace: String,
            service: String,
            digest: String,
            created: bool,
            non_conforming: Vec<String>,
        }
        let a: Applied = serde_json::from_str(&reply.json)?;
        println!(
            "{} policy {} for {}/{} ({})",
            if a.created { "created" } else { "replaced" },
            a.name,
            a.namespace,
            a.service,
            a.digest
        );
        for j in a.non_conforming {
            println!("  now non-conforming: {j}");
        }
        return Ok(exit::SUCCESS);
    }
    let gate = gate(settings).await?;
    match cmd {
        BabCommand::Policy(PolicyCommand::Apply { file, by }) => {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let applied = gate
                .apply_policy(&yaml, &who(by))
                .await
                .with_context(|| format!("policy {} refused", file.display()))?;
            let p = &applied.policy;
            println!(
                "{} policy {} for {}/{} ({})",
                if applied.created {
                    "created"
                } else {
                    "replaced"
                },
                p.name(),
                p.spec().namespace,
                p.spec().service,
                p.digest
            );
            let flagged: Vec<_> = applied
                .statuses
                .iter()
                .filter(|s| !s.now.conforms())
                .collect();
            for s in &flagged {
                println!("  flagged: {} ({})", s.job.name, s.id);
                for f in s.findings() {
                    println!("    {f}");
                }
            }
            Ok(exit::SUCCESS)
        }
        BabCommand::Policy(PolicyCommand::List { output }) => {
            let set = gate.policies().await?;
            print_policies(set.policies(), output)
        }
        BabCommand::Policy(PolicyCommand::Delete { name, by }) => {
            if gate.delete_policy(&name, &who(by)).await? {
                println!("deleted policy {name}");
                Ok(exit::SUCCESS)
            } else {
                eprintln!("error: no policy named {name}");
                Ok(exit::NOT_FOUND)
            }
        }
        BabCommand::Admit {
            job,
            attestations,
            break_glass,
            by,
            output,
        } => {
            let (_, job) = read_job(&job)?;
            let atts = if attestations.is_empty() {
                crate::attest_cmd::attestations_for_image(settings, &job.image)?
            } else {
                read_attestations(&attestations)?
            };
            let by = who(by);
            let request = match break_glass {
                Some(justification) => Request::BreakGlass {
                    justification,
                    by: by.clone(),
                },
                None => Request::Normal,
            };
            let verdict = gate.admit(&job, &atts, &request, &by).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&verdict)?),
                Output::Text => {
                    println!(
                        "{} {}/{}/{} ({}; policy {})",
                        if verdict.admit { "ADMITTED" } else { "DENIED" },
                        job.namespace,
                        job.service,
                        job.name,
                        verdict.basis,
                        verdict.policy.as_deref().unwrap_or("-")
                    );
                    for f in &verdict.findings {
                        println!("  {f}");
                    }
                    if verdict.basis == ringfence_admission::verdict::Basis::BreakGlass {
                        println!(
                            "  break-glass recorded in the audit log; the security team is notified; the job stays flagged until redeployed compliant"
                        );
                    }
                }
            }
            Ok(if verdict.admit {
                exit::SUCCESS
            } else {
                exit::FAILURE
            })
        }
        BabCommand::Remove { job } => {
            let (_, job) = read_job(&job)?;
            if gate.remove(&job, &who(None)).await? {
                println!("removed {}", job.name);
                Ok(exit::SUCCESS)
            } else {
                eprintln!("error: {} is not recorded as running", job.name);
                Ok(exit::NOT_FOUND)
            }
        }
        BabCommand::Reverify { output } => {
            let statuses = gate.reverify().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&statuses)?),
                Output::Text => {
                    let flagged = statuses.iter().filter(|s| !s.flags.is_empty()).count();
                    println!(
                        "{} running job(s) re-verified, {flagged} flagged",
                        statuses.len()
                    );
                    for s in statuses.iter().filter(|s| !s.flags.is_empty()) {
                        let flags: Vec<String> = s
                            .flags
                            .iter()
                            .map(|f| {
                                serde_json::to_value(f)
                                    .ok()
                                    .and_then(|v| {
                                        v.get("flag").and_then(|x| x.as_str()).map(str::to_owned)
                                    })
                                    .unwrap_or_default()
                            })
                            .collect();
                        println!(
                            "  {}/{}/{} [{}]{}",
                            s.job.namespace,
                            s.job.service,
                            s.job.name,
                            flags.join(", "),
                            if s.revoke_svid {
                                " — SVID renewal withheld"
                            } else {
                                ""
                            }
                        );
                        for f in s.findings() {
                            println!("    {f}");
                        }
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        BabCommand::Watch { max_interval } => {
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = tx.send(true);
            });
            eprintln!(
                "continuous verification running (at least every {}); Ctrl-C stops",
                humantime::format_duration(max_interval)
            );
            gate.watch(max_interval, rx).await?;
            Ok(exit::SUCCESS)
        }
        BabCommand::Report { output } => {
            let r = gate.report().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Output::Text => print!("{}", report::table(&r)),
            }
            Ok(exit::SUCCESS)
        }
        BabCommand::Outbox { deliver } => {
            if deliver {
                let pass = gate.outbox().deliver_due(&SystemClock).await?;
                eprintln!(
                    "delivered {}, failed {} (kept for retry), waiting {}, given up {}",
                    pass.delivered, pass.failed, pass.waiting, pass.dead
                );
            }
            for m in gate.outbox().pending()? {
                println!(
                    "{}  {:<16} {:<18} not before {}  attempts {}{}",
                    m.id,
                    m.sink,
                    m.kind,
                    ringfence_provenance::slsa::format_time(m.not_before),
                    m.attempts,
                    m.last_error
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(exit::SUCCESS)
        }
    }
}

fn print_policies(policies: &[ringfence_admission::policy::Policy], output: Output) -> Result<u8> {
    match output {
        Output::Json => {
            let docs: Vec<_> = policies.iter().map(|p| &p.doc).collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
        Output::Text => {
            println!(
                "{:<24}  {:<28}  {:<20}  MODE",
                "NAME", "SERVICE", "ENVIRONMENTS"
            );
            for p in policies {
                let s = p.spec();
                let mode = if s.allow_all.is_some() {
                    "allow-all".to_owned()
                } else if s.opt_out.is_some() {
                    "opt-out".to_owned()
                } else {
                    format!("{:?}", s.mode).to_lowercase()
                };
                println!(
                    "{:<24}  {:<28}  {:<20}  {mode}",
                    p.name(),
                    format!("{}/{}", s.namespace, s.service),
                    if s.environments.is_empty() {
                        "*".into()
                    } else {
                        s.environments.join(",")
                    },
                );
            }
        }
    }
    Ok(exit::SUCCESS)
}
