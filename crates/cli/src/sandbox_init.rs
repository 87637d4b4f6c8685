//! `ringfence-sandbox-init`: the sandbox's init, as a small program of its own so that starting
//! a sandbox does not load a whole `ringfence` binary a second time (it costs milliseconds).
//! The agent, which is multi-threaded and so cannot fork its init, starts it; `ringfence
//! sandbox run` forks its init instead and would start this one (or fall back to `ringfence
//! __sandbox-init`) only if it had threads. It is not meant to be run by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref()
        != Some(std::ffi::OsStr::new(ringfence_sandbox::init::INIT_ARG))
    {
        eprintln!("ringfence-sandbox-init is started by `ringfence sandbox run`, not by hand");
        return ExitCode::from(2);
    }
    ExitCode::from(u8::try_from(ringfence_sandbox::init::main()).unwrap_or(125))
}
