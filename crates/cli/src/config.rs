//! Settings: defaults, then the TOML config file, then environment variables and flags
//! (clap merges those two), the later winning.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ringfence_store::StoreUrl;
use serde::Deserialize;

use crate::{GlobalArgs, LogFormat};

/// The default data directory, relative to where `ringfence` runs.
pub const DEFAULT_DATA_DIR: &str = ".ringfence";

/// The configuration file's shape. Unknown keys are refused, so a typo is an error rather
/// than a silently ignored security setting.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    log_format: Option<LogFormat>,
    notify: Option<ringfence_bab::NotifyConfig>,
    server: Option<String>,
    credentials: Option<PathBuf>,
}

/// Effective settings for this run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Local state directory.
    pub data_dir: PathBuf,
    /// Where durable state lives.
    pub store: StoreUrl,
    /// Log format.
    pub log_format: LogFormat,
    /// Notification sinks (`[notify]`).
    pub notify: ringfence_bab::NotifyConfig,
    /// A control plane to talk to over the network (`host:port`), instead of the Store.
    pub server: Option<std::net::SocketAddr>,
    /// The user certificate for it (default: `<data-dir>/admin`, the bootstrap admin).
    pub credentials: Option<PathBuf>,
}

impl Settings {
    /// Merges defaults, the config file and the command line.
    pub fn load(args: &GlobalArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => read_config(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store_raw = args
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| "redb".to_owned());
        let store = StoreUrl::parse(&store_raw).context("invalid --store")?;
        let log_format = args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text);
        let server = match args.server.clone().or(file.server) {
            None => None,
            Some(s) => Some(
                s.parse::<std::net::SocketAddr>()
                    .with_context(|| format!("invalid --server {s:?}: expected host-ip:port"))?,
            ),
        };
        Ok(Self {
            data_dir,
            store,
            log_format,
            notify: file.notify.unwrap_or_default(),
            server,
            credentials: args.credentials.clone().or(file.credentials),
        })
    }
}

impl Settings {
    /// The notification settings, with files standing in for sinks that are not configured
    /// (`<data-dir>/notifications/<name>.jsonl`), so a break-glass is never left unreported.
    pub fn notify_config(&self) -> ringfence_bab::NotifyConfig {
        let mut n = self.notify.clone();
        if n.fallback_dir.is_none() {
            n.fallback_dir = Some(self.data_dir.join("notifications"));
        }
        if !n.sinks.contains_key(&n.security) {
            let path = self
                .data_dir
                .join("notifications")
                .join(format!("{}.jsonl", n.security));
            n.sinks
                .insert(n.security.clone(), ringfence_bab::SinkConfig::File { path });
        }
        n
    }
}

fn read_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = toml::from_str::<FileConfig>("data_dir = \"/x\"\nstor = \"redb\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `stor`"), "{err}");
    }

    #[test]
    fn config_values_parse() {
        let c: FileConfig =
            toml::from_str("store = \"etcd://h:1\"\nlog_format = \"json\"\n").unwrap();
        assert_eq!(c.store.as_deref(), Some("etcd://h:1"));
        assert_eq!(c.log_format, Some(LogFormat::Json));
    }
}
