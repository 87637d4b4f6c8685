//! The sandbox suites' workload: one static C program (`crates/test-util/progs/probe.c`), one
//! attempt per subcommand, built with gcc by the tests and the benchmark alike. It lives inside
//! this crate: cargo records a file outside the package by its absolute path, so a target
//! directory shared between clones could miss a change to it.

use std::path::Path;
use std::process::Command;

/// The probe's source.
pub const SOURCE: &str = include_str!("../progs/probe.c");

/// Builds the probe, statically linked, at `out`.
pub fn build(out: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("probe.c");
    std::fs::write(&src, SOURCE)?;
    let result = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .map_err(|e| anyhow::anyhow!("gcc (scripts/install-deps.sh installs it): {e}"))?;
    anyhow::ensure!(
        result.status.success(),
        "building the probe failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    Ok(())
}

/// Processes whose command line contains `marker`, as `pid: command line`.
pub fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    cmd.contains(marker)
                        .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
                })
                .collect()
        })
        .unwrap_or_default()
}
