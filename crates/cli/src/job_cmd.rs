//! `ringfence job`: the job lifecycle against the Store — submit (Binary Authorization, then
//! placement under the Workload Security Rings), list, status, logs and stop. The agents that
//! run the tasks follow the same Store (`ringfence up` starts four on this host).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use ringfence_admission::verdict::Request;
use std::collections::BTreeMap;

use ringfence_controlplane::{
    ControlPlane, JobRecord, JobState, Settings as CpSettings, TaskStatus,
};
use ringfence_core::SystemClock;

use crate::attest_cmd::{Output, read_attestations};
use crate::bab_cmd::who;
use crate::client::call_error;
use crate::config::Settings;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job (kind: Job): Binary Authorization decides, then its tasks are placed
    /// (exit 0 placed or pending, 1 refused, with the reasons)
    Submit {
        /// The job manifest
        file: PathBuf,
        /// Attestation envelopes (default: those kept with the image in the artifact store)
        #[arg(long = "attestation", value_name = "FILE")]
        attestations: Vec<PathBuf>,
        /// Bypass enforcement in an emergency; audited before admission, the security team
        /// told at once (the job can then be neither foundational nor sensitive)
        #[arg(long, value_name = "JUSTIFICATION")]
        break_glass: Option<String>,
        /// Who submits (default: $USER)
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The jobs, their verdicts and where their tasks run
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One job: verdict, placement and each task's last reported state
    Status {
        /// `namespace/name`
        job: String,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A task's captured output (tasks of agents on this host)
    Logs {
        /// `namespace/name`
        job: String,
        /// Which replica
        #[arg(long, default_value_t = 0)]
        replica: u32,
        /// Standard error instead of standard output
        #[arg(long)]
        stderr: bool,
    },
    /// Stop a job: its agents end its tasks and it leaves continuous verification
    Stop {
        /// `namespace/name`
        job: String,
        /// Who stops it (default: $USER)
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
}

fn split(job: &str) -> Result<(&str, &str)> {
    job.split_once('/')
        .with_context(|| format!("job {job:?}: expected namespace/name"))
}

async fn control_plane(settings: &Settings) -> Result<ControlPlane> {
    let (store, audit) = crate::bab_cmd::store_and_audit(settings).await?;
    let gate = crate::bab_cmd::gate_with(
        settings,
        std::sync::Arc::clone(&store),
        std::sync::Arc::clone(&audit),
    )?;
    Ok(ControlPlane::new(
        store,
        audit,
        gate,
        std::sync::Arc::new(SystemClock),
        CpSettings::new(crate::bab_cmd::trust_domain(settings)?),
    )?)
}

fn placement(j: &JobRecord) -> String {
    let placed: Vec<String> = j
        .tasks
        .iter()
        .map(|t| t.machine.clone().unwrap_or_else(|| "(pending)".into()))
        .collect();
    if placed.is_empty() {
        "-".into()
    } else {
        placed.join(",")
    }
}

pub async fn run(cmd: JobCommand, settings: &Settings) -> Result<u8> {
    if let Some(api) = crate::client::admin(settings)? {
        return remote(cmd, api, settings).await;
    }
    match cmd {
        JobCommand::Submit {
            file,
            attestations,
            break_glass,
            by,
            output,
        } => {
            let manifest =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (_, job) = ringfence_bab::manifest::JobManifest::parse(&manifest)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
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
            let cp = control_plane(settings).await?;
            let record = cp.submit(&manifest, &atts, &request, &by).await?;
            print_submitted(&record, output)
        }
        JobCommand::List { output } => {
            let jobs = control_plane(settings).await?.jobs().await?;
            print_list(&jobs, output)
        }
        JobCommand::Status { job, output } => {
            let (ns, name) = split(&job)?;
            let cp = control_plane(settings).await?;
            let record = cp.job(ns, name).await?;
            let statuses = cp.task_statuses().await?;
            print_status(&record, &statuses, output)
        }
        JobCommand::Logs {
            job,
            replica,
            stderr,
        } => {
            let (ns, name) = split(&job)?;
            let record = control_plane(settings).await?.job(ns, name).await?;
            print_log(&record, replica, stderr, settings)
        }
        JobCommand::Stop { job, by } => {
            let (ns, name) = split(&job)?;
            let record = control_plane(settings)
                .await?
                .stop(ns, name, &who(by))
                .await?;
            println!("stopped {}", record.key());
            Ok(exit::SUCCESS)
        }
    }
}

fn print_submitted(record: &JobRecord, output: Output) -> Result<u8> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&record)?),
        Output::Text => {
            let word = record.state.name().to_uppercase();
            match &record.state {
                JobState::Refused(_) => println!("{word} {}", record.key()),
                _ => println!("{word} {} ({})", record.key(), record.verdict),
            }
            match &record.state {
                JobState::Placed => {
                    for t in &record.tasks {
                        println!("  {} on {}", t.id, t.machine.as_deref().unwrap_or("-"));
                    }
                }
                JobState::Pending(why) | JobState::Refused(why) => println!("  {why}"),
                JobState::Stopped => {}
            }
        }
    }
    Ok(if matches!(record.state, JobState::Refused(_)) {
        exit::FAILURE
    } else {
        exit::SUCCESS
    })
}

fn print_list(jobs: &[JobRecord], output: Output) -> Result<u8> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&jobs)?),
        Output::Text => {
            println!(
                "{:<28} {:<12} {:<9} {:<12} {:<12} PLACED ON",
                "JOB", "SERVICE", "STATE", "RING", "ADMISSION"
            );
            for j in jobs {
                println!(
                    "{:<28} {:<12} {:<9} {:<12} {:<12} {}",
                    j.key(),
                    j.service,
                    j.state.name(),
                    j.ring.to_string(),
                    j.basis(),
                    placement(j)
                );
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn print_status(
    record: &JobRecord,
    statuses: &BTreeMap<String, TaskStatus>,
    output: Output,
) -> Result<u8> {
    match output {
        Output::Json => {
            let tasks: Vec<_> = record
                .tasks
                .iter()
                .map(|t| serde_json::json!({"placement": t, "status": statuses.get(&t.id)}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"job": record, "tasks": tasks}))?
            );
        }
        Output::Text => {
            println!("job       {}", record.key());
            println!("service   {}/{}", record.namespace, record.service);
            println!("image     {}", record.image);
            println!("ring      {}", record.ring);
            println!("verdict   {}", record.verdict);
            println!("state     {}", record.state);
            for t in &record.tasks {
                let machine = t.machine.as_deref().unwrap_or("-");
                let s = statuses.get(&t.id).filter(|s| s.machine == machine);
                println!(
                    "  {:<32} {:<10} {:<10} svid={} restarts={} {}",
                    t.id,
                    machine,
                    s.map_or("assigned", |s| s.report.state.as_str()),
                    s.is_some_and(|s| s.report.svid),
                    s.map_or(0, |s| s.report.restarts),
                    s.map_or("", |s| s.report.detail.as_str())
                );
            }
        }
    }
    Ok(exit::SUCCESS)
}

/// The same commands against `ringfence server` (`--server`), as the person in the user
/// certificate.
async fn remote(
    cmd: JobCommand,
    mut api: ringfence_api::pb::admin_client::AdminClient<tonic::transport::Channel>,
    settings: &Settings,
) -> Result<u8> {
    use ringfence_api::pb;
    async fn statuses(
        api: &mut ringfence_api::pb::admin_client::AdminClient<tonic::transport::Channel>,
    ) -> Result<BTreeMap<String, TaskStatus>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            task: String,
            status: TaskStatus,
        }
        let reply = api
            .task_statuses(pb::ListRequest {})
            .await
            .map_err(|s| call_error("task statuses", s))?
            .into_inner();
        reply
            .json
            .iter()
            .map(|j| {
                let e: Entry = serde_json::from_str(j)?;
                Ok((e.task, e.status))
            })
            .collect()
    }
    async fn jobs(
        api: &mut ringfence_api::pb::admin_client::AdminClient<tonic::transport::Channel>,
    ) -> Result<Vec<JobRecord>> {
        let reply = api
            .list_jobs(pb::ListRequest {})
            .await
            .map_err(|s| call_error("list jobs", s))?
            .into_inner();
        Ok(reply
            .json
            .iter()
            .map(|j| serde_json::from_str(j))
            .collect::<Result<_, _>>()?)
    }
    // One job of the list, or not found (exit 4).
    fn find(jobs: Vec<JobRecord>, ns: &str, name: &str) -> Result<JobRecord> {
        jobs.into_iter()
            .find(|j| j.namespace == ns && j.name == name)
            .ok_or_else(|| {
                anyhow::Error::new(crate::client::ApiError {
                    what: "job".into(),
                    code: tonic::Code::NotFound,
                    message: format!("no job {ns}/{name}"),
                })
            })
    }
    match cmd {
        JobCommand::Submit {
            file,
            attestations,
            break_glass,
            by,
            output,
        } => {
            if by.is_some() {
                anyhow::bail!(
                    "--by does not apply with --server: the control plane records the person in your certificate"
                );
            }
            let manifest =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let attestations = attestations
                .iter()
                .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
                .collect::<Result<_>>()?;
            let reply = api
                .submit_job(pb::SubmitJobRequest {
                    manifest,
                    attestations,
                    break_glass: break_glass.unwrap_or_default(),
                })
                .await
                .map_err(|s| call_error("submit", s))?
                .into_inner();
            print_submitted(&serde_json::from_str(&reply.json)?, output)
        }
        JobCommand::List { output } => print_list(&jobs(&mut api).await?, output),
        JobCommand::Status { job, output } => {
            let (ns, name) = split(&job)?;
            let record = find(jobs(&mut api).await?, ns, name)?;
            let statuses = statuses(&mut api).await?;
            print_status(&record, &statuses, output)
        }
        JobCommand::Logs {
            job,
            replica,
            stderr,
        } => {
            let (ns, name) = split(&job)?;
            let record = find(jobs(&mut api).await?, ns, name)?;
            print_log(&record, replica, stderr, settings)
        }
        JobCommand::Stop { job, by } => {
            if by.is_some() {
                anyhow::bail!(
                    "--by does not apply with --server: the control plane records the person in your certificate"
                );
            }
            let (ns, name) = split(&job)?;
            api.stop_job(pb::JobRef {
                namespace: ns.into(),
                name: name.into(),
            })
            .await
            .map_err(|s| call_error("stop", s))?;
            println!("stopped {job}");
            Ok(exit::SUCCESS)
        }
    }
}

/// A task's captured output, read from the agents on this host.
fn print_log(record: &JobRecord, replica: u32, stderr: bool, settings: &Settings) -> Result<u8> {
    let job = record.key();
    let Some(task) = record.tasks.get(replica as usize) else {
        anyhow::bail!("{job} has no replica {replica}");
    };
    let Some(machine) = &task.machine else {
        anyhow::bail!("{} is not placed", task.id);
    };
    let file = crate::up_cmd::agents_root(&settings.data_dir)
        .join(machine)
        .join("tasks")
        .join(&task.id)
        .join(if stderr { "stderr.log" } else { "stdout.log" });
    let text = std::fs::read(&file).with_context(|| {
        format!(
            "no log at {} (logs are read from agents on this host)",
            file.display()
        )
    })?;
    use std::io::Write as _;
    std::io::stdout().write_all(&text)?;
    Ok(exit::SUCCESS)
}
