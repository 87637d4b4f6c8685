//! `ringfence audit ...`: the tamper-evident audit log from the command line.
//!
//! The log's signing key lives in `<data-dir>/audit/log.key` (0600) and its public key in
//! `<data-dir>/audit/log.pub`; the key's name is the log's origin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use ringfence_audit::note::{Signer, TYPE_COSIGNATURE, TYPE_ED25519, Verifier};
use ringfence_audit::proof::{ProofDoc, to_hex};
use ringfence_audit::rfc9162::hex;
use ringfence_audit::{AuditLog, Decision, Event, LogOptions, LogReader, Witness, verify_log};
use ringfence_core::{Clock, SpiffeId, SystemClock};
use ringfence_store::{Prefix, Store, open_store};
use serde_json::json;

use crate::config::Settings;
use crate::exit;

const PREFIX: &str = "/audit";
const DEFAULT_ORIGIN: &str = "ringfence.local/audit";

/// Subcommands of `ringfence audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Create the log's signing key in <data-dir>/audit (once)
    Init {
        /// The log's origin: a unique name, such as example.com/ringfence/audit
        #[arg(long, default_value = DEFAULT_ORIGIN)]
        origin: String,
    },
    /// Append one event (for scripts and tests; components append through the API)
    Append(AppendArgs),
    /// Print the newest entries; with -f, keep printing new ones
    Tail {
        /// How many of the newest entries
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Follow: print new entries as they are appended
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the entries that match every given filter
    Query(QueryArgs),
    /// Sign and store a checkpoint of the current log, and print it
    Checkpoint,
    /// Recompute the whole tree from storage and check it against every signed checkpoint
    Verify {
        /// The log's public key file [default: <data-dir>/audit/log.pub]
        #[arg(long)]
        vkey: Option<PathBuf>,
        /// A signed checkpoint obtained elsewhere (from a witness, say) that the log must match
        #[arg(long)]
        trusted_checkpoint: Option<PathBuf>,
    },
    /// Print a proof as JSON
    #[command(subcommand)]
    Prove(ProveCommand),
    /// Verify a proof JSON offline with signed checkpoints and the log's public key
    CheckProof {
        /// The proof JSON (from `audit prove`)
        #[arg(long)]
        proof: PathBuf,
        /// The signed checkpoint of the proof's tree (for consistency: the newer one)
        #[arg(long)]
        checkpoint: PathBuf,
        /// For a consistency proof: the signed checkpoint of the older tree
        #[arg(long)]
        old_checkpoint: Option<PathBuf>,
        /// The log's public key file [default: <data-dir>/audit/log.pub]
        #[arg(long)]
        vkey: Option<PathBuf>,
        /// For an inclusion proof: the entry's bytes, to recompute its leaf hash
        #[arg(long)]
        entry: Option<PathBuf>,
    },
    /// Run a witness: check a checkpoint against the last one accepted, and countersign it
    #[command(subcommand)]
    Witness(WitnessCommand),
}

/// `audit append`.
#[derive(Debug, Args)]
pub struct AppendArgs {
    /// What was done, e.g. identity.issue
    #[arg(long)]
    action: String,
    /// What it was done to
    #[arg(long)]
    target: String,
    /// Who did it (a SPIFFE ID)
    #[arg(long, default_value = "spiffe://ringfence.local/ringfence/cli")]
    actor: String,
    /// allow, deny, would_deny, break_glass, error or info
    #[arg(long, default_value = "info")]
    decision: String,
    /// Why
    #[arg(long, default_value = "")]
    reason: String,
    /// Extra details, key=value (repeatable)
    #[arg(long = "detail", value_name = "KEY=VALUE")]
    details: Vec<String>,
}

/// `audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Only this actor (exact SPIFFE ID)
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (exact)
    #[arg(long)]
    action: Option<String>,
    /// Only this target (exact)
    #[arg(long)]
    target: Option<String>,
    /// Only this decision
    #[arg(long)]
    decision: Option<String>,
    /// Only at or after this time (RFC 3339, e.g. 2026-11-24T10:00:00Z)
    #[arg(long)]
    since: Option<String>,
    /// Only before this time (RFC 3339)
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// `audit prove`.
#[derive(Debug, Subcommand)]
pub enum ProveCommand {
    /// Entry INDEX is in the tree of SIZE entries
    Inclusion {
        /// The entry
        #[arg(long)]
        index: u64,
        /// The tree size [default: the latest checkpoint's]
        #[arg(long)]
        size: Option<u64>,
    },
    /// The tree of TO entries extends the tree of FROM entries
    Consistency {
        /// The older size
        #[arg(long)]
        from: u64,
        /// The newer size [default: the latest checkpoint's]
        #[arg(long)]
        to: Option<u64>,
    },
}

/// `audit witness`.
#[derive(Debug, Subcommand)]
pub enum WitnessCommand {
    /// Create a witness key (cosignature/v1) and print its public key
    Keygen {
        /// The witness's name, e.g. witness.example.com
        #[arg(long)]
        name: String,
        /// Where to write the private key (created with mode 0600)
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a checkpoint and countersign it (prints the cosigned checkpoint)
    Cosign {
        /// The log's public key file
        #[arg(long)]
        log_vkey: PathBuf,
        /// The witness's private key file
        #[arg(long)]
        key: PathBuf,
        /// The witness's state file (the last checkpoint it accepted)
        #[arg(long)]
        state: PathBuf,
        /// The signed checkpoint to check [default: the log's latest, read from --store]
        #[arg(long, requires = "proof")]
        checkpoint: Option<PathBuf>,
        /// The consistency proof JSON from the remembered size [default: computed from --store]
        #[arg(long)]
        proof: Option<PathBuf>,
    },
}

/// `--output`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// A checkpoint or proof did not check out (exit code 1, with the reason).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Runs an `audit` subcommand.
pub async fn run(cmd: AuditCommand, settings: &Settings) -> Result<u8> {
    let dir = settings.data_dir.join("audit");
    match cmd {
        AuditCommand::Init { origin } => init(&dir, &origin),
        AuditCommand::Append(args) => {
            let log = open_log(settings, &dir).await?;
            let mut event = Event::new(
                SystemClock.now(),
                SpiffeId::parse(&args.actor).context("invalid --actor")?,
                args.action,
                args.target,
                args.decision.parse::<Decision>()?,
                args.reason,
            );
            for d in args.details {
                let (k, v) = d.split_once('=').context("a --detail is KEY=VALUE")?;
                event = event.with_detail(k, v);
            }
            let index = log.append(&event).await?;
            log.publish_checkpoint().await?;
            println!("{index}");
            Ok(exit::SUCCESS)
        }
        AuditCommand::Tail {
            lines,
            follow,
            output,
        } => tail(settings, lines, follow, output.output).await,
        AuditCommand::Query(q) => query(settings, &q).await,
        AuditCommand::Checkpoint => {
            let log = open_log(settings, &dir).await?;
            print!("{}", log.publish_checkpoint().await?.text);
            Ok(exit::SUCCESS)
        }
        AuditCommand::Verify {
            vkey,
            trusted_checkpoint,
        } => verify(settings, &dir, vkey, trusted_checkpoint).await,
        AuditCommand::Prove(p) => prove(settings, &dir, p).await,
        AuditCommand::CheckProof {
            proof,
            checkpoint,
            old_checkpoint,
            vkey,
            entry,
        } => {
            let vkey = read_vkey(&vkey.unwrap_or_else(|| dir.join("log.pub")))?;
            let doc = ProofDoc::parse(&read(&proof)?).map_err(|e| Refused(e.to_string()))?;
            let old = old_checkpoint.as_deref().map(read).transpose()?;
            let entry = entry.as_deref().map(read).transpose()?;
            let message = doc
                .verify(&vkey, &read(&checkpoint)?, old.as_deref(), entry.as_deref())
                .map_err(|e| Refused(e.to_string()))?;
            println!("OK: {message}");
            Ok(exit::SUCCESS)
        }
        AuditCommand::Witness(w) => witness(settings, w).await,
    }
}

fn init(dir: &Path, origin: &str) -> Result<u8> {
    let key_path = dir.join("log.key");
    if key_path.exists() {
        bail!(
            "{} already exists: this data dir has an audit log key",
            key_path.display()
        );
    }
    let signer = Signer::generate(origin, TYPE_ED25519).context("invalid --origin")?;
    write_secret(&key_path, &signer.to_key_string())?;
    std::fs::write(dir.join("log.pub"), format!("{}\n", signer.verifier()))?;
    println!("{}", signer.verifier());
    Ok(exit::SUCCESS)
}

/// Creates the audit log key in `dir` unless one exists; true when it created one.
pub(crate) fn ensure_log_key(dir: &Path) -> Result<bool> {
    if dir.join("log.key").exists() {
        return Ok(false);
    }
    let signer = Signer::generate(DEFAULT_ORIGIN, TYPE_ED25519)?;
    write_secret(&dir.join("log.key"), &signer.to_key_string())?;
    std::fs::write(dir.join("log.pub"), format!("{}\n", signer.verifier()))?;
    Ok(true)
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    crate::secrets::write_new(path, format!("{text}\n").as_bytes())
}

fn read_secret(path: &Path) -> Result<Signer> {
    let bytes = crate::secrets::read(
        path,
        "run `ringfence audit init` (or `audit witness keygen`) first",
    )?;
    Ok(Signer::parse(&String::from_utf8_lossy(&bytes))?)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_vkey(path: &Path) -> Result<Verifier> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the public key {}", path.display()))?;
    Verifier::parse(&text).with_context(|| format!("invalid public key in {}", path.display()))
}

async fn store(settings: &Settings) -> Result<Arc<dyn Store>> {
    open_store(&settings.store, &settings.data_dir)
        .await
        .context("cannot open the store")
}

pub(crate) async fn open_log(settings: &Settings, dir: &Path) -> Result<AuditLog> {
    open_log_on(store(settings).await?, dir).await
}

/// Opens the audit log on a store this process already holds.
pub(crate) async fn open_log_on(store: Arc<dyn Store>, dir: &Path) -> Result<AuditLog> {
    let signer = read_secret(&dir.join("log.key"))?;
    let options = LogOptions {
        origin: signer.name().to_owned(),
        ..LogOptions::default()
    };
    Ok(AuditLog::open(store, signer, options).await?)
}

async fn verify(
    settings: &Settings,
    dir: &Path,
    vkey: Option<PathBuf>,
    trusted: Option<PathBuf>,
) -> Result<u8> {
    let vkey = read_vkey(&vkey.unwrap_or_else(|| dir.join("log.pub")))?;
    let trusted = trusted.as_deref().map(read).transpose()?;
    let store = store(settings).await?;
    let started = Instant::now();
    let mut last = Instant::now();
    let result = verify_log(
        &store,
        PREFIX,
        &vkey,
        vkey.name(),
        trusted.as_deref(),
        |done, total| {
            if last.elapsed() >= Duration::from_secs(1) || done == total {
                eprintln!(
                    "verified {done} of {total} entries ({:.0}%)",
                    100.0 * done as f64 / total.max(1) as f64
                );
                last = Instant::now();
            }
        },
    )
    .await;
    match result {
        Ok(report) => {
            println!(
                "OK: {} entries, root {}, consistent with {} signed checkpoint(s) ({:.1} s)",
                report.size,
                hex(&report.root),
                report.checkpoints,
                started.elapsed().as_secs_f64()
            );
            Ok(exit::SUCCESS)
        }
        Err(e) => Err(Refused(format!("audit log verification FAILED: {e}")).into()),
    }
}

async fn latest_size(reader: &LogReader, vkey: &Verifier) -> Result<u64> {
    let Some(cp) = reader.latest_checkpoint().await? else {
        bail!("the log has no checkpoint yet: run `ringfence audit checkpoint`");
    };
    let (cp, _) = ringfence_audit::checkpoint::Checkpoint::open(&cp, vkey, vkey.name())
        .map_err(|e| Refused(e.to_string()))?;
    Ok(cp.size)
}

async fn prove(settings: &Settings, dir: &Path, cmd: ProveCommand) -> Result<u8> {
    let vkey = read_vkey(&dir.join("log.pub"))?;
    let reader = LogReader::open(store(settings).await?, PREFIX).await?;
    let doc = match cmd {
        ProveCommand::Inclusion { index, size } => {
            let size = match size {
                Some(s) => s,
                None => latest_size(&reader, &vkey).await?,
            };
            ProofDoc::Inclusion {
                origin: vkey.name().to_owned(),
                index,
                size,
                leaf_hash: hex(&reader.leaf_hash(index).await?),
                proof: to_hex(&reader.inclusion_proof(index, size).await?),
                root: hex(&reader.root_at(size).await?),
            }
        }
        ProveCommand::Consistency { from, to } => {
            let to = match to {
                Some(s) => s,
                None => latest_size(&reader, &vkey).await?,
            };
            ProofDoc::Consistency {
                origin: vkey.name().to_owned(),
                from,
                to,
                proof: to_hex(&reader.consistency_proof(from, to).await?),
                from_root: hex(&reader.root_at(from).await?),
                to_root: hex(&reader.root_at(to).await?),
            }
        }
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(exit::SUCCESS)
}

async fn witness(settings: &Settings, cmd: WitnessCommand) -> Result<u8> {
    match cmd {
        WitnessCommand::Keygen { name, out } => {
            let signer = Signer::generate(&name, TYPE_COSIGNATURE)?;
            write_secret(&out, &signer.to_key_string())?;
            println!("{}", signer.verifier());
            Ok(exit::SUCCESS)
        }
        WitnessCommand::Cosign {
            log_vkey,
            key,
            state,
            checkpoint,
            proof,
        } => {
            let vkey = read_vkey(&log_vkey)?;
            let witness = Witness::new(vkey.clone(), vkey.name(), read_secret(&key)?, &state);
            let (signed, hashes) = match (checkpoint, proof) {
                (Some(cp), Some(proof)) => {
                    let doc =
                        ProofDoc::parse(&read(&proof)?).map_err(|e| Refused(e.to_string()))?;
                    let ProofDoc::Consistency { proof, .. } = doc else {
                        bail!(
                            "--proof must be a consistency proof (`ringfence audit prove consistency`)"
                        );
                    };
                    let hashes = proof
                        .iter()
                        .map(|h| ringfence_audit::witness::parse_root(h).context("bad proof hash"))
                        .collect::<Result<Vec<_>>>()?;
                    (read(&cp)?, hashes)
                }
                _ => {
                    let reader = LogReader::open(store(settings).await?, PREFIX).await?;
                    let signed = reader
                        .latest_checkpoint()
                        .await?
                        .context("the log has no checkpoint yet")?;
                    let (cp, _) =
                        ringfence_audit::checkpoint::Checkpoint::open(&signed, &vkey, vkey.name())
                            .map_err(|e| Refused(e.to_string()))?;
                    let from = witness.state()?.map_or(0, |s| s.size).min(cp.size);
                    (signed, reader.consistency_proof(from, cp.size).await?)
                }
            };
            let now = SystemClock.now().as_secs();
            let cosigned = witness
                .witness(&signed, &hashes, now)
                .map_err(|e| Refused(e.to_string()))?;
            print!("{cosigned}");
            Ok(exit::SUCCESS)
        }
    }
}

fn parse_time(s: &str) -> Result<u64> {
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time"))?;
    Ok(u64::try_from(
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX))
}

async fn tail(settings: &Settings, lines: u64, follow: bool, output: Output) -> Result<u8> {
    let store = store(settings).await?;
    let mut reader = LogReader::open(Arc::clone(&store), PREFIX).await?;
    let mut next = reader.size().saturating_sub(lines);
    let mut out = std::io::stdout().lock();
    let mut watch = if follow {
        Some(
            store
                .watch(&Prefix::new(format!("{PREFIX}/head"))?, 0)
                .await?,
        )
    } else {
        None
    };
    loop {
        while next < reader.size() {
            for (index, bytes) in reader.entries(next, 1000).await? {
                print_entry(&mut out, index, &bytes, output)?;
                next = index + 1;
            }
        }
        out.flush()?;
        let Some(w) = watch.as_mut() else {
            return Ok(exit::SUCCESS);
        };
        match w.next().await {
            Some(Ok(_)) => reader = LogReader::open(Arc::clone(&store), PREFIX).await?,
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(exit::SUCCESS),
        }
    }
}

async fn query(settings: &Settings, q: &QueryArgs) -> Result<u8> {
    let since = q.since.as_deref().map(parse_time).transpose()?;
    let until = q.until.as_deref().map(parse_time).transpose()?;
    let decision = q
        .decision
        .as_deref()
        .map(str::parse::<Decision>)
        .transpose()?;
    let reader = LogReader::open(store(settings).await?, PREFIX).await?;
    let mut out = std::io::stdout().lock();
    let mut next = 0;
    while next < reader.size() {
        for (index, bytes) in reader.entries(next, 1000).await? {
            next = index + 1;
            let e = Event::decode(&bytes)?;
            let keep = q.actor.as_deref().is_none_or(|a| e.actor.as_str() == a)
                && q.action.as_deref().is_none_or(|a| e.action == a)
                && q.target.as_deref().is_none_or(|t| e.target == t)
                && decision.is_none_or(|d| e.decision == d)
                && since.is_none_or(|s| e.time_ms >= s)
                && until.is_none_or(|u| e.time_ms < u);
            if keep {
                print_entry(&mut out, index, &bytes, q.output.output)?;
            }
        }
    }
    Ok(exit::SUCCESS)
}

fn print_entry(out: &mut impl Write, index: u64, bytes: &[u8], output: Output) -> Result<()> {
    let e = Event::decode(bytes)?;
    match output {
        Output::Json => {
            let event: serde_json::Value = serde_json::from_slice(bytes)?;
            writeln!(out, "{}", json!({ "index": index, "event": event }))?;
        }
        Output::Text => {
            let when = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms),
            );
            writeln!(
                out,
                "{index:>8} {when} {} {} {} {} {}",
                e.decision, e.actor, e.action, e.target, e.reason
            )?;
        }
    }
    Ok(())
}
