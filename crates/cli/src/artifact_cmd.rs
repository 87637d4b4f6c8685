//! `ringfence artifact`: the content-addressed store of OCI images and their attestations
//! (`<data-dir>/artifacts`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use ringfence_bab::artifacts::ArtifactStore;
use ringfence_core::{Clock, SystemClock};
use ringfence_provenance::statement::Sha256;

use crate::attest_cmd::Output;
use crate::config::Settings;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Verify an OCI image layout blob by blob and store it, with its attestations
    Push {
        /// The OCI image layout directory (one image)
        layout: PathBuf,
        /// Attestation envelopes to keep with the image (each must name it)
        #[arg(long = "attestation", value_name = "FILE")]
        attestations: Vec<PathBuf>,
    },
    /// List stored images, newest first
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show one image: layers, sizes, attestations
    Inspect {
        /// The manifest digest (sha256:HEX)
        digest: String,
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Write a stored image out as an OCI image layout
    Export {
        /// The manifest digest (sha256:HEX)
        digest: String,
        /// The directory to write
        dir: PathBuf,
    },
}

fn digest(s: &str) -> Result<Sha256> {
    let hex = s
        .strip_prefix("sha256:")
        .with_context(|| format!("{s:?} is not a manifest digest (sha256:HEX)"))?;
    Ok(Sha256::parse(hex)?)
}

fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

pub async fn run(cmd: ArtifactCommand, settings: &Settings) -> Result<u8> {
    let store = ArtifactStore::open(&settings.data_dir.join("artifacts"))?;
    match cmd {
        ArtifactCommand::Push {
            layout,
            attestations,
        } => {
            let atts = attestations
                .iter()
                .map(|p| {
                    let bytes =
                        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                    let name = p.file_name().map_or_else(
                        || p.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    Ok((name, bytes))
                })
                .collect::<Result<Vec<_>>>()?;
            let pushed = store
                .push(&layout, &atts, SystemClock.now())
                .with_context(|| format!("push of {} refused", layout.display()))?;
            println!("{}", pushed.record.digest);
            eprintln!(
                "pushed {} ({} layer(s), {}; {} new blob(s), {} written; {} attestation(s))",
                pushed.record.digest,
                pushed.record.layers.len(),
                size(pushed.record.size),
                pushed.new_blobs,
                size(pushed.new_bytes),
                pushed.record.attestations.len()
            );
            Ok(exit::SUCCESS)
        }
        ArtifactCommand::List { output } => {
            let records = store.list()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
                Output::Text => {
                    if records.is_empty() {
                        eprintln!("no images yet: `ringfence artifact push LAYOUT-DIR`");
                    }
                    println!(
                        "{:<71}  {:<20}  {:>9}  {:<6}  PUSHED",
                        "DIGEST", "REF", "SIZE", "ATTEST"
                    );
                    for r in records {
                        println!(
                            "{:<71}  {:<20}  {:>9}  {:<6}  {}",
                            r.digest.to_string(),
                            r.ref_name.as_deref().unwrap_or("-"),
                            size(r.size),
                            r.attestations.len(),
                            ringfence_provenance::slsa::format_time(r.pushed_at)
                        );
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        ArtifactCommand::Inspect { digest: d, output } => {
            let d = digest(&d)?;
            let r = match store.get(&d) {
                Ok(r) => r,
                Err(ringfence_bab::artifacts::ArtifactError::NotFound(m)) => {
                    eprintln!(
                        "error: no image {m} in the artifact store (see `ringfence artifact list`)"
                    );
                    return Ok(exit::NOT_FOUND);
                }
                Err(e) => return Err(e.into()),
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Output::Text => {
                    println!("image     {}", r.digest);
                    println!("ref       {}", r.ref_name.as_deref().unwrap_or("-"));
                    println!(
                        "pushed    {}",
                        ringfence_provenance::slsa::format_time(r.pushed_at)
                    );
                    println!("config    {} ({})", r.config.digest, size(r.config.size));
                    for (i, l) in r.layers.iter().enumerate() {
                        println!(
                            "layer {i:<3} {} ({}, {})",
                            l.digest,
                            size(l.size),
                            l.media_type
                        );
                    }
                    for a in &r.attestations {
                        println!("attest    {} {} ({})", a.name, a.predicate_type, a.digest);
                    }
                }
            }
            Ok(exit::SUCCESS)
        }
        ArtifactCommand::Export { digest: d, dir } => {
            let d = digest(&d)?;
            store.export(&d, &dir)?;
            eprintln!("wrote {} as an OCI image layout in {}", d, dir.display());
            Ok(exit::SUCCESS)
        }
    }
}
