//! `ringfence`: the command users run. It is a small front: `ringfence sandbox ...` (and the
//! sandbox's init) run here, in a binary that links only the sandbox, and every other command
//! is handed to the full binary, `ringfence-full` beside it, by `exec` (same process, same
//! PID, same arguments and environment, `argv[0]` kept).
//!
//! Why: a process that loads the full binary spends about 3 ms in the dynamic loader before
//! `main` (tens of thousands of relocations, hundreds of page faults), which is most of what
//! starting a sandboxed `/bin/true` costs. Keeping the sandbox out of that binary makes
//! `ringfence sandbox run` start in the time `crun` does, and keeps the code that runs as
//! root while setting up the namespaces small. Long-running commands pay one extra `exec`
//! (about 1 ms) once.
//!
//! The front parses exactly what the full binary parses for `sandbox` (the same clap
//! definitions), and whenever a global option that changes settings is given (`--config`,
//! `--store`, ... or their environment variables) it hands over too, so that the result never
//! depends on which binary ran it.

mod globals;
mod sandbox_cmd;

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::globals::GlobalArgs;

/// The full binary's file name, looked for beside this one.
const FULL: &str = "ringfence-full";

/// Ringfence: a zero-trust production platform (the sandbox commands; `ringfence --help`
/// shows every command).
#[derive(Debug, Parser)]
#[command(name = "ringfence", version, propagate_version = true)]
struct Front {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: FrontCommand,
}

#[derive(Debug, Subcommand)]
enum FrontCommand {
    /// The runtime sandbox: namespaces, read-only image root, seccomp, drift prevention,
    /// cgroup limits
    #[command(subcommand)]
    Sandbox(sandbox_cmd::SandboxCommand),
}

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    // Started as the sandbox's init (when `ringfence-sandbox-init` is not installed): run it
    // before anything else, with no argument parsing and no threads.
    if first.as_deref() == Some(OsStr::new(ringfence_sandbox::init::INIT_ARG)) {
        let code = ringfence_sandbox::init::main();
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    if first.as_deref() != Some(OsStr::new("sandbox")) {
        return hand_over();
    }
    let front = Front::parse();
    let g = &front.global;
    if g.config.is_some()
        || g.data_dir.is_some()
        || g.store.is_some()
        || g.server.is_some()
        || g.credentials.is_some()
        || g.log_format.is_some()
    {
        // Settings the full binary validates (and would refuse if malformed).
        return hand_over();
    }
    let verbose = g.verbose > 0 && !g.quiet;
    let FrontCommand::Sandbox(cmd) = front.command;
    match sandbox_cmd::run(cmd, verbose) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Replaces this process with the full binary, with the same arguments.
fn hand_over() -> ExitCode {
    let full = match std::env::current_exe() {
        Ok(me) => me.with_file_name(FULL),
        Err(e) => {
            eprintln!("error: cannot locate the ringfence binary: {e}");
            return ExitCode::from(1);
        }
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "ringfence".into());
    let e = std::process::Command::new(&full)
        .arg0(arg0)
        .args(args)
        .exec();
    eprintln!(
        "error: cannot run {}: {e} (`ringfence` runs every command but `sandbox` through it; \
         install both binaries of the ringfence-cli package side by side)",
        full.display()
    );
    ExitCode::from(1)
}
