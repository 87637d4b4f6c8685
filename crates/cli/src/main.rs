//! `ringfence-full`: every command of `ringfence` (the small front in `front.rs` runs the
//! sandbox commands itself and execs this binary for the rest). It parses arguments, loads
//! configuration, sets up logging and the runtime, runs a subcommand, and maps failures to the
//! documented exit codes. The work itself lives in the library crates.

mod agent_cmd;
mod artifact_cmd;
mod attest_cmd;
mod audit_cmd;
mod bab_cmd;
mod client;
mod config;
mod euc_cmd;
mod exit;
mod globals;
mod identity_cmd;
mod job_cmd;
mod login_cmd;
mod machine_cmd;
mod mesh_cmd;
mod sandbox_cmd;
mod secrets;
mod server_cmd;
mod store_cmd;
mod up_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
pub(crate) use crate::globals::{GlobalArgs, LogFormat};

/// Ringfence: a zero-trust production platform. Workloads are trusted for what code they run
/// and who they are, never for where they sit on the network.
#[derive(Debug, Parser)]
#[command(
    name = "ringfence",
    version,
    propagate_version = true,
    after_help = exit::EXIT_CODES_HELP
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole chain on this machine with embedded defaults: the CA, the control plane
    /// (and its API on 127.0.0.1:7443) and four local agents; the demo jobs admitted, placed
    /// and run in the sandbox with their SVIDs; then continuous verification until Ctrl-C
    /// (again: resumes the same state; root)
    Up {
        /// Stop once every demo task runs with its SVID (or after 60 s) instead of running on
        #[arg(long)]
        once: bool,
        /// Where the control-plane API listens (mTLS), for `ringfence --server` commands and
        /// agents on other hosts
        #[arg(long, default_value = "127.0.0.1:7443", value_name = "ADDR")]
        api: std::net::SocketAddr,
        /// Where /healthz and /metrics are served
        #[arg(long, default_value = "127.0.0.1:7444", value_name = "ADDR")]
        http: std::net::SocketAddr,
    },
    /// Run the control plane as a server: the gRPC API over mTLS with its own SVID
    /// (spiffe://<td>/ringfence/controlplane), /healthz and /metrics over HTTP; writes the
    /// trust bundle for agents and a bootstrap admin certificate into the data directory
    Server(server_cmd::ServerArgs),
    /// Run a node agent for one machine against `ringfence server` (joins once with a
    /// one-time token; development pool only until host attestation lands; root)
    Agent(agent_cmd::AgentArgs),
    /// A short-lived user certificate (/user/<name>) for your enrolled key (over `--server`)
    Login(login_cmd::LoginArgs),
    /// The mesh sidecar: mTLS between services, a Cedar decision on every request,
    /// transaction tokens bound to their call chain, metrics and audited denials
    Mesh(mesh_cmd::MeshArgs),
    /// End-user context tickets (transaction tokens): mint one, print the keys
    #[command(subcommand)]
    Euc(euc_cmd::EucCommand),
    /// Machines (over `--server`): list, pools, one-time join tokens
    #[command(subcommand)]
    Machine(machine_cmd::MachineCommand),
    /// Print the version and build details
    Version {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// The tamper-evident audit log: append, read, verify, prove, witness
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Workload identity: the SPIFFE CA and the Workload API
    #[command(subcommand)]
    Identity(identity_cmd::IdentityCommand),
    /// Binary Authorization: service policies, admission, break-glass, continuous
    /// verification, the conformance report
    #[command(subcommand)]
    Bab(bab_cmd::BabCommand),
    /// Service policies (kind: ServicePolicy): apply, list, delete (the same as `bab policy`;
    /// `apply` and `list` go through `--server` when given)
    #[command(subcommand)]
    Policy(bab_cmd::PolicyCommand),
    /// Attestations: signing keys, signing statements, verifying an image against a policy
    #[command(subcommand)]
    Attest(attest_cmd::AttestCommand),
    /// Jobs: submit (admission, then placement), list, status, logs, stop
    #[command(subcommand)]
    Job(job_cmd::JobCommand),
    /// The artifact store: OCI images by digest, with their attestations
    #[command(subcommand)]
    Artifact(artifact_cmd::ArtifactCommand),
    /// The runtime sandbox: namespaces, read-only image root, seccomp, drift prevention,
    /// cgroup limits
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
    /// Inspect and edit durable state directly (for operators; bypasses every API check)
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
}

fn main() -> ExitCode {
    // The sandbox's init re-executes this binary inside fresh namespaces; it must not parse
    // arguments, read configuration or start threads first.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(ringfence_sandbox::init::INIT_ARG))
    {
        let code = ringfence_sandbox::init::main();
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(&settings, &cli.global);
    let verbose = cli.global.verbose > 0;
    // The sandbox runs without the async runtime (see sandbox_cmd::run).
    let command = match cli.command {
        Command::Sandbox(cmd) => {
            return match sandbox_cmd::run(cmd, verbose) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(exit::code_for(&e))
                }
            };
        }
        other => other,
    };
    // The mesh proxy runs on as many threads as it is told (one by default: a sidecar's
    // requests per core are best without work stealing); everything else on one per core.
    let runtime = match &command {
        Command::Mesh(args) if args.threads() == 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Mesh(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads())
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(run(command, settings));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code_for(&e))
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<u8> {
    match command {
        Command::Version { json } => {
            print_version(json)?;
            Ok(exit::SUCCESS)
        }
        Command::Up { once, api, http } => up_cmd::run(once, api, http, &settings).await,
        Command::Store(cmd) => store_cmd::run(cmd, &settings).await,
        Command::Audit(cmd) => audit_cmd::run(cmd, &settings).await,
        Command::Identity(cmd) => identity_cmd::run(cmd, &settings).await,
        Command::Bab(cmd) => bab_cmd::run(cmd, &settings).await,
        Command::Policy(cmd) => bab_cmd::run(bab_cmd::BabCommand::Policy(cmd), &settings).await,
        Command::Attest(cmd) => attest_cmd::run(cmd, &settings).await,
        Command::Artifact(cmd) => artifact_cmd::run(cmd, &settings).await,
        Command::Job(cmd) => job_cmd::run(cmd, &settings).await,
        Command::Server(args) => server_cmd::run(args, &settings).await,
        Command::Agent(args) => agent_cmd::run(args, &settings).await,
        Command::Machine(cmd) => machine_cmd::run(cmd, &settings).await,
        Command::Login(args) => login_cmd::run(args, &settings).await,
        Command::Mesh(args) => mesh_cmd::run(args, &settings).await,
        Command::Euc(cmd) => euc_cmd::run(cmd, &settings).await,
        Command::Sandbox(cmd) => sandbox_cmd::run(cmd, false),
    }
}

/// A flag that turns true on SIGINT or SIGTERM (for the long-running commands).
pub(crate) fn stop_on_signals() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    for kind in [
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::terminate(),
    ] {
        let mut sig = tokio::signal::unix::signal(kind)
            .map_err(|e| anyhow::anyhow!("cannot handle signals: {e}"))?;
        let stop = tx.clone();
        tokio::spawn(async move {
            let _ = sig.recv().await;
            let _ = stop.send(true);
        });
    }
    // The sender lives on in the signal tasks.
    Ok(rx)
}

fn print_version(json: bool) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    if json {
        let v = serde_json::json!({ "name": "ringfence", "version": version, "target": target });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("ringfence {version} ({target})");
    }
    Ok(())
}

fn init_logging(settings: &Settings, global: &GlobalArgs) {
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // clap's own checks (duplicate flags between a command and the global options, ...),
        // which otherwise only fire when that subcommand is used.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
