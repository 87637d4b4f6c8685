//! `ringfence agent`: one machine's node agent against `ringfence server`. It joins once with
//! a one-time join token (the machine SVID is then kept in `<root>/machine` and renewed at
//! half-life), registers, and runs its assigned tasks in the sandbox until SIGINT or SIGTERM,
//! which stop every task. Without host attestation the control plane places only development
//! work on it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ringfence_agent::node::{AgentConfig, ControlPlaneApi};
use ringfence_agent::remote::{Remote, RemoteConfig};
use ringfence_agent::{Backoff, RunnerConfig};
use ringfence_controlplane::Registration;
use ringfence_core::{Clock, SystemClock, TrustDomain};
use ringfence_sched::Resources;

use crate::exit;

/// `ringfence agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This machine's id (a DNS label)
    #[arg(long)]
    machine: String,
    /// A one-time join token (`ringfence machine token <machine>`); needed until the agent
    /// holds a machine SVID
    #[arg(
        long,
        env = "RINGFENCE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    join_token: Option<String>,
    /// The control plane's trust bundle (PEM), to check it before joining
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Trust domain
    #[arg(long, default_value = "ringfence.local", value_name = "NAME")]
    trust_domain: String,
    /// Where tasks, images, sockets and the machine SVID live [default:
    /// /var/lib/ringfence/agent/<machine>]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The address this machine's tasks are reachable at
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    address: IpAddr,
    /// CPU offered, millicores
    #[arg(long, default_value_t = 2000)]
    cpu_milli: u64,
    /// Memory offered, MiB
    #[arg(long, default_value_t = 2048)]
    memory_mib: u64,
    /// First host uid for tasks (each task gets its own)
    #[arg(long, default_value_t = 2_300_000)]
    uid_base: u32,
    /// How many host uids tasks may use
    #[arg(long, default_value_t = 1024)]
    uid_count: u32,
    /// Syscall profile for every task
    #[arg(long, default_value = "default", value_parser = ["default", "strict"])]
    profile: String,
    /// How often it reads its assignments and reports
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll: Duration,
}

pub async fn run(args: AgentArgs, settings: &crate::config::Settings) -> Result<u8> {
    let server: SocketAddr = settings
        .server
        .context("the agent needs its control plane: --server ADDR (or RINGFENCE_SERVER)")?;
    if !ringfence_sandbox::run::is_root() {
        anyhow::bail!(
            "the agent needs root: every task runs in the sandbox under a uid of its own"
        );
    }
    let stop_rx = crate::stop_on_signals()?;
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/ringfence/agent").join(&args.machine));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut stopped = stop_rx.clone();
    let connect = Remote::connect(
        RemoteConfig {
            server,
            trust_domain: TrustDomain::parse(&args.trust_domain)?,
            machine: args.machine.clone(),
            state_dir: root.join("machine"),
            bundle: args.bundle.clone(),
            join_token: args.join_token.clone(),
            spool: root.join("audit-spool.redb"),
        },
        Arc::clone(&clock),
    );
    let (remote, renewer) = tokio::select! {
        r = connect => r.map_err(anyhow::Error::msg)?,
        _ = stopped.wait_for(|s| *s) => return Ok(exit::SUCCESS),
    };
    println!(
        "ringfence agent: {} holds spiffe://{}/machine/{}; control plane {}",
        args.machine, args.trust_domain, args.machine, server
    );
    let exe = std::env::current_exe().context("cannot find the ringfence binary")?;
    let cfg = AgentConfig {
        registration: Registration {
            machine: args.machine.clone(),
            capacity: Resources {
                cpu_milli: args.cpu_milli,
                memory_mib: args.memory_mib,
            },
            address: args.address.to_string(),
        },
        runner: RunnerConfig {
            root: root.join("run"),
            init_program: crate::up_cmd::sandbox_init(&exe),
            uid_base: args.uid_base,
            uid_count: args.uid_count,
            backoff: Backoff::default(),
            log_max_bytes: 1 << 20,
        },
        poll: args.poll,
        profile: args.profile,
    };
    let api: Arc<dyn ControlPlaneApi> = Arc::new(remote);
    // Registration is retried while the control plane is unreachable.
    let r = ringfence_agent::node::run(api, cfg, clock, stop_rx).await;
    renewer.abort();
    r.map_err(anyhow::Error::msg)?;
    println!("ringfence agent: stopped every task");
    Ok(exit::SUCCESS)
}
