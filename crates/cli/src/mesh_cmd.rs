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
    /// Threads serving connections: 1 (the default) runs the proxy on one thread, the most
    /// requests per core; more spread a busy proxy over several cores
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

impl MeshArgs {
    /// Threads the runtime should have.
    pub fn threads(&self) -> usize {
        usize::from(self.threads)
    }
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
    let cfg_tcp: Vec<String> = cfg.tcp.iter().map(|t| t.service.clone()).collect();
    let cfg_egress: Vec<String> = cfg.egress.iter().map(|e| e.name.clone()).collect();
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
        for (a, t) in b.tcp.iter().zip(&cfg_tcp) {
            println!("ringfence mesh: raw TCP to {t} on {a}");
        }
        for (a, e) in b.egress.iter().zip(&cfg_egress) {
            println!("ringfence mesh: egress to {e} on {a}");
        }
        for a in &b.ingress {
            println!("ringfence mesh: plain ingress on {a}");
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
