//! `ringfence-bench`: benchmarks that run side by side with their reference in one run and
//! report ratios, so a figure never stands alone.
//!
//! `cargo run --release -p ringfence-bench -- store` prints a table and, last, one JSON line.

mod admission;
mod audit;
mod identity;
mod lifecycle;
mod mesh;
mod sandbox;
mod stats;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Ringfence benchmarks.
#[derive(Debug, Parser)]
#[command(name = "ringfence-bench", version)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Durable commits/s and latency of the Store: redb and etcd backends side by side, with
    /// the raw etcd put rate measured by the same harness
    Store {
        /// Seconds each scenario runs
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Directory on the disk to measure (its fsync is what is measured; avoid tmpfs)
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Durable appends/s into the audit log, time to checkpoint, proof generation and
    /// verification at full size, with the raw Store put rate in the same run
    Audit {
        /// Entries to append
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Directory on the disk to measure (avoid tmpfs)
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Binary Authorization verdicts/s and p99 for a policy requiring 3 attestations with 2
    /// signatures each (one core), continuous verification of many running jobs, and the
    /// P-256 verify ceiling in the same run
    Admission {
        /// Seconds the verdict loop (and the ceiling) run
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Running jobs re-verified
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// The attestors' key type
        #[arg(long, value_enum, default_value = "p256")]
        key_type: admission::KeyType,
    },
    /// The runtime sandbox beside native execution, bubblewrap and crun on one rootfs:
    /// start-to-exit of /bin/true, a filtered syscall, a syscall-heavy loop, a compute loop
    /// (root; build `ringfence` first: cargo build --release -p ringfence-cli)
    Sandbox {
        /// Starts of /bin/true per runner
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// Submit-to-running latency of jobs on four local agents (admission, placement, the
    /// sandbox, the task's SVID), one at a time and all at once, and control-plane calls/s
    /// (root; build `ringfence` first: cargo build --release -p ringfence-cli)
    Lifecycle {
        /// Jobs per scenario
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// How often agents look at their assignments
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        poll: Duration,
        /// Directory on the disk to measure (the Store lives here)
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The mesh proxy pair beside an nginx pair doing the same mTLS, and a direct call, with
    /// one nginx backend: latency at 1,000 requests/s with 1 KB bodies, proxies' CPU and RSS,
    /// most requests/s and requests per proxy core (needs nginx and wrk; build `ringfence`
    /// first: cargo build --release -p ringfence-cli)
    Mesh {
        /// Seconds of the fixed-rate phase
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// X.509-SVIDs issued per second end to end (CSR checks + signing + audit append), a
    /// burst re-issue, and the P-256 sign/verify ceiling in the same run
    Identity {
        /// CSRs per run (the burst re-issues all of them)
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Directory on the disk to measure (the audit log's store lives here)
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Bench::Sandbox { runs } = cli.bench {
        // No async runtime: a sandbox dies with the thread that started it.
        return sandbox::run(runs);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.bench {
        Bench::Store { seconds, dir } => {
            runtime.block_on(store::run(Duration::from_secs_f64(seconds), &dir))
        }
        Bench::Audit { entries, dir } => runtime.block_on(audit::run(entries, &dir)),
        Bench::Identity { count, dir } => runtime.block_on(identity::run(count, &dir)),
        Bench::Admission {
            seconds,
            jobs,
            key_type,
        } => admission::run(seconds, jobs, key_type),
        Bench::Sandbox { runs } => sandbox::run(runs),
        Bench::Mesh { seconds } => runtime.block_on(mesh::run(seconds)),
        Bench::Lifecycle { jobs, poll, dir } => runtime.block_on(lifecycle::run(jobs, poll, &dir)),
    }
}
