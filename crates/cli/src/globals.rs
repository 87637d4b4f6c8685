//! The options every subcommand understands, shared by the full binary and the small front
//! (`front.rs`), so that both parse `ringfence sandbox ...` the same way.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Options every subcommand understands.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Configuration file (TOML). Flags and environment variables override it.
    #[arg(long, global = true, env = "RINGFENCE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for local state (the embedded store lives here) [default: ./.ringfence]
    #[arg(long, global = true, env = "RINGFENCE_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Where durable state lives: `redb` (embedded file in the data dir, the default),
    /// `redb:///path/file.redb`, or `etcd://host:port[,host:port...]`
    #[arg(long, global = true, env = "RINGFENCE_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,
    /// Talk to the control plane at this address (`ip:port`, `ringfence server`) instead of
    /// opening the Store (job, policy and machine commands)
    #[arg(long, global = true, env = "RINGFENCE_SERVER", value_name = "ADDR")]
    pub(crate) server: Option<String>,
    /// Your user certificate for `--server` (a directory with svid.pem, svid.key, bundle.pem)
    /// [default: <data-dir>/admin, the bootstrap admin `ringfence server` writes]
    #[arg(long, global = true, env = "RINGFENCE_CREDENTIALS", value_name = "DIR")]
    pub(crate) credentials: Option<PathBuf>,
    /// Log line format on stderr
    #[arg(long, global = true, value_enum, env = "RINGFENCE_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// More log output (-v info, -vv debug, -vvv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub(crate) verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}
