//! `ringfence sandbox`: run a command in the runtime sandbox, show the syscall profiles.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use ringfence_sandbox::cgroup::{Limits, parse_cpu, parse_memory};
use ringfence_sandbox::run::{default_cgroup_root, default_work_dir};
use ringfence_sandbox::seccomp::Profile;
use ringfence_sandbox::supervisor::Event;
use ringfence_sandbox::{Config, SandboxError, Source};

/// Exit code when the sandbox itself could not start (the task never ran).
pub const SANDBOX_FAILED: u8 = 125;
/// Exit code when the command was found but refused or could not be executed.
pub const EXEC_REFUSED: u8 = 126;
/// Exit code when the command was not found in the image.
pub const NOT_FOUND: u8 = 127;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run a command in a sandbox: new namespaces, read-only image root, landlock, no
    /// capabilities, a seccomp allow-list, drift prevention, cgroup limits. Exits with the
    /// command's code (128+N if killed by signal N; 125 if the sandbox could not start; 126
    /// if the exec was refused; 127 if the command is not in the image). Needs root.
    Run(Box<RunArgs>),
    /// Syscall profiles
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Print a profile's rules: every allowed syscall, what is supervised, what is refused
    Show {
        /// Which profile
        #[arg(long, default_value = "default", value_parser = clap::builder::PossibleValuesParser::new(["default", "strict"]))]
        profile: String,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("root").required(true).args(["rootfs", "image"])))]
pub struct RunArgs {
    /// A directory to use as the root filesystem (mounted read-only; its executables are
    /// hashed at start and are the only ones that may run)
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// An OCI image layout: verified blob by blob, unpacked, and run
    #[arg(long, value_name = "OCI-LAYOUT")]
    image: Option<PathBuf>,
    /// Syscall profile
    #[arg(long, default_value = "default", value_parser = clap::builder::PossibleValuesParser::new(["default", "strict"]))]
    profile: String,
    /// Memory limit (bytes, or with K, M, G)
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Most processes and threads
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU limit in cores (0.5 = half a core)
    #[arg(long, value_name = "CORES")]
    cpu: Option<String>,
    /// Environment variable for the command (repeatable); the host's environment is not passed
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox
    #[arg(long, default_value = "/")]
    cwd: String,
    /// Network: `none` (loopback only) or `veth:ADDRESS/PREFIX` (a veth pair to the host; the
    /// task's eth0 gets ADDRESS and a default route to the host end, which takes the subnet's
    /// first other address)
    #[arg(long, default_value = "none", value_name = "none|veth:ADDR/PREFIX")]
    net: String,
    /// Allow TCP connections to `ADDR[/PREFIX]:PORT` only (repeatable; `*` for any port,
    /// IPv6 in brackets, `none` for no egress at all). With any, every connect is checked by
    /// the supervisor, which makes the connection itself; IP sockets are TCP only; loopback
    /// is always allowed; a refusal fails with EACCES and is reported
    #[arg(long = "allow-connect", value_name = "ADDR[/PREFIX]:PORT")]
    allow_connect: Vec<String>,
    /// A host directory bound inside, `HOST:INSIDE[:ro]` (repeatable); never executable,
    /// setuid or device-bearing inside
    #[arg(long = "volume", value_name = "HOST:INSIDE[:ro]")]
    volumes: Vec<String>,
    /// Host name inside the sandbox
    #[arg(long, default_value = "sandbox")]
    hostname: String,
    /// The unprivileged host uid (and gid) the task's root maps to
    #[arg(long, default_value_t = 100_000, value_name = "UID")]
    host_uid: u32,
    /// Write a JSON report (exit, OOM, exec decisions) to this file
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Where images are unpacked and executable digests cached; must be root's and writable by
    /// no one else [default: /run/ringfence/sandbox]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs synchronously on the calling thread, without an async runtime: the sandbox's init
/// dies with the thread that started it (`PR_SET_PDEATHSIG`), so that thread must be the one
/// that lives as long as the sandbox — and Ctrl-C, which ends this process, ends the sandbox.
pub fn run(cmd: SandboxCommand, verbose: bool) -> anyhow::Result<u8> {
    match cmd {
        SandboxCommand::Profile(ProfileCommand::Show { profile, json }) => {
            let p = Profile::named(&profile)?;
            if json {
                let rules: Vec<_> = p
                    .rules()
                    .map(|(nr, name, action)| {
                        serde_json::json!({"nr": nr, "name": name, "action": format!("{action:?}")})
                    })
                    .collect();
                let v = serde_json::json!({
                    "profile": p.name,
                    "summary": p.summary,
                    "architecture": "x86_64",
                    "default": "EPERM",
                    "rules": rules,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", p.render());
            }
            Ok(0)
        }
        SandboxCommand::Run(args) => run_sandbox(*args, verbose),
    }
}

fn run_sandbox(args: RunArgs, verbose: bool) -> anyhow::Result<u8> {
    let limits = Limits {
        memory: args.memory.as_deref().map(parse_memory).transpose()?,
        pids: args.pids,
        cpu: args.cpu.as_deref().map(parse_cpu).transpose()?,
    };
    for e in &args.env {
        if !e.contains('=') || e.starts_with('=') {
            anyhow::bail!("--env {e:?}: expected NAME=VALUE");
        }
    }
    let network = ringfence_sandbox::net::parse(&args.net)?;
    let egress = if args.allow_connect.is_empty() {
        None
    } else {
        Some(ringfence_sandbox::egress::Egress::parse(
            &args.allow_connect,
        )?)
    };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    for why in ringfence_sandbox::run::uid_conflicts(
        args.host_uid,
        &read("/etc/passwd"),
        &read("/etc/subuid"),
    ) {
        eprintln!(
            "warning: {why}: processes running as it could reach this sandbox; choose a \
             --host-uid no one else uses"
        );
    }
    let source = match (args.rootfs, args.image) {
        (Some(r), _) => Source::Rootfs(r),
        (None, Some(i)) => Source::Image(i),
        (None, None) => anyhow::bail!("give --rootfs DIR or --image OCI-LAYOUT"),
    };
    let cfg = Config {
        source,
        argv: args.command,
        env: args.env,
        cwd: args.cwd,
        profile: Profile::named(&args.profile)?,
        limits,
        host_uid: args.host_uid,
        host_gid: args.host_uid,
        hostname: args.hostname,
        init_program: init_program()?,
        // This command runs on one thread: the init is forked, not started (see Config).
        fork_init: true,
        work_dir: args.work_dir.unwrap_or_else(default_work_dir),
        cgroup_root: default_cgroup_root().to_owned(),
        network,
        egress,
        volumes: args
            .volumes
            .iter()
            .map(|v| ringfence_sandbox::setup::Volume::parse(v))
            .collect::<Result<_, _>>()?,
        expect_digest: None,
        stdout: None,
        stderr: None,
    };
    let report: Arc<dyn Fn(&Event) + Send + Sync> = Arc::new(move |e: &Event| match e {
        e if e.is_refusal() => eprintln!("ringfence sandbox: {e}"),
        _ if verbose => eprintln!("ringfence sandbox: {e}"),
        _ => {}
    });
    let outcome = ringfence_sandbox::run(&cfg, report);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Ok(start_failure(&e)),
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome)?)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    if let Some(why) = outcome.explanation() {
        eprintln!("ringfence sandbox: {why}");
    }
    Ok(outcome.code())
}

/// The small init program beside this binary, or this binary itself.
fn init_program() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the ringfence binary")?;
    let small = me.with_file_name("ringfence-sandbox-init");
    Ok(if small.is_file() { small } else { me })
}

fn start_failure(e: &SandboxError) -> u8 {
    let msg = e.to_string();
    eprintln!("error: {msg}");
    match e {
        SandboxError::Setup(m) if m.starts_with("exec") => {
            if m.contains("not found") {
                NOT_FOUND
            } else {
                EXEC_REFUSED
            }
        }
        _ => SANDBOX_FAILED,
    }
}
