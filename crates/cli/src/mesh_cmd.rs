//! `ringfence mesh`: the sidecar proxy (see docs/mesh.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ringfence_mesh::config::MeshConfig;

use crate::config::Settings;
use crate::exit;

#[derive(Debug, Args)]
pub struct MeshArgs {
    /// The proxy's configuration (TOML; docs/mesh.md)
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Check the configuration and the policy, then exit
    #[arg(long)]
    check: bool,
}

pub async fn run(args: MeshArgs, _settings: &Settings) -> Result<u8> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let base = args
        .file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let cfg = MeshConfig::parse(&text, &base)?;
    if args.check {
        cfg.check()?;
        println!("{}: ok", args.file.display());
        return Ok(exit::SUCCESS);
    }
    let mut stop = crate::stop_on_signals()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let proxy = tokio::spawn(ringfence_mesh::config::run(cfg, Some(tx)));
    if let Ok(b) = rx.await {
        if let Some(a) = b.inbound {
            println!("ringfence mesh: inbound mTLS on {a}");
        }
        if let Some(a) = b.outbound {
            println!("ringfence mesh: outbound on {a}");
        }
        if let Some(a) = b.metrics {
            println!("ringfence mesh: metrics on http://{a}/metrics");
        }
    }
    tokio::select! {
        r = proxy => {
            r.context("the proxy task failed")??;
            Ok(exit::SUCCESS)
        }
        _ = stop.wait_for(|s| *s) => Ok(exit::SUCCESS),
    }
}
